"""Unit tests of the drift module: the verdict rule, column choice, and reading Evidently's output.

The parsing tests run Evidently for real on tiny frames (one import for the module, about a
second per run): the structure of ``snapshot.dict()`` is what they guard.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from monitoring.drift import (
    DISTANCE_METHODS,
    EXCLUDED_CUMULATIVE,
    EXCLUDED_TRUNCATED,
    P_VALUE_METHODS,
    PREDICTION_COLUMN,
    SMALL_REFERENCE_ROWS,
    CurrentFeaturesNotFoundError,
    DriftParseError,
    ReferenceNotFoundError,
    calendar_exclusions,
    current_features_path,
    drift_verdict,
    history_days_at,
    load_latest_snapshot,
    load_reference,
    parse_column_drift,
    point_latest,
    run_evidently,
    sample_rows,
    select_drift_columns,
    small_sample_methods,
    to_evidently_frame,
    window_days_of,
)
from omniretain.settings import DriftSettings, load_settings


# ---- drift_verdict ---------------------------------------------------------------------------
def test_verdict_is_drift_when_share_equals_threshold() -> None:
    # Evidently's rule is share >= threshold; ours must agree at the boundary.
    assert drift_verdict({"a": True, "b": False, "c": False, "d": False}, 0.25) is True


def test_verdict_is_no_drift_just_below_threshold() -> None:
    assert drift_verdict({"a": True, "b": False, "c": False, "d": False}, 0.26) is False


def test_verdict_with_no_drifted_column_is_no_drift() -> None:
    assert drift_verdict({"a": False}, 0.01) is False


def test_verdict_needs_every_column_when_threshold_is_one() -> None:
    assert drift_verdict({"a": True, "b": True}, 1.0) is True
    assert drift_verdict({"a": True, "b": False}, 1.0) is False


def test_verdict_refuses_an_empty_comparison() -> None:
    with pytest.raises(ValueError, match="at least one"):
        drift_verdict({}, 0.3)


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.01])
def test_verdict_refuses_a_threshold_outside_zero_one(threshold: float) -> None:
    with pytest.raises(ValueError, match="share_threshold"):
        drift_verdict({"a": True}, threshold)


# ---- column choice and frame preparation -----------------------------------------------------
def _snapshot_frame(n: int = 5) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(n)],
            "event_timestamp": pd.Timestamp("2025-06-01", tz="UTC"),
            "created_timestamp": pd.Timestamp("2025-06-02", tz="UTC"),
            "spend_365d": np.arange(n, dtype=float),
            "purchases_90d": np.arange(n, dtype=np.int64),
            "has_app": [True, False] * (n // 2) + [True] * (n % 2),
            "region": ["north"] * n,
        }
    )


def test_select_keeps_shared_numeric_features_and_separates_the_score() -> None:
    reference = _snapshot_frame().assign(**{PREDICTION_COLUMN: 0.5, "churned": 1})
    current = _snapshot_frame().assign(**{PREDICTION_COLUMN: 0.4, "only_current": 1.0})
    selection = select_drift_columns(reference, current)
    assert selection.features == ["spend_365d", "purchases_90d", "has_app"]
    assert selection.prediction == PREDICTION_COLUMN
    assert selection.tested[-1] == PREDICTION_COLUMN
    assert selection.skipped == {
        "region": "not numeric on both sides",
        "only_current": "not in the reference",
        "churned": "not in the current data",
    }


def test_select_skips_a_column_with_no_value_on_one_side() -> None:
    reference = _snapshot_frame().assign(**{PREDICTION_COLUMN: 0.5})
    current = _snapshot_frame().assign(spend_365d=np.nan)
    selection = select_drift_columns(reference, current)
    assert "spend_365d" not in selection.tested
    assert selection.skipped["spend_365d"] == "no value in the current data"
    # scores not yet computed for the current data: no prediction drift, not an error
    assert selection.prediction is None


def test_evidently_frame_has_naive_utc_times_and_float_columns() -> None:
    frame = _snapshot_frame()
    frame["event_timestamp"] = pd.Timestamp("2025-06-01 02:00", tz="Europe/Paris")
    out = to_evidently_frame(frame, ["purchases_90d", "has_app"])
    assert list(out.columns) == ["customer_id", "event_timestamp", "purchases_90d", "has_app"]
    assert out["event_timestamp"].dt.tz is None
    assert out["event_timestamp"].iloc[0] == pd.Timestamp("2025-06-01 00:00")
    assert out["purchases_90d"].dtype == "float64" and out["has_app"].dtype == "float64"


def test_sample_rows_is_bounded_and_repeatable() -> None:
    frame = pd.DataFrame({"x": range(1000)})
    first, second = sample_rows(frame, 100), sample_rows(frame, 100)
    assert len(first) == 100
    assert first.index.equals(second.index)
    assert sample_rows(frame, 5000) is frame


def test_small_references_test_few_valued_counts_with_ks_not_chi_square() -> None:
    rng = np.random.default_rng(0)

    def frame(n: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "open_cases": rng.integers(0, 4, n).astype(float),  # 4 values: chi-square
                "consent_sms": rng.integers(0, 2, n).astype(float),  # 2 values: Z-test stays
                "spend_365d": rng.gamma(2.0, 100.0, n),  # continuous: K-S already
            }
        )

    columns = ["open_cases", "consent_sms", "spend_365d"]
    small = frame(SMALL_REFERENCE_ROWS)
    assert small_sample_methods(frame(50), small, columns) == {"open_cases": "ks"}
    # above the limit Evidently uses distances, which need no correction
    assert small_sample_methods(frame(50), frame(SMALL_REFERENCE_ROWS + 1), columns) == {}


# ---- file inputs -----------------------------------------------------------------------------
def test_missing_reference_tells_the_user_to_train(tmp_path) -> None:
    settings = load_settings(state_dir=tmp_path)
    with pytest.raises(ReferenceNotFoundError, match="omniretain train"):
        load_reference(settings)


def test_missing_feature_table_tells_the_user_to_build_features(tmp_path) -> None:
    settings = load_settings(state_dir=tmp_path)
    with pytest.raises(CurrentFeaturesNotFoundError, match="omniretain build-features"):
        load_latest_snapshot(settings)


def test_latest_snapshot_reads_only_the_newest_cutoff(tmp_path) -> None:
    settings = load_settings(state_dir=tmp_path)
    older = _snapshot_frame(4).assign(event_timestamp=pd.Timestamp("2025-05-01", tz="UTC"))
    newer = _snapshot_frame(3).assign(spend_365d=[10.0, 11.0, 12.0])
    path = current_features_path(settings)
    path.parent.mkdir(parents=True)
    pd.concat([newer, older]).to_parquet(path, index=False)

    snapshot = load_latest_snapshot(settings)
    assert len(snapshot) == 3
    assert (snapshot["event_timestamp"] == pd.Timestamp("2025-06-01", tz="UTC")).all()
    assert sorted(snapshot["spend_365d"]) == [10.0, 11.0, 12.0]


def test_latest_link_follows_the_newest_run_and_replaces_a_copy(tmp_path) -> None:
    first, second = tmp_path / "20250101T000000Z", tmp_path / "20250102T000000Z"
    for run in (first, second):
        run.mkdir()
        (run / "summary.json").write_text(json.dumps({"run": run.name}))
    (tmp_path / "latest").mkdir()  # a copy left by a filesystem without symlinks
    point_latest(tmp_path, first)
    assert json.loads((tmp_path / "latest" / "summary.json").read_text())["run"] == first.name
    latest = point_latest(tmp_path, second)
    assert latest.is_symlink()
    assert json.loads((latest / "summary.json").read_text())["run"] == second.name
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name, second.name, "latest"]


# ---- parsing a real Evidently snapshot -------------------------------------------------------
def _evidently_pair(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A continuous column that moves, one that does not, and a binary one that flips."""
    rng = np.random.default_rng(seed)

    def frame(shift: float, p_flag: float) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "customer_id": [f"c{i}" for i in range(n)],
                "event_timestamp": pd.Timestamp("2025-06-01"),
                "moved": rng.normal(shift, 1.0, n),
                "steady": rng.gamma(2.0, 50.0, n),
                "flag": (rng.uniform(size=n) < p_flag).astype(float),
            }
        )

    return frame(2.0, 0.8), frame(0.0, 0.2)  # current, reference


