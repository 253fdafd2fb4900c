"""``build_campaign`` end to end on real files: a DuckDB warehouse with ``identity_links``, the
offline feature parquet, two small real LightGBM models; checks the export, the log and the
consent and budget rules on what was written."""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb
import numpy as np
import pandas as pd
import pytest

from monitoring.logs import read_decisions
from omniretain.settings import load_settings
from serving.campaign import CampaignError, CampaignRequest, build_campaign
from training.model import fit_calibrated_classifier

N = 300


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    settings = load_settings(state_dir=tmp_path_factory.mktemp("campaign_state"))
    settings.ensure_dirs()
    rng = np.random.default_rng(0)
    ids = [f"C{i:05d}" for i in range(N)]
    snapshot = pd.Timestamp("2025-06-01", tz="UTC")
    frame = pd.DataFrame(
        {
            "customer_id": ids,
            "event_timestamp": snapshot,
            "spend_365d": rng.gamma(2, 400, N),
            "days_since_last_purchase": rng.integers(0, 120, N).astype(float),
            "open_cases": rng.integers(0, 2, N).astype(float),
            "consent_email": (rng.random(N) < 0.7).astype(float),
            "consent_sms": (rng.random(N) < 0.5).astype(float),
            "consent_app": 0.0,
            "consent_call_center": 1.0,
        }
    )
    older = frame.assign(event_timestamp=snapshot - pd.Timedelta(days=30), spend_365d=1e6)
    pd.concat([older, frame]).to_parquet(
        settings.features_dir / "customer_features.parquet", index=False
    )
    links = pd.DataFrame(
        {
            "customer_id": ids * 2 + ids[:10],
            "id_type": ["email"] * N + ["phone"] * N + ["email"] * 10,
            "id_value": [f"{c.lower()}@old.example" for c in ids]
            + [f"+4477{i:08d}" for i in range(N)]
            + [f"{c.lower()}@new.example" for c in ids[:10]],
            "first_seen_at": [datetime(2024, 1, 1)] * (2 * N) + [datetime(2025, 1, 1)] * 10,
        }
    )
    with duckdb.connect(str(settings.warehouse_path)) as con:
        con.register("links", links)
        con.execute("CREATE TABLE identity_links AS SELECT * FROM links")
    names = ["spend_365d", "days_since_last_purchase", "open_cases"]
    X = frame[names].to_numpy()
    # churn rises with the days since the last purchase; most customers are still active
    # (bought within the 90 days that make a retention contact worth anything)
    churn_label = (X[:, 1] / 120 + rng.normal(0, 0.2, N) > 0.4).astype(int)
    models = [
        fit_calibrated_classifier(X[:200], y[:200], X[200:], y[200:], names, {"n_estimators": 20})
        for y in (churn_label, 1 - churn_label)
    ]
    return settings, frame, models


def test_campaign_export_and_log(state) -> None:
    settings, frame, (churn, repurchase) = state
    request = CampaignRequest("retention_discount", budget=120.0, control_share=0.2, seed=1)
    now = datetime(2025, 6, 2, tzinfo=UTC)
    report = build_campaign(settings, request, churn, repurchase, now=now)
    export = pd.read_csv(report.export_path)
    log = pd.read_parquet(report.log_path)

    assert report.treated == len(export) > 0
    assert len(export) * 6.0 <= 120.0  # retention_discount costs 6 per contact
    assert set(export.columns) == {
        "customer_id",
        "channel",
        "contact_address",
        "action",
        "expected_value",
    }
    assert (export["expected_value"] > 0).all()
    consents = frame.set_index("customer_id")
    for row in export.itertuples():
        assert consents.loc[row.customer_id, f"consent_{row.channel}"] == 1.0
        if row.channel == "email":
            newest = "new" if int(row.customer_id[1:]) < 10 else "old"
            assert row.contact_address == f"{row.customer_id.lower()}@{newest}.example"
        else:
            assert row.contact_address.startswith("+4477")
    assert set(log["group"]) == {"treatment", "control"}
    assert (log["group"] == "control").sum() == report.control > 0
    assert set(log.loc[log["group"] == "treatment", "customer_id"]) == set(export["customer_id"])
    assert log["campaign_id"].unique().tolist() == [report.campaign_id]
    index = (settings.state_dir / "campaigns" / "campaigns.jsonl").read_text().splitlines()
    assert report.campaign_id in index[-1]
    # every member is a served decision in the decision log, the control held out, no address
    decisions = read_decisions(settings).set_index("customer_id")
    assert set(decisions.index) == set(log["customer_id"])
    assert (decisions["source"] == "campaign").all()
    control = set(log.loc[log["group"] == "control", "customer_id"])
    assert set(decisions.index[decisions["is_control"]]) == control
    assert (decisions.loc[list(control), "action"] == "no_action").all()
    treated = decisions.loc[list(set(export["customer_id"]))]
    assert (treated["action"] == "retention_discount").all()
    assert not decisions.astype(str).apply(lambda c: c.str.contains("@|\\+4477")).any().any()


def test_channel_and_segment_restrict_the_audience(state, tmp_path) -> None:
    settings, frame, (churn, repurchase) = state
    request = CampaignRequest(
        "retention_discount", budget=1e6, segment="spend_365d > 800", channel="sms", seed=2
    )
    out = tmp_path / "export.parquet"
    report = build_campaign(settings, request, churn, repurchase, out=out)
    export = pd.read_parquet(out)
    assert report.treated == len(export) > 0
    assert (export["channel"] == "sms").all()
    spend = frame.set_index("customer_id").loc[export["customer_id"], "spend_365d"]
    assert (spend > 800).all()


def test_unknown_action_or_channel_is_a_clear_error(state) -> None:
    settings, _, (churn, repurchase) = state
    with pytest.raises(CampaignError, match="unknown action"):
        build_campaign(settings, CampaignRequest("teleport", 10.0), churn, repurchase)
    with pytest.raises(CampaignError, match="channel 'store'"):
        build_campaign(
            settings,
            CampaignRequest("retention_discount", 10.0, channel="store"),
            churn,
            repurchase,
        )
