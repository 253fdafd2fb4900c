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
    cells_from_bytes,
    concat_rows,
    constant_cells,
    crc64_rows,
    decode_value,
    double_value_cells,
    encode_double_values,
    encode_int64_values,
    encode_timestamp,
    entity_key_encoder,
    int64_value_cells,
    redis_hset_commands,
    string_cells,
    value_text,
    value_texts,
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


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=20), max_size=30))
def test_cells_round_trip_any_bytes(items: list[bytes]) -> None:
    cells = cells_from_bytes(items)
    assert cells.to_list() == items
    if items:
        assert concat_rows([cells, constant_cells(b"|", len(items))])[0] == b"".join(
            item + b"|" for item in items
        )


@settings(max_examples=60, deadline=None)
@given(st.one_of(doubles, int64s))
def test_value_texts_match_feast(values: list) -> None:
    from feast.infra.online_stores.helpers import extract_text_and_num

    is_int = all(value is None or isinstance(value, int) for value in values)
    kind = "int64" if is_int else "float64"
    array = pa.array(values, type=pa.int64() if is_int else pa.float64())
    expected = [
        extract_text_and_num(proto, False)[0]
        for proto in _feast_protos(values, "INT64" if is_int else "DOUBLE")
    ]
    assert value_texts(array, kind) == expected


EDGE_DOUBLES = [
    100.0,
    -0.0,
    0.0,
    1e-4,
    9.99e-5,
    -1.5e-5,
    5e-324,
    1e14,
    99999999999999.98,
    123456789012345.6,
    1e15,
    1e16,
    2.5e22,
    1.7976931348623157e308,
    math.inf,
    -math.inf,
    math.nan,
    None,
    0.1,
    1 / 3,
    -12345678.9,
]


def test_value_texts_are_python_str_where_arrow_formats_differently() -> None:
    """Integral values, both exponent thresholds, infinities, NaN and null, in one column."""
    expected = [None if value is None or value != value else str(value) for value in EDGE_DOUBLES]
    assert value_texts(pa.array(EDGE_DOUBLES, type=pa.float64()), "float64") == expected


def test_string_cells_of_a_sliced_array_with_nulls() -> None:
    texts = pa.array(["skip", "a", None, "ünï", "", "last"]).slice(1, 4)
    cells = string_cells(pa.chunked_array([texts]))
    assert cells.to_list() == [b"a", b"", "ünï".encode(), b""]


def _feast_protos(values: list, value_type: str) -> list:
    from feast.protos.feast.types.Value_pb2 import Value

    missing = [value is None or value != value for value in values]
    present = [value for value, gone in zip(values, missing, strict=True) if not gone]
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    protos = iter(python_values_to_proto_values(present, getattr(ValueType, value_type)))
    return [Value() if gone else next(protos) for gone in missing]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.text(max_size=12), min_size=1, max_size=8),
    st.lists(st.one_of(st.none(), st.floats(allow_nan=True)), min_size=8, max_size=8),
    st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), min_size=8, max_size=8),
    st.one_of(st.none(), st.integers(1, 10**9)),
)
def test_redis_commands_match_redis_py(
    ids: list[str], floats: list, ints: list, ttl_seconds: int | None
) -> None:
    """The RESP bytes equal redis-py's ``pack_command`` of Feast's field/value arguments."""
    from redis.connection import Connection

    rows = len(ids)
    encode_key = entity_key_encoder("customer_id", 3)
    keys = [encode_key(customer) + b"omniretain" for customer in ids]
    float_values = pa.array(floats[:rows], type=pa.float64())
    int_values = pa.array(ints[:rows], type=pa.int64())
    fields = [
        (b"\x01\x02\x03\x04", double_value_cells(float_values)),
        (b"_ts:customer_features", cells_from_bytes([b"ts"] * rows)),
        (b"\xff\x00\xfe\x00", int64_value_cells(int_values)),
    ]
    pack = Connection().pack_command
    expected = b""
    for row in range(rows):
        arguments = [keys[row]]
        for field, cells in fields:
            arguments += [field, cells.to_list()[row]]
        expected += b"".join(pack("HSET", *arguments))
        if ttl_seconds:
            expected += b"".join(pack("EXPIRE", keys[row], ttl_seconds))
    assert redis_hset_commands(cells_from_bytes(keys), fields, ttl_seconds) == expected
    assert double_value_cells(float_values).to_list() == encode_double_values(float_values)


def test_crc64_is_redis_crc64() -> None:
    """Redis's CRC-64 check value (src/crc64.c) for every alignment of rows of unequal length."""
    cells = cells_from_bytes([b"123456789", b"", b"1"])
    crc = crc64_rows(cells).tolist()
    assert crc[0] == 0xE9C6D914C4B8D9CA and crc[1] == 0
    assert crc[2] == crc64_rows(cells_from_bytes([b"1"])).tolist()[0] != 0