COLUMNS = ["moved", "steady", "flag"]


@pytest.fixture(scope="module")
def small_snapshot() -> dict[str, Any]:
    """A few hundred rows: Evidently picks p-value tests (K-S, Z-test)."""
    current, reference = _evidently_pair(300, seed=1)
    return run_evidently(current, reference, COLUMNS, 0.3).dict()


@pytest.fixture(scope="module")
def large_snapshot() -> dict[str, Any]:
    """Over 1000 rows: Evidently switches to distances (Wasserstein, Jensen-Shannon)."""
    current, reference = _evidently_pair(1100, seed=2)
    return run_evidently(current, reference, COLUMNS, 0.3).dict()


@pytest.mark.parametrize(
    ("snapshot_name", "expected_methods"),
    [
        ("small_snapshot", {"moved": "K-S p_value", "flag": "Z-test p_value"}),
        (
            "large_snapshot",
            {"moved": "Wasserstein distance (normed)", "flag": "Jensen-Shannon distance"},
        ),
    ],
)
def test_parse_reads_method_score_and_decision_per_column(
    snapshot_name: str, expected_methods: dict[str, str], request: pytest.FixtureRequest
) -> None:
    results = parse_column_drift(request.getfixturevalue(snapshot_name))
    assert set(results) == set(COLUMNS)
    for column, method in expected_methods.items():
        assert results[column].method == method
    assert results["moved"].drifted and results["flag"].drifted
    assert not results["steady"].drifted
    for result in results.values():
        assert result.method in P_VALUE_METHODS | DISTANCE_METHODS
        # the score's meaning depends on the method: check it agrees with the decision
        if result.method in P_VALUE_METHODS:
            assert result.drifted == (result.score <= result.threshold)
        else:
            assert result.drifted == (result.score >= result.threshold)


