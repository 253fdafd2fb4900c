"""Churn and repurchase labels on hand-made purchases: windows, edges, population, no peeking."""

from __future__ import annotations

import pandas as pd
import pytest

from training.labels import (
    LabelInputError,
    churn_labels,
    eligible_cutoffs,
    label_frame,
    repurchase_labels,
)

CUTOFF = pd.Timestamp("2025-06-01", tz="UTC")


def purchases(*rows: tuple[str, str, bool]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "customer_id": customer,
                "occurred_at": pd.Timestamp(at),
                "is_return": is_return,
                "amount": 10.0,
            }
            for customer, at, is_return in rows
        ]
    )


def labels_by_customer(frame: pd.DataFrame, column: str) -> dict[str, int]:
    return dict(zip(frame["customer_id"], frame[column].astype(int), strict=True))


def test_churn_is_no_non_return_purchase_inside_the_window() -> None:
    history = purchases(
        ("stays", "2025-05-01", False),
        ("stays", "2025-07-15", False),
        ("lapses", "2025-05-01", False),
        ("lapses", "2025-09-15", False),  # after 90 days
        ("returns_only", "2025-05-01", False),
        ("returns_only", "2025-06-20", True),
    )
    labels = churn_labels(history, [CUTOFF], window_days=90)
    assert labels_by_customer(labels, "churned") == {"stays": 0, "lapses": 1, "returns_only": 1}
    assert (labels["event_timestamp"] == CUTOFF).all()
    assert str(labels["event_timestamp"].dtype) == "datetime64[ns, UTC]"


def test_window_edges_purchase_at_the_cutoff_and_at_the_window_end_count() -> None:
    history = purchases(
        ("at_cutoff", "2025-05-01", False),
        ("at_cutoff", "2025-06-01 00:00:00", False),
        ("at_end", "2025-05-01", False),
        ("at_end", "2025-06-08 00:00:00", False),
        ("just_after", "2025-05-01", False),
        ("just_after", "2025-06-08 00:00:01", False),
    )
    labels = repurchase_labels(history, [CUTOFF], window_days=7)
    assert labels_by_customer(labels, "repurchased") == {
        "at_cutoff": 1,
        "at_end": 1,
        "just_after": 0,
    }


def test_population_is_customers_with_a_non_return_purchase_before_the_cutoff() -> None:
    history = purchases(
        ("old", "2025-01-10", False),
        ("first_at_cutoff", "2025-06-01", False),  # not yet a customer at the cutoff
        ("after", "2025-06-10", False),
        ("only_a_return", "2025-03-01", True),
    )
    labels = churn_labels(history, [CUTOFF], window_days=30)
    assert list(labels["customer_id"]) == ["old"]


def test_changing_purchases_after_the_window_changes_no_label() -> None:
    base = purchases(
        ("a", "2025-05-01", False),
        ("a", "2025-07-01", False),
        ("b", "2025-04-01", False),
    )
    later = pd.concat(
        [
            base,
            purchases(
                ("b", "2025-09-01", False), ("a", "2026-01-01", True), ("c", "2025-12-01", False)
            ),
        ],
        ignore_index=True,
    )
    for window in (30, 90):
        pd.testing.assert_frame_equal(
            churn_labels(base, [CUTOFF], window), churn_labels(later, [CUTOFF], window)
        )


def test_timezones_naive_utc_purchases_and_aware_cutoffs_agree() -> None:
    naive = purchases(("a", "2025-05-01", False), ("a", "2025-06-02 23:00", False))
    aware = naive.assign(
        occurred_at=naive["occurred_at"].dt.tz_localize("UTC").dt.tz_convert("Europe/Paris")
    )
    cutoff_in_paris = CUTOFF.tz_convert("Europe/Paris")
    expected = repurchase_labels(naive, [CUTOFF], 2)
    pd.testing.assert_frame_equal(repurchase_labels(aware, [cutoff_in_paris], 2), expected)
    assert expected["repurchased"].tolist() == [1]


def test_eligible_cutoffs_need_the_whole_window_before_the_data_end() -> None:
    cutoffs = [pd.Timestamp(f"2025-0{m}-01", tz="UTC") for m in (3, 4, 5, 6)]
    data_end = pd.Timestamp("2025-07-29 12:00")  # naive UTC, as the warehouse stores it
    assert eligible_cutoffs(cutoffs, data_end, 90) == cutoffs[:2]  # 2025-05-01 + 90 = 07-30
    assert eligible_cutoffs(cutoffs, pd.Timestamp("2025-07-30"), 90) == cutoffs[:3]  # edge
    assert eligible_cutoffs(reversed(cutoffs + cutoffs), data_end, 30) == cutoffs
    assert eligible_cutoffs(cutoffs, pd.Timestamp("2025-05-30 23:59"), 90) == cutoffs[:1]


def test_label_frame_marks_labels_missing_where_their_window_is_not_observed() -> None:
    history = purchases(
        ("a", "2025-01-15", False),
        ("a", "2025-04-10", False),
        ("a", "2025-07-29", False),
        ("b", "2025-02-01", False),
    )
    cutoffs = [pd.Timestamp(f"2025-0{m}-01", tz="UTC") for m in (3, 4, 5, 6)]
    frame = label_frame(history, cutoffs, pd.Timestamp("2025-07-29 12:00"), 90, 30)
    by_cutoff = frame.groupby("event_timestamp")
    assert by_cutoff["churned"].count().tolist() == [2, 2, 0, 0]  # churn eligible: Mar, Apr
    assert by_cutoff["repurchased"].count().tolist() == [2, 2, 2, 2]
    april = frame[frame["event_timestamp"] == cutoffs[1]].set_index("customer_id")
    assert april.loc["a", "churned"] == 0 and april.loc["b", "churned"] == 1
    assert april.loc["a", "repurchased"] == 1  # 2025-04-10 is within 30 days of April 1st


def test_missing_columns_are_reported() -> None:
    with pytest.raises(LabelInputError, match="occurred_at"):
        churn_labels(pd.DataFrame({"customer_id": ["a"]}), [CUTOFF], 30)


def test_no_cutoff_gives_an_empty_typed_frame() -> None:
    labels = churn_labels(purchases(("a", "2025-01-01", False)), [], 30)
    assert labels.empty and list(labels.columns) == ["customer_id", "event_timestamp", "churned"]
