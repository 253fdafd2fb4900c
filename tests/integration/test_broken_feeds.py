"""The broken-feed corpus (``tests/data/broken_feeds``) through the real ingest (issue 8).

``rows/``: files whose header is right but whose rows are not (latin-1 bytes, truncated lines,
wrong types, dates in the future, negative amounts, duplicated rows, an empty file). Ingest keeps
every valid row, quarantines each bad one with a reason naming the problem, and reports counts
per feed. ``files/``: files that are not their folder's feed at all (a letter, an image, a file
missing required columns, another feed's export under this feed's name): a clear error naming the
file and what is missing, and nothing is written.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from features.ingest import IngestReport, NotAFeedError, ingest
from omniretain.settings import Settings, load_settings

CORPUS = Path(__file__).resolve().parents[1] / "data" / "broken_feeds"
NOW = datetime(2025, 6, 1, tzinfo=UTC)

# file -> (accepted keys, quarantined line numbers with words their reason must hold)
EXPECTED_ROWS: dict[str, tuple[set[str], dict[int, str]]] = {
    "pos_sales/latin1_bytes.csv": ({"B01"}, {2: "encoding", 3: "encoding"}),
    "pos_sales/truncated_lines.csv": ({"B11"}, {2: "missing columns", 3: "is_return"}),
    "pos_sales/wrong_types.csv": (
        {"B21"},
        {2: "purchased_at", 3: "amount: 'twelve' is not a number", 4: "items"},
    ),
    "pos_sales/future_dates.csv": ({"B31"}, {2: "in the future"}),
    "pos_sales/negative_amounts.csv": ({"B41"}, {2: "amount: -40 below minimum 0"}),
    "pos_sales/duplicated_rows.csv": ({"B51", "B52"}, {}),
    "sms_events/truncated_and_valid.csv": ({"M1"}, {2: "missing columns"}),
}


def fresh_settings(tmp_path: Path) -> Settings:
    settings = load_settings(state_dir=tmp_path / "state")
    settings.ensure_dirs()
    return settings


@pytest.fixture(scope="module")
def corpus_ingest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, IngestReport]:
    settings = fresh_settings(tmp_path_factory.mktemp("broken_rows"))
    shutil.copytree(CORPUS / "rows", settings.raw_dir, dirs_exist_ok=True)
    return settings, ingest(settings, progress=False, now=NOW)


def test_valid_rows_are_kept_and_each_bad_row_is_quarantined_with_its_reason(
    corpus_ingest: tuple[Settings, IngestReport],
) -> None:
    settings, _ = corpus_ingest
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        accepted: dict[str, set[str]] = {}
        for file in EXPECTED_ROWS:
            feed = file.split("/")[0]
            key = "transaction_id" if feed == "pos_sales" else "event_id"
            rows = con.execute(f"SELECT {key} FROM raw_{feed} WHERE _file = ?", [file])
            accepted[file] = {value for (value,) in rows.fetchall()}
        quarantined = {
            (file, line): reason
            for file, line, reason in con.execute(
                "SELECT file, line, reason FROM quarantine"
            ).fetchall()
        }
    for file, (keys, bad_lines) in EXPECTED_ROWS.items():
        assert accepted[file] == keys, (file, accepted[file])
        for line, words in bad_lines.items():
            assert words in quarantined.get((file, line), ""), (file, line, quarantined)
    expected_quarantine = sum(len(lines) for _, lines in EXPECTED_ROWS.values())
    assert len(quarantined) == expected_quarantine, quarantined


def test_the_report_counts_per_feed_and_names_the_empty_file(
    corpus_ingest: tuple[Settings, IngestReport],
) -> None:
    _, report = corpus_ingest
    pos, sms = report.feeds["pos_sales"], report.feeds["sms_events"]
    assert (pos.files_ingested, pos.accepted, pos.quarantined, pos.duplicates) == (6, 7, 9, 1)
    assert (sms.files_ingested, sms.accepted, sms.quarantined) == (1, 1, 1)
    assert report.empty_files == ["pos_sales/empty.csv"]
    assert report.identity.customers == 8  # every accepted record with a loyalty card or phone


def test_ingesting_the_corpus_again_changes_nothing(
    corpus_ingest: tuple[Settings, IngestReport],
) -> None:
    settings, _ = corpus_ingest
    again = ingest(settings, progress=False, now=NOW)
    assert sum(feed.files_ingested for feed in again.feeds.values()) == 0
    assert again.feeds["pos_sales"].files_skipped == 6


@pytest.mark.parametrize(
    ("file", "words"),
    [
        ("pos_sales/letter.csv", "missing required column(s) transaction_id"),
        ("pos_sales/image.csv", "missing required column(s) transaction_id"),
        ("web_orders/missing_columns.csv", "missing required column(s) channel, items"),
        ("web_orders/pos_sales_file_named_as_orders.csv", "not a 'web_orders' file"),
    ],
)
def test_a_file_that_is_not_its_feed_is_a_clear_error_and_nothing_is_written(
    tmp_path: Path, file: str, words: str
) -> None:
    settings = fresh_settings(tmp_path)
    valid = settings.raw_dir / "pos_sales" / "valid.csv"
    valid.parent.mkdir(parents=True)
    shutil.copy(CORPUS / "rows" / "pos_sales" / "duplicated_rows.csv", valid)
    target = settings.raw_dir / file
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(CORPUS / "files" / file, target)
    with pytest.raises(NotAFeedError) as error:
        ingest(settings, progress=False, now=NOW)
    assert words in str(error.value) and target.name in str(error.value)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM ingested_files").fetchone()[0] == 0
