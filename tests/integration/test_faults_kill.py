"""kill -9 during ingest, feature build, materialize and training, through the real CLI.

Each test starts an ``omniretain`` step in a subprocess on a small simulated retailer, waits for a
sign that the step is part-way (feeds ingested, the features written, the online store's write
transaction open, a model version registered), sends SIGKILL, and checks that:

- the previous good state is what a reader sees while the step is dead (the warehouse's last
  committed files, the online store's previous rows through the service's own reader, the
  champion aliases where they were, loadable by the service's loader);
- rerunning the step completes, and nothing is duplicated or lost: the warehouse matches a clean
  run's table counts, the online store holds exactly the latest snapshot of every customer, the
  champions form a complete set.

The tests of this module run in order on one state folder (each step needs the previous one).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from omniretain.settings import PROJECT_ROOT, Settings, load_settings

CUSTOMERS, MONTHS, SEED = 300, 8, 11
PARTIAL_MONTHS = ("2025-01", "2025-02", "2025-03", "2025-04", "2025-05")  # the first good ingest
EARLY_AS_OF = "2025-07-01"  # the previous good features (before the full build)
LABELS = {  # a short history: label windows and snapshots that still leave enough cutoffs
    "OMNIRETAIN_LABELS__CHURN_WINDOW_DAYS": "30",
    "OMNIRETAIN_LABELS__REPURCHASE_WINDOW_DAYS": "14",
    "OMNIRETAIN_LABELS__SNAPSHOT_EVERY_DAYS": "15",
    "OMNIRETAIN_LABELS__FIRST_SNAPSHOT_AFTER_DAYS": "60",
}
STEP_TIMEOUT_S = 1200  # a loaded 2-core machine trains in minutes


def cli_env(state_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIRETAIN_")}
    env.update(LABELS, OMNIRETAIN_STATE_DIR=str(state_dir), **extra)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def omniretain(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("omniretain")), *args]


def run_step(state_dir: Path, *args: str, **env: str) -> str:
    """Run a step to completion; its output (the test fails with it when the step fails)."""
    result = subprocess.run(
        omniretain(*args),
        cwd=PROJECT_ROOT,
        env=cli_env(state_dir, **env),
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{args} failed:\n{output[-4000:]}"
    return output


def run_and_kill(
    state_dir: Path, args: tuple[str, ...], part_way: Callable[[str], bool], **env: str
) -> str:
    """Start a step, SIGKILL it (and its children) once ``part_way(output)`` holds.

    Fails when the step finishes before the sign shows: then nothing was tested.
    """
    log_path = state_dir / f"killed-{args[0]}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            omniretain(*args),
            cwd=PROJECT_ROOT,
            env=cli_env(state_dir, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + STEP_TIMEOUT_S
        try:
            while process.poll() is None and time.monotonic() < deadline:
                if part_way(log_path.read_text(errors="replace")):
                    os.killpg(process.pid, signal.SIGKILL)
                    break
                time.sleep(0.005)
        finally:
            if process.poll() is None and time.monotonic() >= deadline:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    output = log_path.read_text(errors="replace")
    assert process.returncode == -signal.SIGKILL, (
        f"{args} ended with {process.returncode} before it could be killed part-way:\n"
        f"{output[-3000:]}"
    )
    return output


@pytest.fixture(scope="module")
def raw_feeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("kill_raw")
    run_step(
        state, "simulate", "--customers", str(CUSTOMERS), "--months", str(MONTHS), "--seed", "11"
    )
    return state / "raw"


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder every test of this module works on, in order."""
    return tmp_path_factory.mktemp("kill_state")


def settings_of(state_dir: Path) -> Settings:
    return load_settings(state_dir=state_dir)


