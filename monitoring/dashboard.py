"""The KPI dashboard: one static HTML page for marketing and management, no server needed.

``omniretain monitor dashboard`` computes the KPIs omnichannel retailers steer by from the
warehouse, the feature snapshots scored by the champion, the campaign history and the latest
drift summary, and writes ``<monitoring_dir>/dashboard/index.html``: Plotly charts with
Plotly's JavaScript inlined once (the page works offline: no CDN at view time). The BentoML
service can serve the same file at ``/dashboard``.

Each KPI is a pure function of frames (testable on tiny data); :func:`collect_kpis` reads the
state and :func:`render_dashboard` turns the KPIs into HTML. A KPI whose data is missing is shown
as "no data" rather than breaking the page.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omniretain.settings import Settings

RETENTION_WINDOW_DAYS = 90
CART_RECOVERY_DAYS = 7
PROMOTER_FROM, DETRACTOR_UP_TO = 9, 6
RISK_BANDS = ((0.0, 0.3, "low"), (0.3, 0.6, "medium"), (0.6, 1.01, "high"))


# ---- pure KPI functions ----------------------------------------------------------------------
def month_ends(start: pd.Timestamp, end: pd.Timestamp) -> list[pd.Timestamp]:
    """Month-end cutoffs between two times (inclusive of the last full month)."""
    return list(pd.date_range(start.normalize(), end.normalize(), freq="ME", tz=start.tz))


def retention_trend(
    purchases: pd.DataFrame, cutoffs: list[pd.Timestamp], window_days: int = RETENTION_WINDOW_DAYS
) -> pd.DataFrame:
    """Per cutoff: of customers who bought in the window before it, the share who bought again
    in the window after it, overall and by channel breadth before it (1 vs 3+ channels)."""
    window = pd.Timedelta(days=window_days)
    rows = []
    last = purchases["occurred_at"].max()
    for cutoff in cutoffs:
        if cutoff + window > last:
            break  # the window after is not observed yet
        before = purchases.loc[
            (purchases["occurred_at"] > cutoff - window) & (purchases["occurred_at"] <= cutoff)
        ]
        after = purchases.loc[
            (purchases["occurred_at"] > cutoff) & (purchases["occurred_at"] <= cutoff + window)
        ]
        if before.empty:
            continue
        breadth = before.groupby("customer_id")["channel"].nunique()
        came_back = breadth.index.isin(after["customer_id"].unique())
        single, omni = breadth.to_numpy() == 1, breadth.to_numpy() >= 3
        rows.append(
            {
                "cutoff": cutoff,
                "customers": len(breadth),
                "retention": float(came_back.mean()),
                "retention_single_channel": float(came_back[single].mean())
                if single.any()
                else math.nan,
                "retention_3plus_channels": float(came_back[omni].mean())
                if omni.any()
                else math.nan,
                "multichannel_share": float((breadth.to_numpy() >= 2).mean()),
            }
        )
    return pd.DataFrame(rows)


def channel_transition_rate(purchases: pd.DataFrame) -> float:
    """Share of a customer's consecutive purchases made on a different channel than the last."""
    ordered = purchases.sort_values(["customer_id", "occurred_at"])
    previous_channel = ordered.groupby("customer_id")["channel"].shift()
    has_previous = previous_channel.notna()
    if not has_previous.any():
        return math.nan
    return float((ordered["channel"][has_previous] != previous_channel[has_previous]).mean())


def service_kpis(contacts: pd.DataFrame) -> dict[str, float]:
    """Repeat-contact rate (cases needing 2+ contacts) and mean hours to resolution."""
    if contacts.empty:
        return {"repeat_contact_rate": math.nan, "resolution_hours": math.nan, "cases": 0}
    cases = contacts.groupby("case_id").agg(
        contacts=("occurred_at", "size"),
        opened=("occurred_at", "min"),
        resolved_at=("resolved_at", "min"),
    )
    resolved = cases["resolved_at"].notna()
    hours = (cases.loc[resolved, "resolved_at"] - cases.loc[resolved, "opened"]).dt.total_seconds()
    return {
        "repeat_contact_rate": float((cases["contacts"] > 1).mean()),
        "resolution_hours": float(hours.mean() / 3600) if resolved.any() else math.nan,
        "cases": len(cases),
    }


