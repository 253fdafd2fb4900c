"""The real CDNOW sample through import-transactions -> ingest -> build-features -> Feast.

Expected figures are computed here from the raw file with plain pandas (and one is the published
holdout count of Fader, Hardie & Lee), not by the code under test.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from features.build import FEATURES_FILE_NAME, build_features, compute_features
from features.ingest import ingest
from features.transactions import TransactionColumns, import_transaction_log
from omniretain.settings import Settings, load_settings

CDNOW = Path(__file__).resolve().parents[3] / "shared" / "data" / "cdnow" / "CDNOW_sample.txt"
CALIBRATION_END = datetime(1997, 10, 1, tzinfo=UTC)
HOLDOUT_END = datetime(1998, 7, 1, tzinfo=UTC)
# The sample has an extra leading column (the master file's customer id), no header.
SAMPLE_COLUMNS = TransactionColumns(
    customer="1", date="3", amount="5", quantity="4", date_format="%Y%m%d", header=False
)

pytestmark = pytest.mark.skipif(not CDNOW.exists(), reason=f"{CDNOW} not present")


@pytest.fixture(scope="module")
def occasions() -> pd.DataFrame:
    """Independent reading: one row per (customer, day) with the day's spend."""
    raw = pd.read_csv(
        CDNOW, sep=r"\s+", header=None, names=["master", "sample", "day", "cds", "dollars"]
    )
    raw["day"] = pd.to_datetime(raw["day"].astype(str), format="%Y%m%d")
    return raw.groupby(["master", "day"], as_index=False)["dollars"].sum()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, object, object]:
    state = tmp_path_factory.mktemp("cdnow_state")
    settings = load_settings(state_dir=state)
    settings.ensure_dirs()
    imported = import_transaction_log(settings, CDNOW, SAMPLE_COLUMNS)
    ingest(settings, progress=False, now=datetime(2026, 1, 1, tzinfo=UTC))
    report = build_features(settings, progress=False, as_of=date(1997, 10, 1))
    return settings, imported, report


def test_import_merges_same_day_rows_into_occasions(built, occasions) -> None:
    _, imported, _ = built
    assert imported.rows_read == 6_919
    assert imported.customers == 2_357
    assert imported.occasions_written == len(occasions)
    assert imported.rows_merged == 6_919 - len(occasions)
    assert imported.rows_unparsed == 0


def test_calibration_features_count_customers_and_repeats(built, occasions) -> None:
    settings, _, report = built
    assert report.cutoffs[-1] == CALIBRATION_END
    frame = pd.read_parquet(settings.features_dir / FEATURES_FILE_NAME)
    latest = frame[frame["event_timestamp"] == CALIBRATION_END]
    assert latest["customer_id"].nunique() == 2_357
    calibration = occasions[occasions["day"] < "1997-10-01"]
    expected_repeats = len(calibration) - calibration["master"].nunique()
    assert int((latest["purchases_total"] - 1).sum()) == expected_repeats
    assert int((latest["purchases_total"] > 1).sum()) == int(
        (calibration.groupby("master").size() > 1).sum()
    )
    np.testing.assert_allclose(
        latest["historic_clv"].sum(), calibration["dollars"].sum(), rtol=1e-9
    )
    assert frame["event_timestamp"].max() == CALIBRATION_END  # nothing after the calibration


def test_feast_serves_the_calibration_snapshot(built) -> None:
    from features.store import OnlineFeatureReader

    settings, _, report = built
    assert report.materialized["customers"] == 2_357
    frame = pd.read_parquet(settings.features_dir / FEATURES_FILE_NAME)
    latest = frame[frame["event_timestamp"] == CALIBRATION_END].set_index("customer_id")
    some = list(latest.index[:5])
    rows = OnlineFeatureReader(settings).get(some)
    for customer, row in zip(some, rows, strict=True):
        assert row is not None
        assert row["purchases_total"] == latest.loc[customer, "purchases_total"]


def test_holdout_repeats_match_the_published_count(built) -> None:
    settings, _, _ = built
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        frame = compute_features(con, [CALIBRATION_END, HOLDOUT_END])
    totals = frame.pivot(index="customer_id", columns="event_timestamp", values="purchases_total")
    holdout = totals[HOLDOUT_END] - totals[CALIBRATION_END]
    assert int(holdout.sum()) == 1_882  # Fader, Hardie & Lee (2005): 1,882 repeat transactions
    assert round(float((holdout > 0).mean()), 3) == 0.290  # the README's base rate


def test_reimport_and_reingest_add_nothing(built) -> None:
    settings, _, _ = built
    import_transaction_log(settings, CDNOW, SAMPLE_COLUMNS)
    again = ingest(settings, progress=False, now=datetime(2026, 1, 1, tzinfo=UTC))
    assert again.feeds["transactions"].files_skipped == 1
    assert again.feeds["transactions"].accepted == 0
