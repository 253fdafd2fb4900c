"""Pure parts of the retraining pipeline: fingerprint, schedule, report, lock."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from omniretain.settings import load_settings
from training.pipeline import (
    PipelineReport,
    StepResult,
    _exclusive,
    crontab_weekdays,
    next_runs,
    pipeline_dir,
    pipeline_fingerprint,
)


def test_fingerprint_ignores_file_order_but_not_content_or_settings() -> None:
    settings = load_settings()
    base = pipeline_fingerprint(["a", "b"], settings)
    assert pipeline_fingerprint(["b", "a"], settings) == base
    assert pipeline_fingerprint(["a", "b", "c"], settings) != base
    changed = settings.model_copy(deep=True)
    changed.training.lightgbm = {**changed.training.lightgbm, "num_leaves": 7}
    assert pipeline_fingerprint(["a", "b"], changed) != base
    serving_only = settings.model_copy(deep=True)
    serving_only.serving.port = 4000  # does not shape a model: no retraining
    assert pipeline_fingerprint(["a", "b"], serving_only) == base


def test_next_runs_of_the_weekly_schedule() -> None:
    after = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # a Monday, after 03:00
    runs = next_runs("0 3 * * 1", "UTC", 2, after)
    assert [run.isoformat() for run in runs] == [
        "2026-11-30T03:00:00+00:00",
        "2026-12-07T03:00:00+00:00",
    ]


def test_next_runs_every_half_hour_in_another_timezone() -> None:
    after = datetime(2026, 6, 1, 10, 10, tzinfo=UTC)
    runs = next_runs("*/30 * * * *", "Europe/London", 3, after)
    assert [run.astimezone(UTC).strftime("%H:%M") for run in runs] == ["10:30", "11:00", "11:30"]


@pytest.mark.parametrize("expression", ["0 3 * *", "61 * * * *", "every monday"])
def test_an_invalid_cron_is_a_clear_error(expression: str) -> None:
    with pytest.raises(ValueError, match="is not a crontab expression"):
        next_runs(expression, "UTC", 1, datetime(2026, 1, 1, tzinfo=UTC))


def test_report_ok_and_models() -> None:
    report = PipelineReport(reason="manual", status="nothing new", started_at="t")
    assert report.ok and report.models == {}
    failed = PipelineReport(
        reason="drift",
        status="failed",
        started_at="t",
        steps=[StepResult("train", "failed", 1.0, "ValueError: x")],
        error="step 'train' failed",
    )
    assert not failed.ok
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(failed.render())
    text = console.export_text()
    assert "pipeline (drift): failed" in text and "step 'train' failed" in text


def test_the_lock_admits_one_holder(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    pipeline_dir(settings).mkdir(parents=True)
    with _exclusive(settings) as first:
        with _exclusive(settings) as second:
            assert first and not second
    with _exclusive(settings) as again:
        assert again


@pytest.mark.parametrize(
    ("field", "names"),
    [
        ("1", "mon"),
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("0,6", "sun,sat"),
        ("*/2", "sun,tue,thu,sat"),
        ("0-7", "*"),
        ("mon-fri", "mon-fri"),
        ("*", "*"),
    ],
)
def test_crontab_weekdays_follow_crontab_numbering(field: str, names: str) -> None:
    assert crontab_weekdays(field) == names


def test_weekday_numbers_mean_what_crontab_means() -> None:
    after = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # a Monday
    assert next_runs("0 9 * * 0", "UTC", 1, after)[0].strftime("%A") == "Sunday"
    assert next_runs("0 9 * * 5", "UTC", 1, after)[0].strftime("%A") == "Friday"
