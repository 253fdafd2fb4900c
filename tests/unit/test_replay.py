"""The replay day: latest with a closed churn window, never a cutoff the champion learnt from."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from monitoring.dashboard_route import parse_refresh
from monitoring.replay import ReplayError, replay_date

DATA_END = datetime(2025, 12, 31, 22, 15, tzinfo=UTC)
REFERENCE = datetime(2025, 8, 29, tzinfo=UTC)


def test_default_day_is_the_data_end_day_minus_the_window() -> None:
    day = replay_date(DATA_END, 90, REFERENCE)
    assert day == datetime(2025, 10, 2, tzinfo=UTC)
    assert (DATA_END - day).days >= 90  # the whole window is observed


def test_a_day_whose_window_is_still_open_is_refused() -> None:
    with pytest.raises(ReplayError, match="has not closed"):
        replay_date(DATA_END, 90, REFERENCE, datetime(2025, 10, 3, tzinfo=UTC))


def test_a_day_inside_training_is_refused() -> None:
    with pytest.raises(ReplayError, match="training labels"):
        replay_date(DATA_END, 90, REFERENCE, REFERENCE)
    assert replay_date(DATA_END, 90, REFERENCE, datetime(2025, 9, 1, tzinfo=UTC)).day == 1


def test_no_closed_day_after_training_is_refused() -> None:
    with pytest.raises(ReplayError, match="training labels"):
        replay_date(DATA_END, 90, datetime(2025, 11, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("text", "expected"), [("true", True), ("1", True), ("", False), (None, False)]
)
def test_refresh_parameter(text: str | None, expected: bool) -> None:
    assert parse_refresh(text) is expected


def test_refresh_parameter_names_itself_when_wrong() -> None:
    with pytest.raises(ValueError, match="refresh"):
        parse_refresh("sometimes")
