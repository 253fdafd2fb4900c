"""Decision log: non-blocking, counted drops, day partitions readable by DuckDB, JSON features."""

from __future__ import annotations

import json
import math
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitoring.logs import (
    DecisionLogger,
    DecisionRecord,
    FeedbackLogger,
    FeedbackRecord,
    decision_features,
    decision_row,
    features_json,
    parquet_glob,
    partition_rows,
    read_decisions,
    read_feedback,
)
from omniretain.settings import Settings, load_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(state_dir=tmp_path / "state")


def record(customer: str, when: datetime, **extra: object) -> DecisionRecord:
    extra.setdefault("features", {"spend_365d": 120.5, "open_cases": 1, "consent_sms": math.nan})
    return DecisionRecord(
        customer_id=customer,
        churn_probability=0.42,
        repurchase_probability=0.3,
        action="winback_offer",
        channel="email",
        churn_model_version="3",
        repurchase_model_version="2",
        decided_at=when,
        **extra,  # type: ignore[arg-type]
    )


def test_records_land_in_day_partitions_readable_by_duckdb(settings: Settings) -> None:
    day1 = datetime(2025, 3, 1, 23, 59, tzinfo=UTC)
    day2 = day1 + timedelta(minutes=2)
    with DecisionLogger(settings) as log:
        assert log.log(record("C1", day1))
        assert log.log(record("C2", day2, is_control=True, propensity=0.25, source="campaign"))
    folder = settings.monitoring_dir / "decisions"
    assert sorted(p.name for p in folder.iterdir()) == ["date=2025-03-01", "date=2025-03-02"]
    rows = duckdb.sql(
        f"SELECT customer_id, date, is_control, propensity, source FROM "
        f"read_parquet('{parquet_glob(folder)}', hive_partitioning = 1) ORDER BY customer_id"
    ).fetchall()
    assert [(r[0], str(r[1]), r[2], r[3], r[4]) for r in rows] == [
        ("C1", "2025-03-01", False, 1.0, "single"),
        ("C2", "2025-03-02", True, 0.25, "campaign"),
    ]
    assert log.stats.written == 2 and log.stats.dropped == 0 and log.stats.write_errors == 0


def test_a_full_queue_drops_and_counts_without_raising_or_blocking(settings: Settings) -> None:
    settings.monitoring.decision_log.queue_size = 1
    log = DecisionLogger(settings)
    gate = threading.Event()
    original = log._write_file
    log._write_file = lambda day, rows: (gate.wait(5), original(day, rows))[1]  # slow disk
    now = datetime.now(UTC)
    results = [log.log(record(f"C{i}", now)) for i in range(200)]
    assert results.count(False) == log.stats.dropped > 0
    assert log.stats.logged + log.stats.dropped == 200
    gate.set()
    log.close()
    assert len(read_decisions(settings)) == log.stats.written == log.stats.logged


def test_log_after_close_is_counted_as_dropped(settings: Settings) -> None:
    log = DecisionLogger(settings)
    log.close()
    assert log.log(record("C1", datetime.now(UTC))) is False
    assert log.stats.dropped == 1


def test_malformed_record_is_counted_and_the_rest_of_the_batch_written(settings: Settings) -> None:
    with DecisionLogger(settings) as log:
        log.log(record("C1", datetime.now(UTC)))
        log.log({"customer_id": "C2", "decided_at": "not a time"})
    assert log.stats.write_errors == 1
    assert read_decisions(settings)["customer_id"].tolist() == ["C1"]


def test_read_decisions_filters_the_window(settings: Settings) -> None:
    start = datetime(2025, 5, 1, tzinfo=UTC)
    with DecisionLogger(settings) as log:
        for day in range(5):
            log.log(record(f"C{day}", start + timedelta(days=day)))
    window = read_decisions(
        settings, since=start + timedelta(days=1), until=start + timedelta(days=3)
    )
    assert window["customer_id"].tolist() in (["C1", "C2"], ["C2", "C1"])


def test_empty_log_reads_as_empty_frame_with_the_columns(settings: Settings) -> None:
    frame = read_decisions(settings)
    assert frame.empty and "decision_id" in frame.columns
    assert read_feedback(settings).empty