def nps(scores: pd.Series) -> float:
    """Net promoter score: % promoters (9-10) minus % detractors (0-6)."""
    if scores.empty:
        return math.nan
    return float(100 * ((scores >= PROMOTER_FROM).mean() - (scores <= DETRACTOR_UP_TO).mean()))


def survey_trend(surveys: pd.DataFrame) -> pd.DataFrame:
    """NPS and mean CES per month."""
    if surveys.empty:
        return pd.DataFrame(columns=["month", "nps", "ces"])
    frame = surveys.assign(month=surveys["occurred_at"].dt.strftime("%Y-%m"))
    rows = []
    for month, group in frame.groupby("month"):
        nps_scores = group.loc[group["survey_type"] == "nps", "score"]
        ces_scores = group.loc[group["survey_type"] == "ces", "score"]
        rows.append(
            {
                "month": month,
                "nps": nps(nps_scores),
                "ces": float(ces_scores.mean()) if len(ces_scores) else math.nan,
            }
        )
    return pd.DataFrame(rows)


def cart_recovery_rate(
    abandoned: pd.DataFrame, purchases: pd.DataFrame, days: int = CART_RECOVERY_DAYS
) -> float:
    """Share of abandoned carts followed by a purchase of the same customer within ``days``."""
    if abandoned.empty:
        return math.nan
    carts = abandoned[["customer_id", "occurred_at"]].reset_index(drop=True)
    carts["cart"] = np.arange(len(carts))
    joined = carts.merge(
        purchases[["customer_id", "occurred_at"]], on="customer_id", suffixes=("", "_buy")
    )
    recovered = joined.loc[
        (joined["occurred_at_buy"] > joined["occurred_at"])
        & (joined["occurred_at_buy"] <= joined["occurred_at"] + pd.Timedelta(days=days)),
        "cart",
    ].nunique()
    return recovered / len(carts)


def risk_band_of(scores: pd.Series) -> pd.Series:
    bands = pd.Series("low", index=scores.index)
    for low, high, name in RISK_BANDS:
        bands[(scores >= low) & (scores < high)] = name
    return bands


def clv_by_segment(scored: pd.DataFrame) -> pd.DataFrame:
    """Mean trailing 12-month value by segment (channels used in 90 days x risk band)."""
    frame = scored.assign(
        breadth=np.where(
            scored["channel_breadth_90d"] >= 3,
            "3+ channels",
            np.where(scored["channel_breadth_90d"] >= 2, "2 channels", "1 channel"),
        ),
        risk=risk_band_of(scored["churn_probability"]),
    )
    return (
        frame.groupby(["breadth", "risk"])
        .agg(customers=("customer_id", "size"), value=("spend_365d", "mean"))
        .reset_index()
    )


# ---- reading the state -----------------------------------------------------------------------
@dataclass
class Kpis:
    """Everything the page shows; each frame may be empty (shown as "no data")."""

    generated_at: datetime
    headline: dict[str, float]
    retention: pd.DataFrame
    risk_scores: pd.Series
    risk_trend: pd.DataFrame
    clv: pd.DataFrame
    surveys: pd.DataFrame
    campaigns: pd.DataFrame
    drift: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)


def _warehouse_frames(settings: Settings) -> dict[str, pd.DataFrame]:
    import duckdb

    queries = {
        "purchases": "SELECT customer_id, occurred_at, channel, amount FROM purchases "
        "WHERE customer_id IS NOT NULL AND NOT coalesce(is_return, false)",
        "contacts": "SELECT case_id, occurred_at, "
        "CASE WHEN resolved THEN occurred_at END AS resolved_at FROM contacts",
        "surveys": "SELECT occurred_at, survey_type, score FROM surveys",
        "abandoned": "SELECT customer_id, occurred_at FROM web_events "
        "WHERE event_type = 'cart_abandoned' AND customer_id IS NOT NULL",
    }
    frames: dict[str, pd.DataFrame] = {}
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        tables = {row[0] for row in con.execute("SHOW TABLES").fetchall()}
        for name, query in queries.items():
            source = query.split(" FROM ")[1].split()[0]
            frame = con.execute(query).df() if source in tables else pd.DataFrame()
            for column in ("occurred_at", "resolved_at"):
                if column in frame.columns:
                    frame[column] = pd.to_datetime(frame[column], utc=True)
            frames[name] = frame
    return frames


