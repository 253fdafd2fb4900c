"""Our online-store encoders produce Feast's bytes exactly (checked against Feast's functions)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.online_writer import (
    decode_value,
    encode_double_values,
    encode_int64_values,
    encode_timestamp,
    entity_key_encoder,
    value_text,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

doubles = st.lists(
    st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), max_size=40
)
int64s = st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=40)


def feast_bytes(values: list, value_type: str) -> list[bytes]:
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    protos = python_values_to_proto_values(values, getattr(ValueType, value_type))
    return [proto.SerializeToString() for proto in protos]


@settings(max_examples=60, deadline=None)
@given(doubles)
def test_double_values_match_feast(values: list[float | None]) -> None:
    expected = feast_bytes(
        [np.nan if value is None else value for value in values] or [0.0], "DOUBLE"
    )[: len(values)]
    assert encode_double_values(pa.array(values, type=pa.float64())) == expected


@settings(max_examples=60, deadline=None)
@given(int64s)
def test_int64_values_match_feast(values: list[int | None]) -> None:
    present = [value for value in values if value is not None]
    expected_present = iter(feast_bytes(present, "INT64") if present else [])
    expected = [b"" if value is None else next(expected_present) for value in values]
    assert encode_int64_values(pa.array(values, type=pa.int64())) == expected


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=30))
def test_entity_keys_match_feast(customer_id: str) -> None:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    expected = serialize_entity_key(
        EntityKey(join_keys=["customer_id"], entity_values=[Value(string_val=customer_id)]), 3
    )
    assert entity_key_encoder("customer_id", 3)(customer_id) == expected


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.floats(allow_nan=False), st.integers(-(2**63), 2**63 - 1)))
def test_decode_reads_back_what_feast_wrote(number: float | int) -> None:
    from feast.protos.feast.types.Value_pb2 import Value

    proto = Value(double_val=number) if isinstance(number, float) else Value(int64_val=number)
    encoded = proto.SerializeToString()
    assert decode_value(encoded) == number
    assert value_text(encoded, "float64" if isinstance(number, float) else "int64") == str(number)


def test_decode_of_missing_values_is_none() -> None:
    assert decode_value(b"") is None and decode_value(None) is None
    assert value_text(b"", "float64") is None
    assert math.isnan(decode_value(encode_double_values(pa.array([math.nan]))[0]) or math.nan)


def test_timestamps_match_feast_redis_stamps() -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    moment = datetime(2025, 6, 16, 12, 30, 5, 123456, tzinfo=UTC)
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    assert encode_timestamp(moment) == stamp.SerializeToString()
    assert encode_timestamp(moment.replace(tzinfo=None)) == stamp.SerializeToString()
    assert encode_timestamp(moment + timedelta(hours=1)) != stamp.SerializeToString()