def test_feedback_log_round_trip(settings: Settings) -> None:
    with FeedbackLogger(settings) as log:
        log.log(FeedbackRecord(decision_id="d1", outcome="converted", revenue=30.0))
    frame = read_feedback(settings)
    assert frame[["decision_id", "outcome", "revenue"]].values.tolist() == [
        ["d1", "converted", 30.0]
    ]


def test_decision_features_expands_json_and_keeps_score(settings: Settings) -> None:
    with DecisionLogger(settings) as log:
        log.log(record("C1", datetime.now(UTC)))
    frame = decision_features(read_decisions(settings))
    assert frame.loc[0, "spend_365d"] == 120.5
    assert frame.loc[0, "open_cases"] == 1.0
    assert math.isnan(frame.loc[0, "consent_sms"])
    assert frame.loc[0, "churn_probability"] == 0.42


def test_decision_row_fills_defaults_for_a_minimal_mapping() -> None:
    row = decision_row({"customer_id": "C1", "decided_at": datetime(2025, 1, 1)})
    assert row["decided_at"].tzinfo is UTC and row["propensity"] == 1.0
    assert row["is_control"] is False and len(row["decision_id"]) == 32
    assert row["features"] == "{}"


def test_partition_rows_groups_by_utc_day() -> None:
    rows = [{"t": datetime(2025, 1, d % 3 + 1, tzinfo=UTC), "i": d} for d in range(7)]
    grouped = partition_rows(rows, "t")
    assert sorted(grouped) == ["2025-01-01", "2025-01-02", "2025-01-03"]
    assert sum(len(v) for v in grouped.values()) == 7


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.one_of(st.none(), st.floats(), st.integers(-(10**6), 10**6), st.booleans()),
        max_size=8,
    )
)
def test_features_json_is_valid_json_with_same_keys(features: dict[str, object]) -> None:
    parsed = json.loads(features_json(features))
    assert set(parsed) == set(features)
    for key, value in features.items():
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            assert parsed[key] is None
        else:
            assert parsed[key] == pytest.approx(float(value))  # type: ignore[arg-type]


