"""BG/NBD: the published CDNOW fit, the summary convention, and the properties of predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.bgnbd import (
    CUSTOMER_BASE_FEATURES,
    BGNBDFitError,
    BGNBDParameters,
    customer_base_features,
    expected_transactions,
    fit_bgnbd,
    forecast_rehearsal,
    frequency_recency_summary,
    log_likelihood,
    probability_alive,
    probability_any_purchase,
    rehearsed_correction,
)

CDNOW_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "CDNOW_sample.txt"
CALIBRATION_END = pd.Timestamp("1997-09-30")
PUBLISHED = BGNBDParameters(r=0.243, alpha=4.414, a=0.793, b=2.426)


@pytest.fixture(scope="module")
def cdnow() -> pd.DataFrame:
    frame = pd.read_csv(
        CDNOW_SAMPLE,
        sep=r"\s+",
        header=None,
        names=["master_id", "customer_id", "date", "cds", "dollars"],
        dtype={"date": str},
    )
    frame["occurred_at"] = pd.to_datetime(frame["date"], format="%Y%m%d")
    return frame


@pytest.fixture(scope="module")
def calibration(cdnow: pd.DataFrame) -> pd.DataFrame:
    return frequency_recency_summary(cdnow, CALIBRATION_END)


def test_summary_merges_same_day_rows_and_ignores_later_ones() -> None:
    purchases = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "a", "b"],
            "occurred_at": pd.to_datetime(
                [
                    "2020-01-01 09:00",
                    "2020-01-01 17:00",
                    "2020-01-15 00:00",
                    "2020-03-01 00:00",
                    "2020-01-08 00:00",
                ]
            ),
        }
    )
    summary = frequency_recency_summary(purchases, pd.Timestamp("2020-01-29"))
    assert summary.loc["a"].tolist() == [1.0, 2.0, 4.0]
    assert summary.loc["b"].tolist() == [0.0, 0.0, 3.0]


def test_fit_recovers_the_published_cdnow_parameters(calibration: pd.DataFrame) -> None:
    assert len(calibration) == 2357
    fitted = fit_bgnbd(calibration["x"], calibration["t_x"], calibration["T"])
    for name, published in PUBLISHED.as_dict().items():
        assert getattr(fitted, name) == pytest.approx(published, rel=2e-3), name


def test_holdout_forecast_matches_the_published_figure(
    cdnow: pd.DataFrame, calibration: pd.DataFrame
) -> None:
    holdout = cdnow[cdnow["occurred_at"] > CALIBRATION_END]
    actual = len(holdout.drop_duplicates(["customer_id", "occurred_at"]))
    forecast = expected_transactions(
        PUBLISHED, 39.0, calibration["x"], calibration["t_x"], calibration["T"]
    ).sum()
    assert actual == 1882
    assert forecast == pytest.approx(1653, abs=5)


def test_fit_refuses_data_without_repeat_purchases() -> None:
    with pytest.raises(BGNBDFitError, match="repeat"):
        fit_bgnbd(np.zeros(5), np.zeros(5), np.full(5, 10.0))


def test_fit_refuses_last_purchase_after_the_end() -> None:
    with pytest.raises(BGNBDFitError, match="t_x"):
        fit_bgnbd(np.array([1.0, 2.0]), np.array([5.0, 12.0]), np.array([10.0, 10.0]))


def test_fit_recovers_parameters_of_simulated_customers() -> None:
    rng = np.random.default_rng(0)
    truth = BGNBDParameters(r=0.8, alpha=3.0, a=1.2, b=4.0)
    n, horizon = 6000, 52.0
    rates = rng.gamma(truth.r, 1.0 / truth.alpha, n)
    dropouts = rng.beta(truth.a, truth.b, n)
    x, t_x = np.zeros(n), np.zeros(n)
    for index in range(n):
        time = 0.0
        while True:
            time += rng.exponential(1.0 / rates[index])
            if time > horizon:
                break
            x[index] += 1
            t_x[index] = time
            if rng.random() < dropouts[index]:
                break
    fitted = fit_bgnbd(x, t_x, np.full(n, horizon))
    assert fitted.r == pytest.approx(truth.r, rel=0.15)
    assert fitted.alpha == pytest.approx(truth.alpha, rel=0.25)
    assert fitted.a == pytest.approx(truth.a, rel=0.35)
    assert fitted.b == pytest.approx(truth.b, rel=0.45)


histories = st.tuples(st.integers(0, 40), st.floats(0.0, 1.0), st.floats(1.0, 80.0)).map(
    lambda h: (float(h[0]), h[1] * h[2] if h[0] > 0 else 0.0, h[2])
)


@settings(max_examples=80, deadline=None)
@given(history=histories, t=st.floats(0.5, 60.0))
def test_predictions_are_probabilities_and_grow_with_the_horizon(history, t) -> None:
    x, t_x, T = (np.array([value]) for value in history)
    alive = probability_alive(PUBLISHED, x, t_x, T)[0]
    any_purchase = probability_any_purchase(PUBLISHED, t, x, t_x, T)[0]
    shorter = expected_transactions(PUBLISHED, t, x, t_x, T)[0]
    longer = expected_transactions(PUBLISHED, t * 1.5, x, t_x, T)[0]
    assert 0.0 <= any_purchase <= alive <= 1.0
    assert 0.0 <= shorter <= longer
    assert np.isfinite(log_likelihood(PUBLISHED, x, t_x, T)[0])


def test_a_recent_buyer_is_more_alive_than_a_lapsed_one() -> None:
    x = np.array([5.0, 5.0])
    alive = probability_alive(PUBLISHED, x, np.array([30.0, 5.0]), np.array([32.0, 32.0]))
    assert alive[0] > alive[1]


def _log(rows: list[tuple[str, str]], returns: tuple[str, str] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["customer_id", "occurred_at"])
    frame["occurred_at"] = pd.to_datetime(frame["occurred_at"], format="ISO8601")
    frame["is_return"] = False
    if returns is not None:
        frame.loc[len(frame)] = [returns[0], pd.Timestamp(returns[1]), True]
    return frame


def test_customer_base_gap_features_by_hand() -> None:
    # a buys on days 0, 10 and 30 before a cutoff on day 40 (twice on day 10: one occasion);
    # b once; c twice, so that BG/NBD can be fitted.
    purchases = _log(
        [
            ("a", "2020-01-01"),
            ("a", "2020-01-11 09:00"),
            ("a", "2020-01-11 18:00"),
            ("a", "2020-01-31"),
            ("b", "2020-01-05"),
            ("c", "2020-01-02"),
            ("c", "2020-01-20"),
        ],
        returns=("b", "2020-01-25"),  # a return is not a purchase
    )
    cutoff = pd.Timestamp("2020-02-10", tz="UTC")
    rows = customer_base_features(purchases, [cutoff], horizon_days=30).set_index("customer_id")
    assert list(rows.columns) == ["event_timestamp", *CUSTOMER_BASE_FEATURES]
    assert (rows["event_timestamp"] == cutoff).all()
    a, b = rows.loc["a"], rows.loc["b"]
    assert a["repeat_purchases"] == 2 and b["repeat_purchases"] == 0
    assert a["mean_days_between_purchases"] == pytest.approx(15.0)
    assert a["purchase_gap_cv"] == pytest.approx(np.std([10, 20], ddof=1) / 15.0)
    assert a["overdue_ratio"] == pytest.approx(10.0 / 15.0)  # last purchase 10 days ago
    assert np.isnan(b["mean_days_between_purchases"]) and np.isnan(b["overdue_ratio"])
    assert np.isnan(rows.loc["c", "purchase_gap_cv"])  # one gap: no spread
    assert b["bgnbd_p_alive"] == pytest.approx(1.0)  # the model's convention for x = 0
    assert 0.0 < a["bgnbd_p_any_purchase"] < 1.0 and a["bgnbd_expected_purchases"] > 0.0


def test_mean_items_per_purchase_sums_a_day_and_skips_returns() -> None:
    # a: 2 + 1 items on one day (one occasion of 3), then 1 item; the return and the purchase
    # from the cutoff on do not count. Without an ``items`` column the feature is NaN.
    purchases = _log([("a", "2020-01-01"), ("a", "2020-01-01 18:00"), ("a", "2020-01-20")])
    purchases.loc[len(purchases)] = ["a", pd.Timestamp("2020-01-25"), True]
    purchases.loc[len(purchases)] = ["a", pd.Timestamp("2020-02-01"), False]
    purchases["items"] = [2, 1, 1, 7, 9]
    cutoff = pd.Timestamp("2020-02-01")
    rows = customer_base_features(purchases, [cutoff], horizon_days=30).set_index("customer_id")
    assert rows.loc["a", "mean_items_per_purchase"] == pytest.approx(2.0)
    assert rows.loc["a", "repeat_purchases"] == 1
    without = customer_base_features(purchases.drop(columns="items"), [cutoff], horizon_days=30)
    assert without["mean_items_per_purchase"].isna().all()


def test_customer_base_features_ignore_purchases_from_the_cutoff_on(cdnow: pd.DataFrame) -> None:
    cutoff = pd.Timestamp("1997-07-01")
    before = cdnow[cdnow["occurred_at"] < cutoff]
    with_future = customer_base_features(cdnow, [cutoff], horizon_days=91)
    without = customer_base_features(before, [cutoff], horizon_days=91)
    pd.testing.assert_frame_equal(with_future, without)
    # The BG/NBD columns are the model fitted on the history before the cutoff.
    summary = frequency_recency_summary(before, cutoff - pd.Timedelta(days=1))
    params = fit_bgnbd(summary["x"], summary["t_x"], summary["T"])
    expected = expected_transactions(params, 13.0, summary["x"], summary["t_x"], summary["T"])
    got = with_future.set_index("customer_id")["bgnbd_expected_purchases"]
    np.testing.assert_allclose(got.loc[summary.index.astype(str)], expected, rtol=1e-6)


def test_customer_base_features_without_repeat_buyers_leave_bgnbd_empty() -> None:
    purchases = _log([("a", "2020-01-01"), ("b", "2020-01-03")])
    rows = customer_base_features(purchases, [pd.Timestamp("2020-02-01")], horizon_days=30)
    assert len(rows) == 2
    assert rows[list(CUSTOMER_BASE_FEATURES[:3])].isna().all().all()
    assert (rows["repeat_purchases"] == 0).all()
    assert customer_base_features(purchases, [pd.Timestamp("2019-01-01")], 30).empty


def test_forecast_rehearsal_counts_the_repeats_of_known_customers_by_hand(
    cdnow: pd.DataFrame,
) -> None:
    # The CDNOW sample before the cutoff (1997-07-01) is the background BG/NBD is fitted on;
    # a, b, c buy before it too. Until the end (1997-08-01): a buys twice on one day (one
    # occasion) and once more, b returns something (not a purchase), d is new (not a repeat of
    # a known customer); a's purchase on the end day is outside.
    cutoff, end = pd.Timestamp("1997-07-01", tz="UTC"), pd.Timestamp("1997-08-01", tz="UTC")
    hand = _log(
        [
            ("a", "1997-05-01"),
            ("a", "1997-06-15"),
            ("b", "1997-05-05"),
            ("c", "1997-05-02"),
            ("c", "1997-06-20"),
            ("a", "1997-07-10 09:00"),
            ("a", "1997-07-10 18:00"),
            ("a", "1997-07-20"),
            ("d", "1997-07-12"),
            ("a", "1997-08-01"),
        ],
        returns=("b", "1997-07-15"),
    )
    background = cdnow.loc[cdnow["occurred_at"] < "1997-07-01", ["customer_id", "occurred_at"]]
    purchases = pd.concat([background, hand], ignore_index=True)
    row = forecast_rehearsal(purchases, [cutoff], end).iloc[0]
    assert row["actual"] == 2
    assert row["horizon"] == pytest.approx(31 / 7)
    assert row["ratio"] == pytest.approx(row["actual"] / row["forecast"])
    with pytest.raises(ValueError, match="not before the end"):
        forecast_rehearsal(purchases, [end], end)


def test_forecast_rehearsal_on_cdnow_reads_nothing_after_the_end(cdnow: pd.DataFrame) -> None:
    end = pd.Timestamp("1997-10-01")
    cutoffs = [pd.Timestamp("1997-08-01")]  # one BG/NBD fit per cutoff: keep the test fast
    with_future = forecast_rehearsal(cdnow, cutoffs, end)
    without = forecast_rehearsal(cdnow[cdnow["occurred_at"] < end], cutoffs, end)
    pd.testing.assert_frame_equal(with_future, without)
    assert list(with_future["cutoff"]) == cutoffs
    # The forecast is BG/NBD fitted on the history before each cutoff.
    for cutoff, forecast in zip(cutoffs, with_future["forecast"], strict=True):
        summary = frequency_recency_summary(
            cdnow[cdnow["occurred_at"] < cutoff], cutoff - pd.Timedelta(days=1)
        )
        params = fit_bgnbd(summary["x"], summary["t_x"], summary["T"])
        weeks = (end - cutoff).days / 7
        expected = expected_transactions(params, weeks, summary["x"], summary["t_x"], summary["T"])
        assert forecast == pytest.approx(expected.sum(), rel=1e-6)
    # Independent count: same-day rows merged, customers first seen before the cutoff.
    days = cdnow.drop_duplicates(["customer_id", "occurred_at"])
    first = days.groupby("customer_id")["occurred_at"].transform("min")
    for cutoff, actual in zip(cutoffs, with_future["actual"], strict=True):
        later = days[(days["occurred_at"] >= cutoff) & (days["occurred_at"] < end)]
        assert actual == int((first.loc[later.index] < cutoff).sum())


def test_rehearsed_correction_applies_only_a_clear_bias() -> None:
    def rehearsal(ratios: list[float]) -> pd.DataFrame:
        return pd.DataFrame({"ratio": ratios})

    assert rehearsed_correction(rehearsal([1.10, 1.12, 1.11, 1.09])) == pytest.approx(1.105)
    assert rehearsal([0.82, 0.97, 1.10, 1.00, 0.96]).pipe(rehearsed_correction) == 1.0  # noise
    assert rehearsed_correction(rehearsal([1.3])) == 1.0  # one ratio has no spread to judge
    assert rehearsed_correction(rehearsal([])) == 1.0
