"""One scoring path: ``omniretain score`` explains a customer with the words ``/recommend``
serves for the same customer and champion (the ``serving.reasons`` setting, path attribution by
default), on the real service over the session's trained and materialized state."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from omniretain.settings import Settings

DRIVER_PREFIX = "Churn risk is raised by: "


@pytest.fixture(scope="module")
def client(served_state: Settings, serve_in_process: Any) -> Iterator[Any]:
    with serve_in_process() as test_client:
        yield test_client


def test_batch_churn_drivers_are_the_reasons_recommend_serves(
    client: Any, served_state: Settings, tmp_path: Path
) -> None:
    from features.store import OnlineFeatureReader
    from serving.batch import score_latest

    score_latest(served_state, tmp_path / "scores.parquet", reasons_for=15)
    scores = pd.read_parquet(tmp_path / "scores.parquet").set_index("customer_id")
    explained = scores[scores["churn_drivers"].notna()]
    assert len(explained) >= 5, "the state should give several customers an action"
    # a customer another test pushed a real-time event for is scored on other values online
    online = OnlineFeatureReader(served_state).get(list(explained.index))
    compared = 0
    for customer_id, row in zip(explained.index, online, strict=True):
        pushed = [row.get(f, math.nan) for f in ("last_cart_abandoned_at", "last_case_opened_at")]
        if row is None or not all(math.isnan(v) for v in pushed):
            continue
        response = client.post("/recommend", json={"customer_id": customer_id})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["churn_probability"] == explained.loc[customer_id, "churn_probability"]
        reasons = body["next_best_action"]["reasons"]
        served = [r[len(DRIVER_PREFIX) : -1] for r in reasons if r.startswith(DRIVER_PREFIX)]
        assert explained.loc[customer_id, "churn_drivers"] == "; ".join(served), customer_id
        compared += 1
    assert compared >= 5