def test_records_queued_when_the_process_exits_are_written(tmp_path: Path) -> None:
    # A server stopped right after a request (as the demo does) must not lose its last decisions.
    import subprocess
    import sys

    state = tmp_path / "state"
    code = (
        "from pathlib import Path\n"
        "from omniretain.settings import load_settings\n"
        "from monitoring.logs import DecisionLogger, DecisionRecord\n"
        f"log = DecisionLogger(load_settings(state_dir=Path({str(state)!r})))\n"
        "log.log(DecisionRecord(customer_id='C9', churn_probability=0.1,"
        " repurchase_probability=0.2, action='a', channel='email',"
        " churn_model_version='1', repurchase_model_version='1'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    frame = read_decisions(load_settings(state_dir=state))
    assert frame["customer_id"].tolist() == ["C9"]


def test_a_decision_frame_reads_back_like_records_logged_one_by_one(settings: Settings) -> None:
    """Batch scoring and replay log a frame at once; the rows equal the one-by-one writer's."""
    import numpy as np
    import pandas as pd

    from monitoring.logs import log_decision_frame

    when = datetime(2025, 3, 1, 12, tzinfo=UTC)
    with DecisionLogger(settings) as log:
        log.log(record("C1", when))
    decisions = pd.DataFrame(
        {
            "customer_id": ["C2", "C3"],
            "churn_probability": [0.42, 0.1],
            "repurchase_probability": [0.3, 0.8],
            "action": ["winback_offer", "no_action"],
            "channel": ["email", "none"],
            "expected_value": [3.5, 0.0],
            "control_group": [False, True],
        }
    )
    features = pd.DataFrame(
        {"spend_365d": [120.5, 0.0], "open_cases": [1, 0], "consent_sms": [np.nan, np.inf]}
    )
    path = log_decision_frame(
        settings, decisions, features, "batch", when, {"churn": "3", "repurchase": "2"}
    )
    assert path is not None and path.parent.name == "date=2025-03-01"
    logged = read_decisions(settings).set_index("customer_id")
    assert logged.loc["C3", "is_control"] and not logged.loc["C2", "is_control"]
    assert logged.loc["C2", "source"] == "batch" and logged.loc["C2", "propensity"] == 1.0
    assert logged["decision_id"].str.len().eq(32).all() and logged["decision_id"].is_unique
    served = decision_features(read_decisions(settings)).set_index("customer_id")
    one_by_one = served.loc["C1", ["spend_365d", "open_cases", "churn_probability"]]
    as_frame = served.loc["C2", ["spend_365d", "open_cases", "churn_probability"]]
    assert one_by_one.tolist() == as_frame.tolist()
    assert math.isnan(served.loc["C2", "consent_sms"]) and math.isnan(
        served.loc["C3", "consent_sms"]
    )
    assert (
        log_decision_frame(settings, decisions.iloc[:0], features.iloc[:0], "batch", when, {})
        is None
    )


def test_a_batch_stores_the_features_typed_and_reads_them_back_as_the_json(
    settings: Settings,
) -> None:
    """A batch part file holds the feature values as a float64 struct (no JSON text to encode
    for a million rows); ``read_decisions`` gives every row the ``features`` JSON the service's
    writer stores, also across batches of different feature lists and the service's files."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from monitoring.logs import FEATURE_VALUES_COLUMN, log_decision_frame

    when = datetime(2025, 3, 1, 12, tzinfo=UTC)

    def decisions(ids: list[str]) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "customer_id": ids,
                "churn_probability": 0.5,
                "repurchase_probability": 0.5,
                "action": "no_action",
                "channel": "none",
                "expected_value": 0.0,
            }
        )

    first = pd.DataFrame(
        {
            "spend_365d": [120.5, 1e-7, np.nan],
            "open_cases": [1, 0, 3],
            "odd 'name\"": [np.inf, 2.25, -1.0],
        }
    )
    second = pd.DataFrame({"spend_365d": [7.0], "tenure_days": [400.0]})
    path = log_decision_frame(settings, decisions(["B1", "B2", "B3"]), first, "batch", when, {})
    log_decision_frame(settings, decisions(["B4"]), second, "batch", when, {})
    with DecisionLogger(settings) as log:
        log.log(record("C1", when))
    none = log_decision_frame(settings, decisions(["B5"]), first.iloc[:1, :0], "batch", when, {})

    assert path is not None and none is not None
    stored = pq.read_schema(path)
    assert stored.field(FEATURE_VALUES_COLUMN).type == pa.struct(
        [(name, pa.float64()) for name in first.columns]
    )
    assert pq.read_table(path)["features"].null_count == 3
    logged = read_decisions(settings).set_index("customer_id")
    assert FEATURE_VALUES_COLUMN not in logged.columns
    parsed = {customer: json.loads(text) for customer, text in logged["features"].items()}
    for customer, row in zip(["B1", "B2", "B3"], first.to_dict("records"), strict=True):
        # files of other feature names are read apart: no field of theirs comes in as null
        assert parsed[customer] == json.loads(features_json(row))
    assert parsed["B2"]["spend_365d"] == 1e-7 and parsed["B1"]["odd 'name\""] is None
    assert parsed["B4"] == {"spend_365d": 7.0, "tenure_days": 400.0}
    assert parsed["C1"] == json.loads(features_json(record("C1", when).features))
    assert parsed["B5"] == {}
    served = decision_features(read_decisions(settings)).set_index("customer_id")
    assert served.loc["B3", "open_cases"] == 3.0 and math.isnan(served.loc["B3", "spend_365d"])


def test_the_service_writer_stores_features_typed_and_reads_back_the_old_json(
    settings: Settings,
) -> None:
    """The writer's part files hold the values as the float64 struct (``features`` null);
    ``read_decisions`` gives each record the JSON ``features_json`` wrote for the same values:
    NaN, None and inf as null, ints, bools and numpy numbers as numbers. Values that are not
    numbers (a string) keep the JSON column; a flush of two feature lists (a model version
    changed) writes a part file per list, each row reading back exactly its own names."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from monitoring.logs import FEATURE_VALUES_COLUMN

    when = datetime(2025, 3, 1, 12, tzinfo=UTC)
    odd = {
        "spend_365d": 120.5,
        "open_cases": 1,
        "consent_sms": float("nan"),
        "missing": None,
        "huge": float("inf"),
        "tiny": -float("inf"),
        "is_member": True,
        "orders": np.int64(7),
        "ratio": np.float64(1e-7),
        "odd 'name\"": 2.0**60,
    }
    other_version = {"spend_365d": 3.0, "tenure_days": 400.0}
    text_valued = {"spend_365d": 1.0, "segment": "gold", "flag": "1.5"}
    records = {
        "C1": odd,
        "C2": {**odd, "spend_365d": 0.0},
        "C3": other_version,
        "C4": text_valued,
        "C5": {},
    }
    with DecisionLogger(settings) as log:
        for customer, features in records.items():
            log.log(record(customer, when, features=features))
    assert log.stats.written == 5 and log.stats.write_errors == 0
    files = sorted(settings.monitoring_dir.glob("decisions/*/*.parquet"))
    assert log.stats.files == len(files) == 3  # odd names, other version, JSON (text + none)
    tables = [pq.read_table(path) for path in files]
    typed = [t for t in tables if FEATURE_VALUES_COLUMN in t.column_names]
    assert sorted(t.num_rows for t in typed) == [1, 2]
    for table in typed:
        assert table["features"].null_count == table.num_rows
        assert all(f.type == pa.float64() for f in table.schema.field(FEATURE_VALUES_COLUMN).type)
    logged = read_decisions(settings).set_index("customer_id")
    for customer, features in records.items():
        assert json.loads(logged.loc[customer, "features"]) == json.loads(
            features_json(features)
        ), customer
    assert json.loads(logged.loc["C4", "features"])["segment"] == "gold"
    assert logged.loc["C5", "features"] == "{}"


def test_decision_features_reads_the_typed_columns_like_the_json(settings: Settings) -> None:
    """Drift monitoring's frame is the same whether the values come from the typed columns or
    from parsing every row's JSON: across the writer's typed files, a JSON file (the writer
    before it was typed, or no features) and batches of other feature names."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from monitoring.logs import decisions_dir, log_decision_frame, write_partition

    when = datetime(2025, 3, 1, 12, tzinfo=UTC)
    old_format = [decision_row(record(f"J{i}", when)) for i in range(3)]
    write_partition(
        decisions_dir(settings), "2025-03-01", pa.Table.from_pylist(old_format)
    )  # as the writer stored every record before
    with DecisionLogger(settings) as log:
        for i in range(150):
            log.log(record(f"C{i}", when, features={"spend_365d": float(i), "open_cases": None}))
        log.log(record("T1", when, features={}))  # no features: JSON "{}"
    frame = pd.DataFrame({"customer_id": ["B1", "B2"], "churn_probability": [0.5, 0.6]})
    frame = frame.assign(
        repurchase_probability=0.5, action="no_action", channel="none", expected_value=0.0
    )
    features = pd.DataFrame({"tenure_days": [10.0, np.nan], "spend_365d": [np.inf, 2.0]})
    log_decision_frame(settings, frame, features, "batch", when, {})

    as_json = decision_features(read_decisions(settings))
    with_columns = read_decisions(settings, feature_columns=True)
    assert with_columns["feature_values"].eq(True).sum() == 152  # 150 served + 2 batch
    typed = decision_features(with_columns)

    def by_customer(frame: pd.DataFrame) -> pd.DataFrame:  # two reads may order rows apart
        return frame.sort_values("customer_id").reset_index(drop=True)

    pd.testing.assert_frame_equal(by_customer(typed), by_customer(as_json))
    only_typed = with_columns[with_columns["feature_values"].eq(True)]
    json_columns = [column for column in with_columns if not column.startswith("feature_values")]
    assert json_columns == list(read_decisions(settings).columns)
    pd.testing.assert_frame_equal(
        decision_features(only_typed), decision_features(only_typed[json_columns])
    )
    assert len(typed) == 156 and typed.set_index("customer_id").loc["C7", "spend_365d"] == 7.0
    assert math.isnan(typed.set_index("customer_id").loc["B1", "spend_365d"])


def test_the_writer_hands_the_gil_over_between_slices(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush is converted SLICE_RECORDS records at a time, the GIL released between slices
    (a worker's event loop waiting for it runs at once), in grouping and in the values."""
    import monitoring.logs as logs

    handovers: list[int] = []
    monkeypatch.setattr(logs, "_let_requests_run", lambda: handovers.append(1))
    when = datetime(2025, 3, 1, 12, tzinfo=UTC)
    records = [record(f"C{i}", when) for i in range(500)]
    with DecisionLogger(settings) as log:
        log._write(records)
    slices = math.ceil(500 / logs.SLICE_RECORDS)
    assert len(handovers) >= 2 * slices - 1
    assert log.stats.written == 500 and len(read_decisions(settings)) == 500