# ---- ingest ---------------------------------------------------------------------------------
def warehouse_counts(path: Path) -> dict[str, int]:
    """Row count of every table in the warehouse (read-only, as the service reads it)."""
    import duckdb

    with duckdb.connect(str(path), read_only=True) as con:
        tables = [
            row[0]
            for row in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'"
            ).fetchall()
        ]
        return {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


def partially_ingested_files_are_absent(path: Path) -> tuple[int, int]:
    """Every file is in ``ingested_files`` with all its accepted rows, or absent with none."""
    import duckdb

    from features.contract import FEEDS

    with duckdb.connect(str(path), read_only=True) as con:
        files = dict(con.execute("SELECT file, rows_accepted FROM ingested_files").fetchall())
        raw_rows: dict[str, int] = {}
        for feed in FEEDS:
            for name, count in con.execute(
                f"SELECT _file, count(*) FROM raw_{feed} GROUP BY _file"
            ).fetchall():
                raw_rows[name] = raw_rows.get(name, 0) + count
    assert set(raw_rows) <= set(files), set(raw_rows) - set(files)
    for name, accepted in files.items():
        assert raw_rows.get(name, 0) == accepted, (name, raw_rows.get(name), accepted)
    return len(files), sum(files.values())


def test_kill_during_ingest_keeps_committed_files_and_the_rerun_matches_a_clean_run(
    raw_feeds: Path, state_dir: Path, tmp_path: Path
) -> None:
    partial = tmp_path / "partial_raw"
    for path in raw_feeds.rglob("*"):
        if path.is_file() and any(month in path.name for month in PARTIAL_MONTHS):
            (partial / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, partial / path.parent.name / path.name)
    # The clean run has the same history without the kill (identity merges depend on it).
    clean = tmp_path / "clean"
    run_step(clean, "ingest", "--source", str(partial))
    run_step(clean, "ingest", "--source", str(raw_feeds))
    expected = warehouse_counts(settings_of(clean).warehouse_path)

    run_step(state_dir, "ingest", "--source", str(partial))
    warehouse = settings_of(state_dir).warehouse_path
    before = warehouse_counts(warehouse)

    def some_files_done(output: str) -> bool:  # tqdm per feed: "ingest:  25%|...| 3/12 [..."
        done = re.findall(r"ingest:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)", output)
        return bool(done) and 3 <= int(done[-1][0]) < int(done[-1][1])

    run_and_kill(state_dir, ("ingest", "--source", str(raw_feeds)), some_files_done)
    files, _ = partially_ingested_files_are_absent(warehouse)
    after_kill = warehouse_counts(warehouse)
    assert before["ingested_files"] < files < expected["ingested_files"]
    for table in ("customers", "identity_links", "purchases"):  # rebuilt only at the very end
        if table in before:
            assert after_kill[table] == before[table], table

    run_step(state_dir, "ingest", "--source", str(raw_feeds))
    partially_ingested_files_are_absent(warehouse)
    assert warehouse_counts(warehouse) == expected


# ---- feature build and materialize ----------------------------------------------------------
def online_rows(settings: Settings, ids: list[str]) -> pd.DataFrame:
    """The customers' online rows through the service's reader (a missing one: all NaN)."""
    from features.store import OnlineFeatureReader

    rows = OnlineFeatureReader(settings).get(ids)
    return pd.DataFrame([row or {} for row in rows], index=ids).sort_index(axis=1)


def assert_same_online_rows(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


def latest_snapshot(settings: Settings) -> pd.DataFrame:
    frame = pd.read_parquet(settings.features_dir / "customer_features.parquet")
    return frame[frame["event_timestamp"] == frame["event_timestamp"].max()].set_index(
        "customer_id"
    )


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_online_store_is_the_latest_snapshot(settings: Settings) -> None:
    """One online row per customer, equal to the parquet's latest snapshot, and nothing else."""
    from features.build import feature_specs

    frame = pd.read_parquet(settings.features_dir / "customer_features.parquet")
    assert not frame.duplicated(["customer_id", "event_timestamp"]).any()
    latest = latest_snapshot(settings)
    names = [spec.name for spec in feature_specs()]
    rows = online_rows(settings, sorted(latest.index))
    expected = latest.loc[sorted(latest.index), names].astype("float64")
    pd.testing.assert_frame_equal(rows[names], expected, check_names=False)
    with sqlite3.connect(settings.feast_dir / "online.db") as con:
        keys = con.execute(
            "SELECT count(DISTINCT entity_key) FROM omniretain_customer_features"
        ).fetchone()[0]
    assert keys == len(latest)


def test_kill_during_feature_build_and_during_materialize_keeps_the_last_good_online_store(
    state_dir: Path,
) -> None:
    settings = settings_of(state_dir)
    features = settings.features_dir / "customer_features.parquet"
    online = settings.feast_dir / "online.db"
    run_step(state_dir, "build-features", "--as-of", EARLY_AS_OF)  # the last good state
    good_features = file_digest(features)
    ids = sorted(latest_snapshot(settings).index)
    good_online = online_rows(settings, ids)
    assert good_online.notna().any(axis=1).sum() > 100

    # 1. Killed while computing or writing the features: the parquet is the old file or the
    #    new one whole (written to a temporary file, then renamed), the online store untouched.
    run_and_kill(state_dir, ("build-features",), lambda out: "compute:" in out)
    pd.read_parquet(features)  # readable: never half a file
    assert_same_online_rows(online_rows(settings, ids), good_online)

    # 2. Killed inside the online store's write transaction. The test holds a read transaction
    #    on the file (as a serving read would), so the load cannot commit: the kill lands
    #    exactly between its first write and its commit.
    reader = sqlite3.connect(online, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM omniretain_customer_features").fetchone()
    journal = online.with_name("online.db-journal")
    wal = online.with_name("online.db-wal")
    try:
        run_and_kill(
            state_dir,
            ("build-features",),
            lambda out: "feast_apply:" in out and (journal.exists() or wal.exists()),
        )
    finally:
        reader.execute("ROLLBACK")
        reader.close()
    assert file_digest(features) != good_features  # the new features were written...
    # ... but the dead load changed nothing served (SQLite rolled its journal back)
    assert_same_online_rows(online_rows(settings, ids), good_online)

    run_step(state_dir, "build-features")
    assert_online_store_is_the_latest_snapshot(settings)


# ---- training ---------------------------------------------------------------------------------
def served_versions(settings: Settings) -> dict[str, Any]:
    """The champions the service would load now (its own loader, through the model cache)."""
    from serving.service import load_model_set

    return load_model_set(settings).versions


def test_kill_during_training_leaves_the_champions_and_the_rerun_completes(
    state_dir: Path,
) -> None:
    from training.registry import HISTORY_TAG, MODEL_NAMES, _client, champion_versions

    settings = settings_of(state_dir)
    run_step(state_dir, "train")
    before = champion_versions(settings)
    assert {"churn", "repurchase"} <= set(before)
    served_before = served_versions(settings)

    # A negative margin promotes every challenger that passes the gate's sanity checks: without
    # "commit last" the aliases would move one by one while the run registers its models.
    promote_all = {"OMNIRETAIN_TRAINING__PROMOTION_MARGIN": "-1"}
    run_and_kill(
        state_dir,
        ("train",),
        lambda out: "Created version '2' of model 'omniretain-churn'" in out,
        MLFLOW_LOGGING_LEVEL="INFO",  # MLflow says when it registered a version
        **promote_all,
    )
    assert champion_versions(settings) == before
    assert served_versions(settings) == served_before

    run_step(state_dir, "train", **promote_all)
    after = champion_versions(settings)
    assert set(after) == set(before)
    client = _client(settings)
    for kind, version in after.items():  # each alias moved at most once, from where it was
        history = json.loads(client.get_registered_model(MODEL_NAMES[kind]).tags[HISTORY_TAG])
        assert history[-1] == version and len(history) == len(set(history)), history
        if version != before[kind]:
            assert history[-2:] == [before[kind], version], history
    assert served_versions(settings) == {**{k: None for k in MODEL_NAMES}, **after}