def scored_snapshots(settings: Settings) -> pd.DataFrame:
    """Every feature snapshot of purchasing customers scored by the churn champion."""
    from monitoring.drift import current_features_path, scored_population
    from training.registry import load_champion

    path = current_features_path(settings)
    champion = load_champion(settings, "churn")
    frame = scored_population(pd.read_parquet(path))
    matrix = frame[champion.model.feature_names].to_numpy(dtype=np.float64)
    frame["churn_probability"] = champion.model.predict_proba(matrix)[:, 1]
    return frame


def latest_drift(settings: Settings) -> dict[str, Any] | None:
    path = settings.monitoring_dir / "drift" / "latest" / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def collect_kpis(settings: Settings) -> Kpis:
    """Read the state and compute every KPI; what cannot be computed becomes a note."""
    from monitoring.outcomes import campaign_results, read_warehouse_outcomes, send_outcomes

    notes: list[str] = []
    if not settings.warehouse_path.exists():
        raise FileNotFoundError(
            f"no warehouse at {settings.warehouse_path}: run `omniretain ingest` first"
        )
    frames = _warehouse_frames(settings)
    purchases = frames["purchases"]
    retention = pd.DataFrame()
    if not purchases.empty:
        cutoffs = month_ends(purchases["occurred_at"].min(), purchases["occurred_at"].max())
        retention = retention_trend(purchases, cutoffs)
    service = service_kpis(frames["contacts"])
    surveys = survey_trend(frames["surveys"])
    headline: dict[str, float] = {
        "customers": float(purchases["customer_id"].nunique()) if not purchases.empty else 0.0,
        "cross_channel_transition_rate": channel_transition_rate(purchases)
        if not purchases.empty
        else math.nan,
        "repeat_contact_rate": service["repeat_contact_rate"],
        "resolution_hours": service["resolution_hours"],
        "cart_recovery_rate": cart_recovery_rate(frames["abandoned"], purchases)
        if not purchases.empty
        else math.nan,
        "nps": nps(frames["surveys"].loc[frames["surveys"]["survey_type"] == "nps", "score"])
        if not frames["surveys"].empty
        else math.nan,
        "ces": float(
            frames["surveys"].loc[frames["surveys"]["survey_type"] == "ces", "score"].mean()
        )
        if not frames["surveys"].empty
        else math.nan,
    }
    if not retention.empty:
        last = retention.iloc[-1]
        headline |= {
            "retention": float(last["retention"]),
            "retention_3plus_channels": float(last["retention_3plus_channels"]),
            "retention_single_channel": float(last["retention_single_channel"]),
            "multichannel_share": float(last["multichannel_share"]),
        }

    risk_scores, risk_trend, clv = pd.Series(dtype=float), pd.DataFrame(), pd.DataFrame()
    try:
        scored = scored_snapshots(settings)
        newest = scored.loc[scored["event_timestamp"] == scored["event_timestamp"].max()]
        risk_scores = newest["churn_probability"]
        risk_trend = (
            scored.groupby("event_timestamp")["churn_probability"]
            .agg(mean="mean", high_share=lambda s: float((s >= RISK_BANDS[2][0]).mean()))
            .reset_index()
        )
        clv = clv_by_segment(newest)
        headline["high_risk_share"] = float((risk_scores >= RISK_BANDS[2][0]).mean())
    except Exception as error:  # noqa: BLE001 - a missing model must not hide the other KPIs
        notes.append(f"churn risk not shown: {type(error).__name__}: {error}")

    campaigns = pd.DataFrame()
    sales, history, data_end = read_warehouse_outcomes(settings)
    if data_end is not None and not history.empty:
        sends = send_outcomes(history, sales, settings.monitoring.outcome_window_days, data_end)
        campaigns = campaign_results(sends)
        if not campaigns.empty:
            headline["campaign_incremental_revenue"] = float(campaigns["incremental_revenue"].sum())
    else:
        notes.append("no campaign history: campaign results not shown")
    drift = latest_drift(settings)
    if drift is None:
        notes.append("no drift report yet: run `omniretain monitor drift`")
    return Kpis(
        generated_at=datetime.now(UTC),
        headline=headline,
        retention=retention,
        risk_scores=risk_scores,
        risk_trend=risk_trend,
        clv=clv,
        surveys=surveys,
        campaigns=campaigns,
        drift=drift,
        notes=notes,
    )


