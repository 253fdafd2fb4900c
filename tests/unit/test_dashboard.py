"""KPI functions of the dashboard on tiny frames with known answers, and the page's HTML."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pandas as pd
import pytest

from monitoring.dashboard import (
    Kpis,
    cart_recovery_rate,
    channel_transition_rate,
    clv_by_segment,
    nps,
    render_dashboard,
    retention_trend,
    service_kpis,
    survey_trend,
)

T0 = pd.Timestamp("2025-01-01", tz="UTC")


def at(day: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(days=day)


def test_retention_splits_single_and_three_plus_channel_customers() -> None:
    purchases = pd.DataFrame(
        {
            "customer_id": ["A", "A", "A", "B", "C", "A", "Z"],
            "occurred_at": [at(10), at(20), at(30), at(40), at(50), at(100), at(200)],
            "channel": ["web", "store", "app", "web", "store", "web", "web"],
        }
    )
    trend = retention_trend(purchases, [at(60)], window_days=90)
    row = trend.iloc[0]
    # A (3 channels) came back, B and C (one channel each) did not.
    assert row["customers"] == 3 and row["retention"] == pytest.approx(1 / 3)
    assert row["retention_3plus_channels"] == 1.0 and row["retention_single_channel"] == 0.0
    assert row["multichannel_share"] == pytest.approx(1 / 3)


def test_retention_skips_cutoffs_whose_after_window_is_not_observed() -> None:
    purchases = pd.DataFrame(
        {"customer_id": ["A", "A"], "occurred_at": [at(1), at(50)], "channel": ["web", "web"]}
    )
    assert retention_trend(purchases, [at(10)], window_days=90).empty


def test_channel_transition_rate() -> None:
    purchases = pd.DataFrame(
        {
            "customer_id": ["A", "A", "A", "B", "B"],
            "occurred_at": [at(1), at(2), at(3), at(1), at(2)],
            "channel": ["web", "store", "store", "app", "app"],
        }
    )
    assert channel_transition_rate(purchases) == pytest.approx(1 / 3)


def test_service_kpis_repeat_contacts_and_resolution_time() -> None:
    contacts = pd.DataFrame(
        {
            "case_id": ["K1", "K1", "K2"],
            "occurred_at": [at(0), at(1), at(0)],
            "resolved_at": [pd.NaT, at(1), at(0)],
        }
    )
    kpis = service_kpis(contacts)
    assert kpis["repeat_contact_rate"] == 0.5 and kpis["resolution_hours"] == pytest.approx(12.0)


def test_nps_and_monthly_trend() -> None:
    assert nps(pd.Series([10, 9, 8, 3])) == pytest.approx(25.0)
    assert math.isnan(nps(pd.Series([], dtype=float)))
    surveys = pd.DataFrame(
        {
            "occurred_at": [at(1), at(2), at(40)],
            "survey_type": ["nps", "ces", "nps"],
            "score": [10.0, 3.0, 0.0],
        }
    )
    trend = survey_trend(surveys)
    assert trend["nps"].tolist() == [100.0, -100.0] and trend.loc[0, "ces"] == 3.0


def test_cart_recovery_within_seven_days() -> None:
    abandoned = pd.DataFrame({"customer_id": ["A", "B"], "occurred_at": [at(0), at(0)]})
    purchases = pd.DataFrame({"customer_id": ["A", "B"], "occurred_at": [at(2), at(9)]})
    assert cart_recovery_rate(abandoned, purchases) == 0.5


def test_clv_by_segment() -> None:
    scored = pd.DataFrame(
        {
            "customer_id": ["A", "B", "C"],
            "channel_breadth_90d": [1, 3, 3],
            "churn_probability": [0.1, 0.7, 0.8],
            "spend_365d": [100.0, 300.0, 500.0],
        }
    )
    table = clv_by_segment(scored).set_index(["breadth", "risk"])
    assert table.loc[("3+ channels", "high"), "value"] == 400.0
    assert table.loc[("1 channel", "low"), "customers"] == 1


def test_page_has_inlined_plotly_once_and_no_external_script() -> None:
    kpis = Kpis(
        generated_at=datetime.now(UTC),
        headline={"retention": 0.8, "nps": float("nan")},
        retention=pd.DataFrame(
            {
                "cutoff": [at(30), at(60)],
                "customers": [10, 12],
                "retention": [0.8, 0.7],
                "retention_single_channel": [0.6, 0.5],
                "retention_3plus_channels": [0.9, 0.95],
                "multichannel_share": [0.3, 0.35],
            }
        ),
        risk_scores=pd.Series(dtype=float),
        risk_trend=pd.DataFrame(),
        clv=pd.DataFrame(),
        surveys=pd.DataFrame(),
        campaigns=pd.DataFrame(),
        drift={"drift_detected": True, "columns": [], "share_drifted": 0.4, "threshold": 0.3},
        notes=["no model"],
    )
    page = render_dashboard(kpis)
    assert page.count('class="plotly-graph-div"') == 2 and "<script src=" not in page
    assert page.count("window.PlotlyConfig") == 1  # the library inlined once, not per chart
    assert "80.0%" in page and "no data" in page and "DRIFT" in page and "no model" in page
