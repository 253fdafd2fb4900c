"""Campaigns for marketing: the audience worth a budget, a held-out control, an export, a log.

``omniretain campaign build --action A --budget B`` answers "whom should this offer go to?" for
one action of the catalogue:

1. every customer of the latest offline snapshot is scored and the decision matrices of
   :mod:`serving.batch` give the expected value of the action on each allowed channel (consent
   and eligibility rules apply; ``--channel`` restricts to one channel, ``--segment`` to the
   rows where a SQL condition over the features holds);
2. the audience is the customers with the highest positive expected value, as many as the budget
   pays for at the action's cost per contact (the best use of a budget when every contact costs
   the same); customers with no contact address on the channel are left out;
3. a random control group (``--control-share`` of the audience, seeded, stratified by expected
   value decile so that treatment and control have the same value mix) gets nothing: comparing
   the two later measures the campaign's true uplift. The budget pays for the treated only;
4. the treated members go to a CSV (or Parquet) for the email/SMS tool: customer id, channel,
   contact address (from the unified profile: ``identity_links`` in the warehouse), action,
   expected value; every member, treated or control, goes to the campaign log.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from omniretain.settings import Settings
from serving.batch import (
    ENTITY_KEY,
    SNAPSHOT_COLUMN,
    action_channel_columns,
    features_path,
    read_latest_snapshot,
    score_and_decide,
)

if TYPE_CHECKING:
    from training.model import CalibratedClassifier
    from training.uplift import UpliftModel
    from training.value import CustomerValueModel

CAMPAIGNS_FOLDER = "campaigns"
CAMPAIGN_LOG_FILE = "members.parquet"
CAMPAIGN_INDEX_FILE = "campaigns.jsonl"
TREATMENT, CONTROL = "treatment", "control"
VALUE_STRATA = 10  # control drawn per expected-value decile
ADDRESS_ID_TYPE_BY_CHANNEL: dict[str, str | None] = {
    "email": "email",
    "sms": "phone",
    "call_center": "phone",
    "app": "device_id",
    "store": "loyalty_card",  # the offer waits on the card at the next visit
    "web": None,  # shown at the next visit: no address needed
}


class CampaignError(ValueError):
    """The campaign cannot be built as asked (unknown action or channel, bad segment...)."""


@dataclass(frozen=True)
class CampaignRequest:
    action: str
    budget: float
    segment: str | None = None
    channel: str | None = None
    control_share: float = 0.1
    seed: int = 0


def action_values(
    frame: pd.DataFrame,
    churn: CalibratedClassifier,
    repurchase: CalibratedClassifier,
    settings: Settings,
    action: str,
    channel: str | None = None,
    value_model: CustomerValueModel | None = None,
    uplift_model: UpliftModel | None = None,
) -> pd.DataFrame:
    """Per customer, the best allowed channel for ``action`` and its expected value.

    The values are the decision matrices of batch scoring (:func:`serving.batch.score_and_decide`,
    the same predictions, value and uplift champions and decision function), read at the
    action's columns: a customer's expected value here is the batch's for the same action and
    channel. No contact-policy block or global control group applies: the campaign holds out
    its own control group.

    Raises:
        CampaignError: the action is not in the catalogue or not offered on ``channel``.
    """
    columns = action_channel_columns(settings.actions)
    wanted = [
        index
        for index, column in enumerate(columns)
        if column.action.name == action and (channel is None or column.channel == channel)
    ]
    if not wanted:
        offered = sorted({f"{c.action.name}/{c.channel}" for c in columns})
        raise CampaignError(
            f"no action {action!r}"
            + (f" on channel {channel!r}" if channel else "")
            + f" in the catalogue; choose one of {offered}"
        )
    scored = score_and_decide(
        frame,
        churn,
        repurchase,
        settings.actions,
        value_model=value_model,
        uplift_model=uplift_model,
    )
    decisions = scored.decisions
    values = decisions.candidate_values[:, wanted]
    best = np.argmax(values, axis=1)
    channels = np.array([columns[index].channel for index in wanted], dtype=object)
    return pd.DataFrame(
        {
            ENTITY_KEY: frame[ENTITY_KEY].to_numpy(),
            "channel": channels[best],
            "expected_value": values[np.arange(len(frame)), best],
            "churn_probability": scored.churn_probability,
            "repurchase_probability": scored.repurchase_probability,
        }
    )


def filter_segment(frame: pd.DataFrame, segment: str | None) -> pd.DataFrame:
    """Rows where the SQL condition ``segment`` over the feature columns holds (DuckDB).

    Raises:
        CampaignError: the condition is not valid SQL or names an unknown column.
    """
    if not segment:
        return frame
    import duckdb

    con = duckdb.connect()
    try:
        con.register("customers", frame)
        return con.execute(f"SELECT * FROM customers WHERE {segment}").df()
    except duckdb.Error as error:
        raise CampaignError(
            f"--segment {segment!r} is not a valid condition over the feature columns "
            f'(e.g. "spend_365d > 200 AND channel_breadth_90d >= 2"): {error}'
        ) from None
    finally:
        con.close()


def audience_size(budget: float, cost: float, control_share: float, candidates: int) -> int:
    """How many members (treated + control) the budget allows: the treated pay ``cost`` each."""
    if budget < 0:
        raise CampaignError(f"--budget must be >= 0, got {budget}")
    if not 0.0 <= control_share < 1.0:
        raise CampaignError(f"--control-share must be in [0, 1), got {control_share}")
    if cost <= 0:
        return candidates
    treated = math.floor(budget / cost + 1e-9)
    return min(candidates, math.floor(treated / (1.0 - control_share) + 1e-9))


def assign_control(
    expected_value: np.ndarray, control_share: float, seed: int, strata: int = VALUE_STRATA
) -> np.ndarray:
    """True for the control members: ``round(share x size)`` drawn at random in each value
    stratum (quantile groups of the expected value), so both arms have the same value mix."""
    n = len(expected_value)
    control = np.zeros(n, dtype=bool)
    if n == 0 or control_share <= 0:
        return control
    rng = np.random.default_rng(seed)
    order = np.argsort(-np.asarray(expected_value), kind="stable")
    for stratum in np.array_split(order, min(strata, n)):
        draw = int(round(control_share * len(stratum)))
        control[rng.choice(stratum, size=draw, replace=False)] = True
    return control


def select_audience(
    values: pd.DataFrame, budget: float, cost: float, control_share: float, seed: int
) -> pd.DataFrame:
    """The highest positive expected values the budget pays for, with the control assigned.

    Pure: ``values`` has ``customer_id``, ``channel``, ``expected_value`` (and any other column,
    kept). The treated never cost more than ``budget``.
    """
    positive = values[np.isfinite(values["expected_value"]) & (values["expected_value"] > 0)]
    ranked = positive.sort_values(
        ["expected_value", ENTITY_KEY], ascending=[False, True], kind="stable"
    )
    size = audience_size(budget, cost, control_share, len(ranked))
    audience = ranked.head(size).reset_index(drop=True)
    control = assign_control(audience["expected_value"].to_numpy(), control_share, seed)
    if cost > 0:  # rounding per stratum may treat one too many: the lowest values go to control
        affordable = math.floor(budget / cost + 1e-9)
        treated_rows = np.flatnonzero(~control)
        control[treated_rows[affordable:]] = True
    return audience.assign(group=np.where(control, CONTROL, TREATMENT))


def contact_addresses(warehouse: Path, customer_ids: list[str], id_type: str) -> dict[str, str]:
    """The newest identifier of ``id_type`` per customer from the unified profile."""
    import duckdb

    if not warehouse.exists():
        raise CampaignError(f"no warehouse at {warehouse}; run `omniretain ingest` first")
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        con.register("wanted", pd.DataFrame({ENTITY_KEY: customer_ids}))
        rows = con.execute(
            """SELECT l.customer_id, arg_max(l.id_value, l.first_seen_at) AS address
               FROM identity_links l JOIN wanted w USING (customer_id)
               WHERE l.id_type = ? GROUP BY l.customer_id""",
            [id_type],
        ).fetchall()
    finally:
        con.close()
    return {str(customer): str(address) for customer, address in rows}


@dataclass
class CampaignReport:
    campaign_id: str
    action: str
    candidates: int
    treated: int
    control: int
    spend: float
    expected_value: float
    export_path: Path
    log_path: Path

    def render(self) -> str:
        return (
            f"campaign {self.campaign_id}: {self.action} to {self.treated:,} customers "
            f"(control {self.control:,} held out) out of {self.candidates:,} with a positive "
            f"expected value\n"
            f"spend {self.spend:,.2f}, expected incremental value of the treated "
            f"{self.expected_value:,.2f}\n"
            f"export for the email/SMS tool: {self.export_path}\n"
            f"campaign log (treatment and control): {self.log_path}"
        )


def log_campaign_decisions(
    settings: Settings,
    audience: pd.DataFrame,
    frame: pd.DataFrame,
    churn: CalibratedClassifier,
    model_versions: Mapping[str, str],
    now: datetime,
) -> None:
    """Every member into the decision log (``source="campaign"``): the treated with the action,
    the control group as a held-out ``no_action``, with the features the models saw."""
    from monitoring.logs import log_decision_frame

    control = (audience["group"] == CONTROL).to_numpy()
    decisions = audience.assign(
        action=np.where(control, "no_action", audience["action"]),
        channel=np.where(control, "none", audience["channel"]),
        expected_value=np.where(control, 0.0, audience["expected_value"]),
        control_group=control,
    )
    features = (
        frame.set_index(ENTITY_KEY).loc[audience[ENTITY_KEY], list(churn.feature_names)]
    ).reset_index(drop=True)
    log_decision_frame(
        settings, decisions.reset_index(drop=True), features, "campaign", now, model_versions
    )


def build_campaign(
    settings: Settings,
    request: CampaignRequest,
    churn: CalibratedClassifier,
    repurchase: CalibratedClassifier,
    out: Path | None = None,
    now: datetime | None = None,
    model_versions: Mapping[str, str] | None = None,
    value_model: CustomerValueModel | None = None,
    uplift_model: UpliftModel | None = None,
) -> CampaignReport:
    """Select, hold out, export and log one campaign (the models are passed in: the CLI loads
    the champions, tests pass small ones)."""
    try:
        action = settings.action(request.action)
    except KeyError as error:
        raise CampaignError(str(error.args[0])) from None
    now = now or datetime.now(UTC)
    frame = filter_segment(read_latest_snapshot(features_path(settings)), request.segment)
    values = action_values(
        frame,
        churn,
        repurchase,
        settings,
        action.name,
        request.channel,
        value_model=value_model,
        uplift_model=uplift_model,
    )

    needs_address = values["channel"].map(ADDRESS_ID_TYPE_BY_CHANNEL.get)
    addresses = pd.Series(pd.NA, index=values.index, dtype=object)
    for id_type in sorted(set(needs_address.dropna())):
        rows = needs_address == id_type
        found = contact_addresses(
            settings.warehouse_path, values.loc[rows, ENTITY_KEY].tolist(), id_type
        )
        addresses[rows] = values.loc[rows, ENTITY_KEY].map(found)
    reachable = needs_address.isna() | addresses.notna()
    values = values.assign(contact_address=addresses)[reachable]

    audience = select_audience(
        values, request.budget, action.cost, request.control_share, request.seed
    )
    campaign_id = f"CMP-{now:%Y%m%d-%H%M%S}-{action.name}"
    folder = settings.state_dir / CAMPAIGNS_FOLDER / campaign_id
    folder.mkdir(parents=True, exist_ok=True)
    audience = audience.assign(
        campaign_id=campaign_id,
        action=action.name,
        expected_value=audience["expected_value"].round(2),
        snapshot=frame[SNAPSHOT_COLUMN].iloc[0] if len(frame) else pd.NaT,
        created_at=now,
    )
    treated = audience[audience["group"] == TREATMENT]
    export = treated[[ENTITY_KEY, "channel", "contact_address", "action", "expected_value"]]
    export_path = out or folder / "export.csv"
    export_path.parent.mkdir(parents=True, exist_ok=True)
    if export_path.suffix == ".parquet":
        export.to_parquet(export_path, index=False)
    else:
        export.to_csv(export_path, index=False)
    log_path = folder / CAMPAIGN_LOG_FILE
    audience[
        [
            "campaign_id",
            ENTITY_KEY,
            "group",
            "action",
            "channel",
            "expected_value",
            "churn_probability",
            "snapshot",
            "created_at",
        ]
    ].to_parquet(log_path, index=False)
    log_campaign_decisions(settings, audience, frame, churn, model_versions or {}, now)
    report = CampaignReport(
        campaign_id=campaign_id,
        action=action.name,
        candidates=int((values["expected_value"] > 0).sum()),
        treated=len(treated),
        control=int((audience["group"] == CONTROL).sum()),
        spend=round(len(treated) * action.cost, 2),
        expected_value=round(float(treated["expected_value"].sum()), 2),
        export_path=export_path,
        log_path=log_path,
    )
    index_line = {
        "campaign_id": campaign_id,
        "created_at": now.isoformat(),
        "action": action.name,
        "budget": request.budget,
        "segment": request.segment,
        "channel": request.channel,
        "control_share": request.control_share,
        "seed": request.seed,
        "treated": report.treated,
        "control": report.control,
        "members": str(log_path),
    }
    with open(settings.state_dir / CAMPAIGNS_FOLDER / CAMPAIGN_INDEX_FILE, "a") as index:
        index.write(json.dumps(index_line) + "\n")
    return report