@pytest.mark.parametrize("snapshot_name", ["small_snapshot", "large_snapshot"])
def test_parse_without_tests_derives_the_same_decisions(
    snapshot_name: str, request: pytest.FixtureRequest
) -> None:
    snapshot = request.getfixturevalue(snapshot_name)
    with_tests = parse_column_drift(snapshot)
    without_tests = parse_column_drift({**snapshot, "tests": []})
    assert without_tests == with_tests


def test_parse_reads_the_saved_json_like_the_dict(small_snapshot: dict[str, Any]) -> None:
    # the dict holds TestStatus enums, the saved report.json plain strings
    round_tripped = json.loads(json.dumps(small_snapshot, default=str))
    assert parse_column_drift(round_tripped) == parse_column_drift(small_snapshot)


def test_parse_rejects_a_snapshot_without_drift_metrics() -> None:
    with pytest.raises(DriftParseError, match="metrics"):
        parse_column_drift({"tests": []})
    with pytest.raises(DriftParseError, match="ValueDrift"):
        parse_column_drift({"metrics": [{"config": {"type": "x:DriftedColumnsCount"}}]})


def test_parse_rejects_an_unknown_method_it_cannot_decide(small_snapshot: dict[str, Any]) -> None:
    metric = next(m for m in small_snapshot["metrics"] if m["config"].get("column") == "moved")
    odd = {**metric, "config": {**metric["config"], "method": "new-fangled test"}}
    with pytest.raises(DriftParseError, match="new-fangled"):
        parse_column_drift({"metrics": [odd], "tests": []})


