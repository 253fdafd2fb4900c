"""Airflow DAG for teams that already run an orchestrator: the same pipeline, one task per step.

Each task calls the omniretain CLI (or the same Python functions) in the project's virtualenv;
the state dir and MLflow URI come from the environment, as for ``omniretain pipeline run``.
The single-task form (``omniretain pipeline run``) keeps the pipeline's own guarantees:
idempotence (nothing new -> nothing retrained), the lock, and champions restored when a step
fails. Split into tasks, Airflow's retries and UI show each step, and the gate still protects
the champion; the final ``verify`` task checks the champions load and score.

Copy to your ``dags/`` folder and set OMNIRETAIN_HOME to the project checkout.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

OMNIRETAIN_HOME = os.environ.get("OMNIRETAIN_HOME", "/opt/omniretain")
OMNIRETAIN = f"cd {OMNIRETAIN_HOME} && .venv/bin/omniretain"
ENV = {
    "OMNIRETAIN_STATE_DIR": os.environ.get("OMNIRETAIN_STATE_DIR", "/data/omniretain"),
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "FEAST_USAGE": "False",
}

with DAG(
    dag_id="omniretain_retraining",
    schedule="0 3 * * 1",  # the same cron as pipeline.schedule_cron in configs/omniretain.yaml
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=10)},
    tags=["omniretain", "retraining"],
) as dag:
    # One task: the pipeline with all its guarantees (recommended).
    pipeline = BashOperator(
        task_id="pipeline_run",
        bash_command=f"{OMNIRETAIN} pipeline run --reason schedule",
        env=ENV,
        append_env=True,
    )

with DAG(
    dag_id="omniretain_retraining_steps",
    schedule=None,  # triggered by hand, or from a drift alert
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["omniretain", "retraining"],
) as steps_dag:
    # The same stages as separate tasks, for teams that want each step in Airflow's UI.
    ingest = BashOperator(
        task_id="ingest", bash_command=f"{OMNIRETAIN} ingest", env=ENV, append_env=True
    )
    features = BashOperator(
        task_id="build_features",
        bash_command=f"{OMNIRETAIN} build-features",
        env=ENV,
        append_env=True,
    )
    train = BashOperator(
        task_id="train_gate_promote", bash_command=f"{OMNIRETAIN} train", env=ENV, append_env=True
    )
    verify = BashOperator(
        task_id="verify",
        bash_command=(
            f"cd {OMNIRETAIN_HOME} && .venv/bin/python -c "
            "'from omniretain.settings import load_settings; "
            "from training.pipeline import verify_champions; "
            "print(verify_champions(load_settings()))'"
        ),
        env=ENV,
        append_env=True,
    )
    ingest >> features >> train >> verify
