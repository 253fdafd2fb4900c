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


# ---- label files ---------------------------------------------------------------------------


def _label_rows(**columns) -> pd.DataFrame:
    base = {
        "customer_id": ["a", "b"],
        "cutoff": ["2025-05-01", "2025-06-01T00:00:00Z"],
        "label": [1, 0],
    }
    return pd.DataFrame({**base, **columns})


def test_label_file_rows_become_utc_churn_labels() -> None:
    from training.labels import parse_label_file

    parsed = parse_label_file(_label_rows())
    assert parsed["customer_id"].tolist() == ["a", "b"]
    assert str(parsed["event_timestamp"].dt.tz) == "UTC"
    assert parsed["event_timestamp"].iloc[0] == pd.Timestamp("2025-05-01", tz="UTC")
    assert parsed["churned"].tolist() == [1, 0]


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"label": [1, 2]}, "0 or 1"),
        ({"cutoff": ["2025-05-01", "not a date"]}, "unparsable cutoff"),
        ({"customer_id": ["a", None]}, "empty customer_id"),
    ],
)
def test_label_file_errors_name_the_rows(columns, message) -> None:
    from training.labels import LabelFileError, parse_label_file

    with pytest.raises(LabelFileError, match=message) as error:
        parse_label_file(_label_rows(**columns))
    assert "[2]" in str(error.value)


def test_label_file_needs_its_three_columns() -> None:
    from training.labels import LabelFileError, parse_label_file

    with pytest.raises(LabelFileError, match="missing column"):
        parse_label_file(_label_rows().drop(columns=["label"]))


def test_label_file_refuses_contradicting_duplicates(tmp_path) -> None:
    from training.labels import LabelFileError, read_label_file

    path = tmp_path / "labels.csv"
    pd.DataFrame(
        {"customer_id": ["a", "a"], "cutoff": ["2025-05-01", "2025-05-01"], "label": [1, 0]}
    ).to_csv(path, index=False)
    with pytest.raises(LabelFileError, match="different labels"):
        read_label_file(path)


def test_file_labels_replace_churn_and_keep_repurchase() -> None:
    from training.labels import parse_label_file, replace_churn_labels

    at = pd.Timestamp("2025-05-01", tz="UTC")
    computed = pd.DataFrame(
        {
            "customer_id": ["a", "c"],
            "event_timestamp": [at, at],
            "churned": pd.array([0, 1], dtype="Int8"),
            "repurchased": pd.array([1, 0], dtype="Int8"),
        }
    )
    file_labels = parse_label_file(
        pd.DataFrame({"customer_id": ["a", "z"], "cutoff": ["2025-05-01"] * 2, "label": [1, 1]})
    )
    merged = replace_churn_labels(computed, file_labels).set_index("customer_id")
    assert merged.loc["a", "churned"] == 1 and merged.loc["a", "repurchased"] == 1
    assert pd.isna(merged.loc["c", "churned"]) and merged.loc["c", "repurchased"] == 0
    assert merged.loc["z", "churned"] == 1 and pd.isna(merged.loc["z", "repurchased"])