def test_newest_snapshot_keeps_only_the_latest_cutoff() -> None:
    from monitoring.drift import newest_snapshot

    frame = pd.DataFrame(
        {
            "event_timestamp": pd.to_datetime(["2025-01-01", "2025-02-01", "2025-02-01"], utc=True),
            "x": [1.0, 2.0, 3.0],
        }
    )
    assert newest_snapshot(frame)["x"].tolist() == [2.0, 3.0]


def test_scored_population_drops_customers_who_never_bought() -> None:
    from monitoring.drift import scored_population

    frame = pd.DataFrame({"purchases_total": [0.0, 2.0, 1.0], "x": [1.0, 2.0, 3.0]})
    assert scored_population(frame)["x"].tolist() == [2.0, 3.0]


# ---- columns that move with the calendar -------------------------------------------------------
CALENDAR = DriftSettings(calendar_columns=["tenure_days", "historic_clv", "days_since_*"])
FEATURES = [
    "tenure_days",
    "historic_clv",
    "days_since_last_purchase",
    "days_since_last_purchase_web",
    "purchases_90d",
    "spend_365d",
    "purchases_365d_web",
    "email_open_rate_90d",
    PREDICTION_COLUMN,
]


def test_window_of_a_feature_is_read_from_its_name() -> None:
    assert window_days_of("purchases_365d_web") == 365
    assert window_days_of("spend_90d") == 90
    assert window_days_of("tenure_days") is None
    assert window_days_of("days_since_last_purchase") is None


def test_cumulative_columns_are_excluded_by_name_and_pattern_never_the_score() -> None:
    excluded = calendar_exclusions(FEATURES, CALENDAR, history_days=None)
    assert excluded == {
        "tenure_days": EXCLUDED_CUMULATIVE,
        "historic_clv": EXCLUDED_CUMULATIVE,
        "days_since_last_purchase": EXCLUDED_CUMULATIVE,
        "days_since_last_purchase_web": EXCLUDED_CUMULATIVE,
    }


def test_windows_longer_than_the_reference_history_are_excluded_as_truncated() -> None:
    excluded = calendar_exclusions(FEATURES, CALENDAR, history_days=240.0)
    assert excluded["spend_365d"] == excluded["purchases_365d_web"] == EXCLUDED_TRUNCATED
    assert "purchases_90d" not in excluded and "email_open_rate_90d" not in excluded
    full_history = calendar_exclusions(FEATURES, CALENDAR, history_days=400.0)
    assert "spend_365d" not in full_history
    switched_off = DriftSettings(calendar_columns=[], exclude_truncated_windows=False)
    assert calendar_exclusions(FEATURES, switched_off, history_days=240.0) == {}


def test_history_at_the_reference_is_from_the_data_start_to_its_newest_cutoff() -> None:
    reference = pd.DataFrame(
        {"event_timestamp": pd.to_datetime(["2025-07-30", "2025-08-29"], utc=True)}
    )
    start = pd.Timestamp("2025-01-01", tz="UTC").to_pydatetime()
    assert history_days_at(reference, start) == 240.0
    assert history_days_at(reference, None) is None


def test_excluded_columns_are_in_the_report_but_not_in_its_share() -> None:
    """An excluded column that drifts is shown (its own ValueDrift) but not counted."""
    current, reference = _evidently_pair(300, seed=3)
    snapshot = run_evidently(current, reference, ["steady"], 0.5, excluded=["moved"]).dict()
    results = parse_column_drift(snapshot)
    assert results["moved"].drifted and not results["steady"].drifted
    shares = [
        m for m in snapshot["metrics"] if "DriftedColumnsCount" in str(m["config"].get("type"))
    ]
    assert shares and all(m["value"]["count"] == 0 for m in shares)
