"""Property tests of what stands between raw input and the product (issue 8).

- ``parse_body`` turns any bytes into a request model or a 4xx ``RequestBodyError``; nothing else.
- The ingest's row validation accepts every row inside the contract, with the values it was
  given, and quarantines a row with a negative amount or a non-number naming the column.
- Contact addresses are refused as customer ids and redacted from any log line.
"""

from __future__ import annotations

import json
import string
from datetime import UTC, datetime, timedelta

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.contract import FEEDS
from features.ingest import validation_sql
from serving.auth import redact
from serving.schemas import (
    BatchRecommendRequest,
    EventRequest,
    FeedbackRequest,
    RecommendRequest,
    RequestBodyError,
    parse_body,
    parse_customer_id,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
MODELS = [RecommendRequest, BatchRecommendRequest, FeedbackRequest, EventRequest]
json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=12,
)
field_like = st.sampled_from(
    [
        "customer_id",
        "customer_ids",
        "context",
        "event_type",
        "occurred_at",
        "cart_value",
        "channel",
        "decision_id",
        "action",
        "outcome",
        "revenue",
        "explain",
    ]
)
bodies = st.dictionaries(field_like, json_values, max_size=6).map(lambda d: json.dumps(d).encode())


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(MODELS),
    st.binary(max_size=200) | bodies,
    st.sampled_from([None, "application/json", "text/plain", "application/json; charset=utf-8"]),
)
def test_any_body_is_a_model_or_a_4xx_naming_what_is_wrong(model, body, content_type) -> None:
    try:
        parsed = parse_body(model, body, content_type)
    except RequestBodyError as error:
        assert 400 <= error.status_code < 500
        assert error.message and json.dumps(error.to_json())
        for item in error.detail:
            named = [str(part) for part in item["loc"] if not isinstance(part, int)]
            if named:
                assert named[0] in error.message
    else:
        assert isinstance(parsed, model)


CONNECTION = duckdb.connect()  # one for the module: a connection per example costs seconds
CONNECTION.execute("SET TimeZone = 'UTC'")


def check(row: dict[str, str | None]) -> dict[str, object]:
    feed = FEEDS["pos_sales"]
    con = CONNECTION.cursor()
    columns = ", ".join(f'CAST(? AS VARCHAR) AS "{name}"' for name in feed.columns)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _src AS SELECT 1 AS _line, '{{}}' AS _raw, {columns}",
        [row.get(name) for name in feed.columns],
    )
    names = [column for column in feed.columns] + ["_reason"]
    values = con.execute(validation_sql(feed, NOW)).fetchone()
    con.close()
    return dict(zip(["_line", *names], values, strict=True))


identifiers = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=12)
moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2025, 12, 31)).map(
    lambda moment: moment.replace(microsecond=0)
)


@settings(max_examples=30, deadline=None)
@given(
    identifiers,
    identifiers,
    moments,
    st.decimals(min_value=0, max_value=99_999, places=2),
    st.integers(min_value=1, max_value=1000),
    st.sampled_from(["true", "false", "1", "0", "yes", "no", "TRUE", " No "]),
)
def test_every_row_inside_the_contract_is_accepted_with_its_values(
    key, store, moment, amount, items, is_return
) -> None:
    row = {
        "transaction_id": key,
        "store_id": f" {store} ",
        "purchased_at": moment.isoformat(),
        "amount": str(amount),
        "items": str(items),
        "is_return": is_return,
    }
    result = check(row)
    assert result["_reason"] == ""
    assert result["transaction_id"] == key and result["store_id"] == store
    assert result["purchased_at"] == moment
    assert result["amount"] == pytest.approx(float(amount)) and result["items"] == items
    assert result["is_return"] == (is_return.strip().lower() in {"true", "1", "yes"})


@settings(max_examples=20, deadline=None)
@given(
    st.one_of(
        st.decimals(max_value=-1, min_value=-1_000_000, places=2).map(str),
        st.text(string.ascii_letters, min_size=1, max_size=8),
    ),
    st.integers(min_value=2, max_value=3650),
)
def test_bad_amounts_and_future_dates_are_quarantined_naming_the_column(
    amount: str, days_ahead: int
) -> None:
    good = {
        "transaction_id": "T1",
        "store_id": "S1",
        "purchased_at": "2025-03-01T14:05:00",
        "amount": "10",
        "items": "1",
    }
    assert check(good | {"amount": amount})["_reason"].startswith("amount:")
    future = (NOW + timedelta(days=days_ahead)).replace(tzinfo=None).isoformat()
    assert "in the future" in check(good | {"purchased_at": future})["_reason"]


@given(st.emails())
def test_an_email_is_never_a_customer_id(email: str) -> None:
    with pytest.raises(RequestBodyError) as refused:
        parse_customer_id(email)
    assert refused.value.status_code == 422 and "customer_id" in refused.value.message


@given(st.integers(min_value=0, max_value=999_999_999))
def test_resolved_ids_and_plain_numbers_are_customer_ids(number: int) -> None:
    assert parse_customer_id(f"C{number:09d}") == f"C{number:09d}"
    assert parse_customer_id(str(number)) == str(number)


uk_mobiles = st.integers(min_value=7_000_000_000, max_value=7_999_999_999).map(
    lambda n: f"+44 {str(n)[:4]} {str(n)[4:]}"
)


@given(st.text(max_size=40), st.emails() | uk_mobiles, st.text(max_size=40))
def test_contact_addresses_are_redacted_from_log_lines(before: str, contact: str, after: str):
    line = f"{before} path=/profile/{contact} {after}"
    assert contact not in redact(line)


@given(st.text(string.ascii_letters + string.digits + "-_.~", min_size=8, max_size=64))
def test_presented_keys_are_redacted_from_log_lines(key: str) -> None:
    assert key not in redact(f"headers: Authorization: Bearer {key}; X-API-Key: {key}")
