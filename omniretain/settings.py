"""One typed settings object for every stage.

Values come, in increasing priority, from the defaults below, ``configs/omniretain.yaml`` and
``configs/actions.yaml`` (or the folder named by ``OMNIRETAIN_CONFIG_DIR``), and environment
variables ``OMNIRETAIN_<KEY>`` / ``OMNIRETAIN_<SECTION>__<KEY>``. Every generated file lives under
``state_dir`` so that a project never writes to the user's home folder.
"""

from __future__ import annotations

import json
import os
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, TypeAdapter, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_config_dir() -> Path:
    """The folder of YAML files: ``OMNIRETAIN_CONFIG_DIR`` or the project's ``configs/``."""
    return Path(os.environ.get("OMNIRETAIN_CONFIG_DIR", PROJECT_ROOT / "configs"))


class SimulationSettings(BaseModel):
    customers: int = Field(3000, ge=10)
    months: int = Field(15, ge=6, le=120)
    seed: int = 7
    start_date: date = date(2025, 1, 1)
    dirty_row_share: float = Field(0.01, ge=0.0, le=0.5)
    # The simulated retailer's monthly randomised campaign: the share of known persons given a
    # random eligible (action, channel) and the share held out as control. More randomised
    # history = more to learn the uplift model from and to estimate policies offline (IPS).
    campaign_treated_share: float = Field(0.25, gt=0.0, lt=1.0)
    campaign_control_share: float = Field(0.10, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _campaign_shares_fit(self) -> SimulationSettings:
        if self.campaign_treated_share + self.campaign_control_share > 1.0:
            raise ValueError(
                "simulation.campaign_treated_share + campaign_control_share must be at most 1, "
                f"got {self.campaign_treated_share} + {self.campaign_control_share}"
            )
        return self


class IdentitySettings(BaseModel):
    default_phone_region: str = "GB"  # region for phone numbers written without a country code


class CrmAttribute(BaseModel):
    """One column of the CRM attributes feed that becomes the feature ``crm_<name>``."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")  # the feed's column (matched lower-cased)
    type: Literal["numeric", "categorical"]
    description: str = ""


class CrmSettings(BaseModel):
    """Customer attributes declared here flow into the features, Feast and the models."""

    attributes: list[CrmAttribute] = Field(default_factory=list)


class LabelSettings(BaseModel):
    churn_window_days: int = Field(90, ge=7)
    repurchase_window_days: int = Field(30, ge=7)
    snapshot_every_days: int = Field(30, ge=1)
    first_snapshot_after_days: int = Field(120, ge=0)
    min_history_days: int = Field(0, ge=0)


class FeatureSettings(BaseModel):
    feature_service: str = "churn_v1"
    lookback_days: list[int] = [30, 90, 365]
    feast_ttl_days: int = Field(400, ge=1)
    serving_feature_service: str = "nba_v1"  # online reads: churn_v1's features + real-time
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_connection_string: str = "localhost:6379"  # Feast's form: host:port[,db=0,...]
    # DuckDB memory of ingest and the feature build (DuckDB's own default is 80 % of the RAM);
    # past it, joins, aggregates and sorts spill to <warehouse>.tmp beside the warehouse.
    warehouse_memory_limit: str = Field("4GB", pattern=r"^\d+(\.\d+)?\s*[KMGT]i?B$")


class TrainingSettings(BaseModel):
    holdout_snapshots: int = Field(1, ge=1)
    lightgbm: dict[str, Any] = Field(default_factory=dict)
    early_stopping_rounds: int = Field(30, ge=1)
    calibration: Literal["isotonic", "sigmoid"] = "isotonic"
    promotion_metric: str = "roc_auc"
    promotion_margin: float = 0.0
    max_calibration_error: float = Field(0.08, gt=0.0, le=1.0)  # gate: holdout ECE bound
    max_metric_drop: float = Field(0.05, ge=0.0)  # gate: no metric may fall more vs champion
    # gate: the ROC AUC must beat this baseline's: "chance" (0.5), "rfm" or "logistic"
    sanity_baseline: str = "chance"


class ApiKey(BaseModel):
    """One API key, stored as the SHA-256 hex of the key (``serving.auth.new_key`` makes one)."""

    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[Literal["recommend", "feedback", "admin"]]


class ServingSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    expected_value_horizon_days: int = Field(365, ge=1)
    exploration_share: float = Field(0.05, ge=0.0, le=1.0)  # decisions that pick a random action
    control_share: float = Field(0.05, ge=0.0, le=1.0)  # stable hash-based hold-out: no action
    control_salt: str = "omniretain-control-v1"  # change it to draw a new control group
    max_batch_ids: int = Field(10_000, ge=1)  # POST /recommend/batch limit (413 above)
    reload_poll_seconds: float = Field(30.0, gt=0.0)  # champion alias poll, off the request path
    # Batch scoring compiles the champions' trees (serving/compiled.py, a minute or two per model,
    # once per version) for a batch of at least this many rows; smaller ones use a library
    # already compiled, else LightGBM (0: always compile).
    batch_compile_min_rows: int = Field(100_000, ge=0)
    # Online store faults (serving/fallback.py): a read waits at most this long; after a failed
    # read, requests answer the flagged fallback at once and the store is tried again after
    # ``online_retry_seconds`` (and by every /readyz).
    online_read_timeout_seconds: float = Field(0.2, gt=0.0)
    online_retry_seconds: float = Field(1.0, ge=0.0)
    # churn drivers of /recommend: path attribution (~0.2 ms) or TreeSHAP (~2-4 ms), serving/reasons
    reasons: Literal["path", "treeshap"] = "path"
    # BentoML's access log (one line per request, redacted): off by default, every decision is
    # in the decision log already and the line costs CPU per request (serving/service.py)
    access_log: bool = False
    api_keys: list[ApiKey] = Field(default_factory=list)  # none configured: the API is open
    # more keys from a JSON file outside the repo (a secret store's mount), added to api_keys
    api_keys_file: Path | None = None

    @model_validator(mode="after")
    def _keys_from_file(self) -> ServingSettings:
        if self.api_keys_file is None:
            return self
        path = self.api_keys_file.expanduser().resolve()
        if path.is_relative_to(PROJECT_ROOT):
            raise ValueError(
                f"serving.api_keys_file: {path} is inside the project; keep secrets outside it"
            )
        try:
            keys = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"serving.api_keys_file: cannot read {path}: {error}") from None
        self.api_keys = [*self.api_keys, *TypeAdapter(list[ApiKey]).validate_python(keys)]
        return self


class DriftSettings(BaseModel):
    """Per-feature drift method and threshold.

    Methods use Evidently's names: ks, wasserstein, psi, jensenshannon...
    """

    default_method: str | None = None  # None: Evidently picks per column type and size
    default_threshold: float | None = None
    per_feature_method: dict[str, str] = Field(default_factory=dict)
    per_feature_threshold: dict[str, float] = Field(default_factory=dict)
    id_column: str = "customer_id"
    timestamp_column: str = "event_timestamp"
    window_days: int = Field(7, ge=1)  # served-traffic window checked by `monitor drift --served`
    retrain_on_prediction_drift: bool = True
    # Features that grow with the calendar whatever customers do (tenure, lifetime totals, "days
    # since"): names or glob patterns; drift-tested and shown, never counted in the verdict.
    calendar_columns: list[str] = Field(default_factory=list)
    # Also leave out of the verdict windowed features (``*_365d``) longer than the history the
    # reference had at its cutoff: truncated there, full later, they move with the calendar too.
    exclude_truncated_windows: bool = True
    # A served window of fewer customers is too small (and too selected) to test: the newest
    # feature snapshot is checked instead.
    min_window_customers: int = Field(100, ge=1)


class DecisionLogSettings(BaseModel):
    queue_size: int = Field(10000, ge=1)  # records held before new ones are dropped (counted)
    flush_rows: int = Field(500, ge=1)
    flush_seconds: float = Field(2.0, gt=0.0)


class MonitoringSettings(BaseModel):
    drift_share_threshold: float = Field(0.3, gt=0.0, le=1.0)
    sample_rows: int = Field(20000, ge=100)
    drift: DriftSettings = DriftSettings()
    decision_log: DecisionLogSettings = DecisionLogSettings()
    outcome_window_days: int = Field(90, ge=1)  # campaign outcome window (treated vs control)


class PipelineSettings(BaseModel):
    """Scheduled retraining (``omniretain pipeline schedule``)."""

    schedule_cron: str = "0 3 * * 1"  # crontab fields: minute hour day month weekday
    timezone: str = "UTC"


class EligibilityRule(BaseModel):
    """``feature op value``: an action is eligible only when all its rules hold (NaN fails)."""

    feature: str
    op: Literal["<", "<=", ">", ">=", "==", "!="]
    value: float


class ContactPolicySettings(BaseModel):
    """Contact pressure limits (``contact_policy`` in ``configs/actions.yaml``)."""

    window_days: float = Field(7.0, gt=0.0)  # the caps count contacts in this window
    max_per_channel: dict[str, int] = Field(default_factory=dict)  # channel -> contacts
    max_total: int = Field(3, ge=0)  # outbound contacts of any channel
    cooldown_hours: float = Field(24.0, ge=0.0)  # no outbound contact this soon after one
    quiet_hours_start: int = Field(21, ge=0, le=23)  # local hour, inclusive
    quiet_hours_end: int = Field(8, ge=0, le=23)  # local hour, exclusive
    timezone: str = "Europe/London"
    quiet_channels: list[str] = Field(default_factory=lambda: ["sms", "app", "call_center"])
    outbound_channels: list[str] = Field(
        default_factory=lambda: ["email", "sms", "app", "call_center"]
    )  # store and web offers wait for the customer's visit: not contacts


class Action(BaseModel):
    """One entry of the action catalogue (``configs/actions.yaml``)."""

    name: str
    description: str = ""
    cost: float = Field(0.0, ge=0.0)
    channels: list[str]
    base_uplift: float = Field(0.0, ge=-1.0, le=1.0)
    goal: Literal["retention", "growth"] = "retention"
    eligibility: list[EligibilityRule] = Field(default_factory=list)
    cooldown_days: float = Field(0.0, ge=0.0)  # not again for this customer within N days
    priority: int = 0  # tie-break between equal expected values: higher first


class _YamlSource(PydanticBaseSettingsSource):
    """Reads ``omniretain.yaml`` and ``actions.yaml`` from the config folder."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        folder = default_config_dir()
        merged: dict[str, Any] = {}
        for name in ("omniretain.yaml", "actions.yaml"):
            path = folder / name
            if path.exists():
                loaded = yaml.safe_load(path.read_text()) or {}
                if not isinstance(loaded, dict):
                    raise ValueError(f"{path}: expected a mapping at the top level")
                merged.update(loaded)
        return merged


class Settings(BaseSettings):
    """Everything a stage needs to know; one instance per process (see :func:`load_settings`)."""

    model_config = SettingsConfigDict(
        env_prefix="OMNIRETAIN_", env_nested_delimiter="__", extra="ignore"
    )

    state_dir: Path = Path(".omniretain")
    simulation: SimulationSettings = SimulationSettings()
    identity: IdentitySettings = IdentitySettings()
    crm: CrmSettings = CrmSettings()
    labels: LabelSettings = LabelSettings()
    features: FeatureSettings = FeatureSettings()
    training: TrainingSettings = TrainingSettings()
    serving: ServingSettings = ServingSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    pipeline: PipelineSettings = PipelineSettings()
    actions: list[Action] = Field(default_factory=list)
    contact_policy: ContactPolicySettings = ContactPolicySettings()
    channels: list[str] = ["email", "sms", "app", "web", "store", "call_center", "social"]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))

    @field_validator("state_dir")
    @classmethod
    def _absolute_state_dir(cls, value: Path) -> Path:
        # Relative state dirs are relative to the project root, not the caller's cwd, so that
        # the CLI, the tests and the BentoML workers all agree on one place.
        return value if value.is_absolute() else (PROJECT_ROOT / value).resolve()

    @model_validator(mode="after")
    def _catalogue_has_no_action(self) -> Settings:
        if self.actions and not any(a.name == "no_action" for a in self.actions):
            raise ValueError("actions: the catalogue must contain 'no_action'")
        return self

    # ---- derived paths: one place for every file a stage writes -------------------------
    @cached_property
    def raw_dir(self) -> Path:
        """Raw per-channel feeds, one sub-folder per feed (immutable input)."""
        return self.state_dir / "raw"

    @cached_property
    def truth_dir(self) -> Path:
        """The simulator's ground truth; never read by the product, only by tests/benchmarks."""
        return self.state_dir / "truth"

    @cached_property
    def warehouse_path(self) -> Path:
        """DuckDB file with accepted rows, quarantine, identity graph and unified events."""
        return self.state_dir / "warehouse.duckdb"

    @cached_property
    def features_dir(self) -> Path:
        """Point-in-time feature snapshots: the Feast offline source (parquet)."""
        return self.state_dir / "features"

    @cached_property
    def feast_dir(self) -> Path:
        """Generated Feast repo config, registry and SQLite online store."""
        return self.state_dir / "feast"

    @cached_property
    def mlflow_dir(self) -> Path:
        return self.state_dir / "mlflow"

    @property
    def mlflow_tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def mlflow_artifact_root(self) -> str:
        return str(self.mlflow_dir / "artifacts")

    @cached_property
    def monitoring_dir(self) -> Path:
        """Prediction logs and drift reports."""
        return self.state_dir / "monitoring"

    def action(self, name: str) -> Action:
        for action in self.actions:
            if action.name == name:
                return action
        raise KeyError(f"unknown action {name!r}; known: {[a.name for a in self.actions]}")

    def ensure_dirs(self) -> None:
        for path in (
            self.state_dir,
            self.raw_dir,
            self.truth_dir,
            self.features_dir,
            self.feast_dir,
            self.mlflow_dir,
            self.monitoring_dir,
        ):
            path.mkdir(parents=True, exist_ok=True)


def load_settings(**overrides: Any) -> Settings:
    """Build the settings; keyword overrides win over environment and YAML (used by tests)."""
    return Settings(**overrides)