# ---- rendering -------------------------------------------------------------------------------
def _figures(kpis: Kpis) -> list[tuple[str, Any]]:
    """(title, plotly figure) for every chart that has data."""
    import plotly.graph_objects as go

    charts: list[tuple[str, Any]] = []
    layout = {
        "height": 320,
        "margin": {"l": 50, "r": 20, "t": 30, "b": 40},
        "template": "plotly_white",
    }
    if not kpis.retention.empty:
        r = kpis.retention
        figure = go.Figure(
            [
                go.Scatter(x=r["cutoff"], y=r["retention"], name="all customers"),
                go.Scatter(x=r["cutoff"], y=r["retention_3plus_channels"], name="3+ channels"),
                go.Scatter(x=r["cutoff"], y=r["retention_single_channel"], name="single channel"),
            ],
            layout={**layout, "yaxis": {"tickformat": ".0%"}},
        )
        charts.append(("90-day retention: omnichannel vs single channel", figure))
        figure = go.Figure(
            [go.Bar(x=r["cutoff"], y=r["multichannel_share"], name="2+ channels")],
            layout={**layout, "yaxis": {"tickformat": ".0%"}},
        )
        charts.append(("Share of multichannel customers (last 90 days)", figure))
    if not kpis.risk_scores.empty:
        figure = go.Figure(
            [go.Histogram(x=kpis.risk_scores, nbinsx=20, name="customers")],
            layout={**layout, "xaxis": {"title": "churn probability"}},
        )
        charts.append(("Churn-risk distribution (latest snapshot)", figure))
        t = kpis.risk_trend
        figure = go.Figure(
            [
                go.Scatter(x=t["event_timestamp"], y=t["mean"], name="mean churn probability"),
                go.Scatter(x=t["event_timestamp"], y=t["high_share"], name="share high risk"),
            ],
            layout={**layout, "yaxis": {"tickformat": ".0%"}},
        )
        charts.append(("Churn-risk trend", figure))
    if not kpis.clv.empty:
        figure = go.Figure(
            [
                go.Bar(x=group["breadth"], y=group["value"], name=f"{risk} risk")
                for risk, group in kpis.clv.groupby("risk")
            ],
            layout={**layout, "barmode": "group", "yaxis": {"title": "12-month value"}},
        )
        charts.append(("Customer value by segment (channels x risk band)", figure))
    if not kpis.surveys.empty:
        s = kpis.surveys
        figure = go.Figure(
            [
                go.Scatter(x=s["month"], y=s["nps"], name="NPS"),
                go.Scatter(x=s["month"], y=s["ces"], name="CES (mean)", yaxis="y2"),
            ],
            layout={**layout, "yaxis2": {"overlaying": "y", "side": "right"}},
        )
        charts.append(("NPS and customer effort score", figure))
    if not kpis.campaigns.empty:
        c = kpis.campaigns
        labels = c["action"] + " / " + c["channel"]
        figure = go.Figure(
            [
                go.Bar(
                    x=labels,
                    y=c["incremental_revenue"],
                    name="incremental revenue vs control",
                    error_y={
                        "type": "data",
                        "array": (c["revenue_uplift_high"] - c["revenue_uplift"]) * c["treated"],
                    },
                )
            ],
            layout=layout,
        )
        charts.append(("Campaign incremental revenue vs control (95 % CI)", figure))
    return charts


