"""The JSON decoder's fast path (orjson) must return exactly what the reference decoder does.

`decode_json` hands serde_json-shaped payloads to orjson and everything else (and every
error) to `decode_json_reference`. These tests pin both halves of that promise: the fast path
really is taken for agent payloads, and on any payload, well-formed or hostile, the two
decoders give the same span or the same error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kata_debug.forwarder import wire_json
from kata_debug.forwarder.frames import FrameReader
from kata_debug.forwarder.spans import DecodeError, Link, Span
from kata_debug.forwarder.wire_json import decode_json, decode_json_reference
from tests.agent_wire import sample_span, to_json, to_json_obj
from tests.test_trace_wire import spans

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "agent-trace"
_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(decode: Callable[[bytes], Span], payload: bytes) -> tuple[str, str]:
    """What a decoder makes of a payload, comparable across decoders (repr: NaN == NaN)."""
    try:
        return ("span", repr(decode(payload)))
    except DecodeError as exc:
        return ("error", str(exc))


def assert_same(payload: bytes) -> None:
    assert outcome(decode_json, payload) == outcome(decode_json_reference, payload)


def fast_taken(payload: bytes) -> bool:
    try:
        return wire_json._fast(payload) is not None
    except Exception:  # the fast path declines by raising, too
        return False


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def test_every_fixture_span_takes_the_fast_path_and_decodes_as_the_reference_does() -> None:
    payloads = FrameReader().feed((FIXTURES / "json" / "stream.json.bin").read_bytes())
    assert payloads
    for p in payloads:
        assert fast_taken(p)
        assert wire_json._fast(p) == decode_json_reference(p)


@_SETTINGS
@given(spans)
def test_generated_spans_decode_identically_on_both_paths(span: Span) -> None:
    payload = to_json(span)
    assert decode_json(payload) == decode_json_reference(payload) == span
    if b"\\u" not in payload:  # a \u escape could spell a "trace_id" key: reference only
        assert fast_taken(payload)


_SEEDS = [to_json(sample_span(i)) for i in range(3)]


@_SETTINGS
@given(
    st.sampled_from(_SEEDS),
    st.lists(
        st.tuples(st.integers(0, 2000), st.sampled_from(b'0123456789-.eE,:{}[]"\\ux nul')), min_size=1, max_size=4
    ),
)
def test_mutated_payloads_give_the_same_span_or_the_same_error(seed: bytes, edits: list[tuple[int, int]]) -> None:
    data = bytearray(seed)
    for pos, byte in edits:
        data[pos % len(data)] = byte
    assert_same(bytes(data))


def _with(path: tuple[str | int, ...], value: Any, span: Span | None = None) -> bytes:
    obj = to_json_obj(span or sample_span(1))
    target: Any = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return compact(obj)


@pytest.mark.parametrize(
    "path,value",
    [
        (("span_context", "span_id"), 2**64),  # orjson: a float; must be the reference's error
        (("span_context", "span_id"), 2**64 - 1),
        (("parent_span_id",), -1),
        (("span_context", "trace_flags"), 1.0),
        (("attributes", "map", "code.lineno"), {"I64": -(2**63) - 1}),
        (("attributes", "map", "code.lineno"), {"I64": 2**63}),
        (("attributes", "map", "code.lineno"), {"F64": 2**70}),  # integer literal in an F64
        (("attributes", "map", "code.lineno"), {"F64": 10**400}),  # too large for a float
        (("attributes", "map", "code.lineno"), {"F64": -0}),
        (("attributes", "map", "code.lineno"), {"Array": {"F64": [1, 2**80, None, -0.0]}}),
        (("attributes", "map", "code.lineno"), {"Array": {"I64": [2**64]}}),
        (("start_time", "secs_since_epoch"), 18446744073),  # ns just past 2^64
        (("start_time", "nanos_since_epoch"), 2**32),
        (("events", "dropped_count"), 2**32),
        (("name",), "\u2028 \x00 \ud7ff"),
        (("resource",), {"attrs": {"a": {"Bool": True}}}),
        (("resource",), {"attrs": []}),
        (("events", "queue"), 0),  # falsy but not a list: an error, not "no events"
        (("events", "queue"), {}),
        (("links", "queue"), ""),
        (("links", "queue"), []),
        (("events", "max_len"), -1),
        (("events", "queue", 0, "name"), 7),
        (("events", "queue", 0, "timestamp", "nanos_since_epoch"), -1),
        (("events", "queue", 0, "attributes"), {"pid": {"I64": 1}}),
        (("events", "queue", 0, "attributes", 0), ["pid", {"I64": 1}]),
        (("events", "queue", 0, "attributes", 0, "key"), None),
        (("events", "queue", 0, "attributes", 0, "value"), {"I64": 2**63}),
        (("events", "queue", 0, "attributes", 0, "value"), {"Bool": True, "I64": 1}),
        (("events", "queue", 0, "dropped_attributes_count"), 2**32),
    ],
)
def test_edge_values_agree(path: tuple[str, ...], value: Any) -> None:
    assert_same(_with(path, value))


def test_big_trace_ids_in_the_span_and_its_links_are_exact() -> None:
    span = sample_span(2)
    span.trace_id = 2**128 - 1
    span.links = [Link(2**128 - 2, 2**64 - 1, 1, True, (), [("k", "v")], 0), Link(2**64 + 1, 1, 0, False, (), [], 0)]
    payload = to_json(span)
    assert fast_taken(payload)
    assert decode_json(payload) == span


@pytest.mark.parametrize(
    "payload",
    [
        # a second "trace_id" key in span_context: JSON keeps the last one
        b'{"span_context":{"trace_id":5,"trace_id":7'
        + to_json(sample_span(0))[to_json(sample_span(0)).index(b",", 28) :],
        # the same, spelled with an escape
        b'{"span_context":{"trace_id":5,"trace\\u005fid":7'
        + to_json(sample_span(0))[to_json(sample_span(0)).index(b",", 28) :],
        # leading zeros are not JSON
        b'{"span_context":{"trace_id":05' + to_json(sample_span(0))[to_json(sample_span(0)).index(b",", 28) :],
        b'{"span_context":{"trace_id":-5' + to_json(sample_span(0))[to_json(sample_span(0)).index(b",", 28) :],
        b'{"span_context":{"trace_id":1e3' + to_json(sample_span(0))[to_json(sample_span(0)).index(b",", 28) :],
        b'{"span_context":{"trace_id":'
        + str(2**128).encode()
        + to_json(sample_span(0))[to_json(sample_span(0)).index(b",", 28) :],
        # a key spelled with an escape
        to_json(sample_span(0)).replace(b'"span_id"', b'"span\\u005fid"'),
        # the stdlib accepts these, orjson does not
        _with(("attributes", "map", "code.lineno"), {"F64": math.nan}).replace(b"null", b"NaN"),
        _with(("name",), "x").replace(b'"name":"x"', b'"name":"\\ud800"'),
        b"\xef\xbb\xbf" + to_json(sample_span(0)),
        to_json(sample_span(0)) + b" ",
        to_json(sample_span(0))[:-1],
    ],
    ids=[
        "duplicate-trace-id",
        "escaped-duplicate-trace-id",
        "leading-zero",
        "negative",
        "exponent",
        "u128-overflow",
        "escaped-key",
        "NaN",
        "lone-surrogate",
        "bom",
        "trailing-space",
        "truncated",
    ],
)
def test_payloads_only_the_reference_takes_agree(payload: bytes) -> None:
    assert_same(payload)


def test_extra_span_context_in_an_unknown_field_does_not_shift_link_ids() -> None:
    span = sample_span(4)
    span.links = [Link(2**100, 2, 1, False, (), [], 0)]
    obj = to_json_obj(span)
    obj["extra"] = {"span_context": {"trace_id": 9}}  # ignored by the decoder, but in the text
    payload = compact(obj)
    assert not fast_taken(payload)
    assert decode_json(payload) == span


def test_an_escaped_second_trace_id_key_in_a_link_is_left_to_the_reference() -> None:
    span = sample_span(5)
    span.links = [Link(2**100, 2, 1, False, (), [], 0)]
    payload = to_json(span).replace(b',"span_id":2,', b',"span_id":2,"trace\\u005fid":3,')
    assert b"trace\\u005fid" in payload
    assert not fast_taken(payload)
    assert_same(payload)


def test_without_orjson_the_reference_decoder_does_all_the_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_orjson(_: bytes) -> object:
        raise AssertionError("orjson used although it is marked missing")

    monkeypatch.setattr(wire_json, "_HAVE_ORJSON", False)
    monkeypatch.setattr(wire_json, "_orjson_loads", no_orjson)
    payload = to_json(sample_span(3))
    assert decode_json(payload) == sample_span(3)