def _format(name: str, value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "no data"
    if name in ("customers", "campaign_incremental_revenue", "nps"):
        return f"{value:,.0f}"
    if name in ("resolution_hours", "ces"):
        return f"{value:.1f}"
    return f"{value:.1%}"


TILE_LABELS = {
    "retention": "90-day retention",
    "retention_3plus_channels": "retention, 3+ channels",
    "retention_single_channel": "retention, single channel",
    "multichannel_share": "multichannel customers",
    "high_risk_share": "customers at high churn risk",
    "cross_channel_transition_rate": "cross-channel transition rate",
    "repeat_contact_rate": "repeat-contact rate",
    "resolution_hours": "hours to resolution",
    "nps": "NPS",
    "ces": "CES (1-7, lower is easier)",
    "cart_recovery_rate": "abandoned-cart recovery (7 days)",
    "campaign_incremental_revenue": "campaign incremental revenue",
    "customers": "buying customers",
}

PAGE_SCRIPT = """
<script>
window.__dashboardErrors = [];
window.addEventListener('error', function (e) {
  window.__dashboardErrors.push(String(e.message));
});
window.addEventListener('load', function () {
  var plots = document.querySelectorAll('.js-plotly-plot');
  var drawn = 0;
  plots.forEach(function (p) {
    var points = p.querySelectorAll('.main-svg .trace, .main-svg .point, .main-svg path.js-line');
    if (p.data && p.data.length && points.length) { drawn += 1; }
  });
  document.body.setAttribute('data-charts', String(plots.length));
  document.body.setAttribute('data-charts-drawn', String(drawn));
  document.body.setAttribute('data-errors', JSON.stringify(window.__dashboardErrors));
});
</script>
"""


def render_dashboard(kpis: Kpis) -> str:
    """The whole page as one HTML string (Plotly's JS inlined once, before the first chart)."""
    charts = _figures(kpis)
    tiles = "".join(
        f'<div class="tile"><div class="value">{html.escape(_format(k, v))}</div>'
        f'<div class="label">{html.escape(TILE_LABELS.get(k, k))}</div></div>'
        for k, v in kpis.headline.items()
        if k in TILE_LABELS
    )
    drift = kpis.drift
    if drift is None:
        drift_html = '<p class="warn">No drift report yet.</p>'
    else:
        verdict = "DRIFT" if drift.get("drift_detected") else "no drift"
        css = "bad" if drift.get("drift_detected") else "good"
        drifted = [c["column"] for c in drift.get("columns", []) if c.get("drifted")]
        drift_html = (
            f'<p class="{css}" id="drift-status"><b>{verdict}</b>: {len(drifted)}/'
            f"{len(drift.get('columns', []))} columns drifted (share "
            f"{drift.get('share_drifted', 0):.2f}, threshold {drift.get('threshold', 0):.2f}); "
            f"prediction drift: {drift.get('prediction_drifted')}; report of "
            f"{html.escape(str(drift.get('generated_at', '')))}</p>"
            f'<p class="small">{html.escape(", ".join(drifted[:15]))}</p>'
        )
        excluded = drift.get("columns_excluded") or []
        if excluded:
            reasons = ", ".join(sorted({str(c.get("excluded")) for c in excluded}))
            moved = sum(bool(c.get("drifted")) for c in excluded)
            drift_html += (
                f'<p class="small">excluded from the verdict ({html.escape(reasons)}): '
                f"{len(excluded)} columns that move with the calendar, {moved} of them moved</p>"
            )
    sections = []
    for index, (title, figure) in enumerate(charts):
        body = figure.to_html(
            full_html=False,
            include_plotlyjs="inline" if index == 0 else False,
            config={"displaylogo": False, "responsive": True},
        )
        sections.append(f'<section class="chart"><h2>{html.escape(title)}</h2>{body}</section>')
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in kpis.notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>omniretain KPI dashboard</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }}
.tiles {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; }}
.tile {{ background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 10px; }}
.tile .value {{ font-size: 1.5em; font-weight: 600; }}
.tile .label {{ color: #666; font-size: .85em; }}
.charts {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr));
  gap: 14px; }}
.chart {{ background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; }}
h2 {{ font-size: 1em; margin: 4px 8px; }} .good {{ color: #1a7f37; }} .bad {{ color: #c62828; }}
.small {{ font-size: .8em; color: #666; }}
</style>{PAGE_SCRIPT}</head>
<body>
<h1>omniretain: retention KPIs</h1>
<p class="small">generated {kpis.generated_at:%Y-%m-%d %H:%M} UTC</p>
<div class="tiles">{tiles}</div>
<h2>Model drift</h2>{drift_html}
<div class="charts">{"".join(sections)}</div>
<ul class="small">{notes}</ul>
</body></html>
"""


def dashboard_path(settings: Settings) -> Path:
    return settings.monitoring_dir / "dashboard" / "index.html"


@dataclass
class DashboardReport:
    path: Path
    charts: int
    headline: dict[str, float]
    notes: list[str]

    def render(self) -> str:
        lines = [f"{TILE_LABELS.get(k, k)}: {_format(k, v)}" for k, v in self.headline.items()]
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"{self.charts} charts -> {self.path} (open it in a browser)")
        return "\n".join(lines)


def write_dashboard(settings: Settings) -> DashboardReport:
    """Compute the KPIs and write the page atomically."""
    kpis = collect_kpis(settings)
    page = render_dashboard(kpis)
    path = dashboard_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".html.tmp")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(path)
    return DashboardReport(path, page.count('class="chart"'), kpis.headline, kpis.notes)
