"""The agent trace wire format: both payload formats, framing, auto-detection, hostile input."""

from __future__ import annotations

import json
import math
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kata_debug.forwarder.formats import FormatSniffer
from kata_debug.forwarder.frames import FrameReader, FrameTooLarge
from kata_debug.forwarder.otlp_json import key_values, span_json
from kata_debug.forwarder.spans import DecodeError, Event, Link, Span
from kata_debug.forwarder.wire_bincode import decode_bincode
from kata_debug.forwarder.wire_json import decode_json
from tests.agent_wire import frame, frames, sample_span, to_bincode, to_json
from tests.conftest import SHARED

# The repository keeps a copy so the suite does not depend on shared/ being beside it.
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "agent-trace"


def fixture_payloads(fmt: str) -> list[bytes]:
    data = (FIXTURES / fmt / f"stream.{fmt}.bin").read_bytes()
    reader = FrameReader()
    payloads = reader.feed(data)
    assert reader.pending == 0
    return payloads


def expected_spans(fmt: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (FIXTURES / fmt / "expected.jsonl").read_text().splitlines()]


def fixture_view(span: Span) -> dict[str, Any]:
    """Our OTLP/JSON span in the fixture's shape.

    The fixture leaves out `flags` and the (all zero) per-event/per-link dropped counts, sorts
    attributes by key and adds the span's own resource under `resource`. Nothing else is
    touched, and the dropped counts we drop are checked to be zero first.
    """
    d = span_json(span)
    d.pop("flags")
    for part in d["events"] + d["links"]:
        assert part.pop("droppedAttributesCount") == 0
        part.pop("flags", None)
    for part in [d] + d["events"] + d["links"]:
        part["attributes"].sort(key=lambda kv: kv["key"])
    d["resource"] = None if span.resource is None else sorted(key_values(span.resource), key=lambda kv: kv["key"])
    return d


def strict(value: Any) -> Any:
    """Make 3 and 3.0 (and True and 1) compare unequal, as they do in JSON text."""
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strict(v) for v in value]
    return (type(value).__name__, value)


@pytest.mark.parametrize("fmt,decode", [("bincode", decode_bincode), ("json", decode_json)])
def test_fixture_streams_decode_exactly_to_expected(fmt: str, decode: Any) -> None:
    payloads = fixture_payloads(fmt)
    expected = expected_spans(fmt)
    assert len(payloads) == len(expected) > 100
    for i, (payload, want) in enumerate(zip(payloads, expected)):
        assert strict(fixture_view(decode(payload))) == strict(want), f"{fmt} frame {i}"


@pytest.mark.parametrize("fmt", ["bincode", "json"])
def test_auto_detection_settles_on_the_right_format_and_decodes_the_same(fmt: str) -> None:
    sniffer = FormatSniffer("auto")
    spans = [sniffer.decode(p) for p in fixture_payloads(fmt)]
    assert sniffer.settled == fmt
    assert [strict(fixture_view(s)) for s in spans] == [strict(e) for e in expected_spans(fmt)]


def test_fixture_covers_every_field_kind() -> None:
    """The exactness test above is only as good as the fixture's coverage: check it."""
    spans = [decode_bincode(p) for p in fixture_payloads("bincode")] + [
        decode_json(p) for p in fixture_payloads("json")
    ]
    values = [v for s in spans for _, v in s.attributes + [a for e in s.events for a in e.attributes]]
    assert {type(v) for v in values} == {bool, int, float, str, tuple}
    assert {type(x) for v in values if isinstance(v, tuple) for x in v} == {bool, int, float, str}
    assert {s.kind for s in spans} == {1, 2, 3, 4, 5} and {s.status_code for s in spans} == {0, 1, 2}
    assert any(s.links and s.links[0].trace_state for s in spans) or any(s.trace_state for s in spans)
    assert any(s.resource for s in spans) and any(s.dropped_attributes_count for s in spans)
    assert any(s.parent_span_id == 0 for s in spans) and any(s.trace_id > 2**64 for s in spans)


def test_bincode_span_whose_first_byte_is_a_brace_is_still_bincode_in_auto_mode() -> None:
    span = sample_span(1)
    span.trace_id = (span.trace_id & ~0xFF) | ord("{")  # bincode writes the low byte first
    payload = to_bincode(span)
    assert payload[:1] == b"{"
    sniffer = FormatSniffer("auto")
    assert sniffer.decode(payload) == span
    assert sniffer.settled == "bincode"


def test_auto_mode_keeps_the_settled_format_when_a_later_frame_is_of_the_other_one() -> None:
    sniffer = FormatSniffer("auto")
    sniffer.decode(to_json(sample_span(1)))
    with pytest.raises(DecodeError, match="bincode|json"):
        sniffer.decode(to_bincode(sample_span(2)))
    assert sniffer.settled == "json"


def test_explicit_format_rejects_the_other_format() -> None:
    with pytest.raises(DecodeError, match="^json:"):
        FormatSniffer("json").decode(to_bincode(sample_span(1)))
    with pytest.raises(DecodeError, match="^bincode:"):
        FormatSniffer("bincode").decode(to_json(sample_span(1)))


def test_undecidable_first_frame_leaves_auto_mode_open() -> None:
    sniffer = FormatSniffer("auto")
    with pytest.raises(DecodeError, match="neither format"):
        sniffer.decode(b"{not a span")
    assert sniffer.settled is None
    assert sniffer.decode(to_bincode(sample_span(3))).span_id == sample_span(3).span_id


def test_test_writers_reproduce_the_real_serializers() -> None:
    """tests/agent_wire.py writes frames like bincode/serde_json do (used by later tests)."""
    for fmt, decode, encode in (("bincode", decode_bincode, to_bincode), ("json", decode_json, to_json)):
        payloads = fixture_payloads(fmt)
        identical = 0
        for p in payloads:
            span = decode(p)
            again = encode(span)
            assert decode(again) == span
            identical += again == p
        # Byte-identical wherever the fixture's evict_list/queue shape matches our defaults.
        assert identical > len(payloads) // 3, fmt


def test_non_finite_floats() -> None:
    span = sample_span(0)
    span.attributes = [("nan", math.nan), ("inf", math.inf), ("arr", (1.5, -math.inf))]
    out = decode_bincode(to_bincode(span))
    assert math.isnan(out.attributes[0][1]) and out.attributes[1][1] == math.inf
    assert span_json(out)["attributes"][0]["value"] == {"doubleValue": "NaN"}
    assert span_json(out)["attributes"][2]["value"] == {
        "arrayValue": {"values": [{"doubleValue": 1.5}, {"doubleValue": "-Infinity"}]}
    }
    # serde_json writes non-finite floats as null: the value is unknown, we say NaN.
    assert math.isnan(decode_json(to_json(span)).attributes[1][1])


def test_out_of_range_fields_are_decode_errors() -> None:
    obj = json.loads(to_json(sample_span(0)))
    for path, bad in [
        (("span_context", "trace_id"), 2**128),
        (("span_context", "span_id"), -1),
        (("span_context", "trace_flags"), 256),
        (("span_context", "is_remote"), 0),
        (("parent_span_id",), True),
        (("span_kind",), "Sideways"),
        (("status_code",), 2),
        (("start_time", "nanos_since_epoch"), 2**32),
        (("start_time", "secs_since_epoch"), 2**64),
        (("attributes", "map", "code.lineno"), {"I64": 2**63}),
        (("attributes", "map", "code.lineno"), {"Float": 1.0}),
        (("name",), None),
    ]:
        mutated = json.loads(json.dumps(obj))
        target = mutated
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = bad
        with pytest.raises(DecodeError):
            decode_json(json.dumps(mutated).encode())
    payload = bytearray(to_bincode(sample_span(0)))
    payload[25] = 2  # is_remote
    with pytest.raises(DecodeError, match="is_remote 2"):
        decode_bincode(bytes(payload))
    with pytest.raises(DecodeError, match="trailing"):
        decode_bincode(to_bincode(sample_span(0)) + b"\x00")


# --------------------------------------------------------------------------- framing


def test_frames_split_at_every_byte_boundary_reassemble() -> None:
    payloads = fixture_payloads("bincode")[:5]
    stream = frames(payloads)
    for cut in range(len(stream) + 1):
        reader = FrameReader()
        got = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert got == payloads and reader.pending == 0


def test_oversized_header_raises_without_waiting_for_the_body() -> None:
    reader = FrameReader(max_frame_bytes=1024)
    good = frame(b"x" * 10)
    with pytest.raises(FrameTooLarge) as info:
        reader.feed(good + struct.pack(">Q", 2**62))
    assert info.value.length == 2**62 and info.value.frames == [b"x" * 10] and reader.frames == 1


def test_truncated_frame_is_left_pending() -> None:
    reader = FrameReader()
    assert reader.feed(frame(b"abc")[:-1]) == []
    assert reader.pending == 10 and reader.pending_header() == 3


def test_a_maximum_size_frame_in_512_byte_pieces_is_returned_once_complete() -> None:
    """Each piece of an incomplete frame is only held (linear in the bytes fed); the frame
    comes out once, intact, with the next frame's first bytes held for later."""
    payload = bytes(range(256)) * 4096  # 1 MiB, the default limit
    nxt = frame(b"next")
    stream = frame(payload) + nxt[:5]
    reader = FrameReader()
    pieces = [stream[i : i + 512] for i in range(0, len(stream), 512)]
    got: list[bytes] = []
    for n, piece in enumerate(pieces, 1):
        out = reader.feed(piece)
        if n * 512 < 8 + len(payload):
            assert out == [] and reader.frames == 0
            assert reader.pending == n * 512
            assert reader.pending_header() == (len(payload) if n * 512 >= 8 else None)
        got += out
    assert len(got) == 1 and got[0] == payload and type(got[0]) is bytes
    assert reader.frames == 1 and reader.pending == 5 and reader.pending_header() is None
    assert reader.feed(nxt[5:]) == [b"next"] and reader.pending == 0 and reader.frames == 2


def test_frame_pieces_of_any_size_and_type_reassemble_in_order() -> None:
    payloads = [b"", b"a" * 700, b"b", b"c" * 3000, b"d" * 9]
    stream = frames(payloads)
    for step in (1, 3, 7, 64, 511, 4096):
        reader = FrameReader()
        got: list[bytes] = []
        for i in range(0, len(stream), step):
            got += reader.feed(memoryview(bytearray(stream[i : i + step])))
        assert got == payloads and reader.pending == 0 and reader.frames == len(payloads), step


def test_oversized_header_arriving_in_pieces_raises_as_soon_as_it_is_complete() -> None:
    reader = FrameReader(max_frame_bytes=1024)
    bad = struct.pack(">Q", 1025)
    assert reader.feed(frame(b"ok") + bad[:3]) == [b"ok"]
    with pytest.raises(FrameTooLarge) as info:
        reader.feed(bad[3:])
    assert info.value.length == 1025 and info.value.frames == [] and reader.frames == 1
    assert reader.pending == 8  # held, never allocated for


def test_oversized_header_after_a_frame_completed_from_held_bytes_carries_that_frame() -> None:
    reader = FrameReader(max_frame_bytes=1024)
    good = frame(b"y" * 600)
    assert reader.feed(good[:100]) == []
    with pytest.raises(FrameTooLarge) as info:
        reader.feed(good[100:] + struct.pack(">Q", 2**40) + b"zz")
    assert info.value.frames == [b"y" * 600] and reader.frames == 1


# --------------------------------------------------------------------------- property tests

_names = st.text(max_size=12)
_scalar = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    _names,
)
_array = st.one_of(
    st.lists(st.booleans(), min_size=1, max_size=4).map(tuple),
    st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=4).map(tuple),
    st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=4).map(tuple),
    st.lists(_names, max_size=4).map(tuple),
)
_value = st.one_of(_scalar, _array)
_map = st.dictionaries(_names, _value, max_size=5).map(lambda d: list(d.items()))
_vec = st.lists(st.tuples(_names, _value), max_size=4)
_state = st.lists(st.tuples(_names, _names), max_size=3).map(tuple)
_u32 = st.integers(0, 2**32 - 1)
_ns = st.integers(0, 2**64 - 1)

_events = st.lists(st.builds(Event, _names, _ns, _vec, _u32), max_size=3)
_links = st.lists(
    st.builds(
        Link,
        st.integers(0, 2**128 - 1),
        st.integers(0, 2**64 - 1),
        st.integers(0, 255),
        st.booleans(),
        _state,
        _vec,
        _u32,
    ),
    max_size=2,
)
spans = st.builds(
    Span,
    trace_id=st.integers(0, 2**128 - 1),
    span_id=st.integers(0, 2**64 - 1),
    trace_flags=st.integers(0, 255),
    is_remote=st.booleans(),
    trace_state=_state,
    parent_span_id=st.integers(0, 2**64 - 1),
    kind=st.sampled_from([1, 2, 3, 4, 5]),
    name=_names,
    start_time_unix_nano=_ns,
    end_time_unix_nano=_ns,
    attributes=_map,
    dropped_attributes_count=_u32,
    events=_events,
    dropped_events_count=_u32,
    links=_links,
    dropped_links_count=_u32,
    status_code=st.sampled_from([0, 1, 2]),
    status_message=_names,
    resource=st.one_of(st.none(), _map.filter(bool)),
)
_FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FAST
@given(spans)
def test_any_span_round_trips_through_both_formats(span: Span) -> None:
    assert decode_bincode(to_bincode(span)) == span
    assert decode_json(to_json(span)) == span
    assert FormatSniffer("auto").decode(to_bincode(span)) == span


def _decode_only_decode_errors(payload: bytes) -> None:
    for decode in (decode_bincode, decode_json, FormatSniffer("auto").decode):
        try:
            decode(payload)
        except DecodeError:
            pass


@_FAST
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_decode_error(payload: bytes) -> None:
    _decode_only_decode_errors(payload)


_SEEDS = [to_bincode(sample_span(7)), to_json(sample_span(7))]


@_FAST
@given(
    st.sampled_from(_SEEDS),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, 2000),
)
def test_mutated_and_truncated_spans_raise_only_decode_error(
    seed: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(seed)
    for pos, byte in flips:
        data[pos % len(data)] = byte
    _decode_only_decode_errors(bytes(data))
    _decode_only_decode_errors(bytes(data[: cut % len(data)]))


@_FAST
@given(
    st.sampled_from(["<Q", "<I"]),
    st.integers(0, 400),
    st.sampled_from([2**32 - 1, 2**40, 2**63, 2**64 - 1]),
)
def test_huge_declared_lengths_never_allocate_beyond_the_frame(fmt: str, pos: int, huge: int) -> None:
    """A hostile length or count is checked against the bytes present before it is used."""
    data = bytearray(to_bincode(sample_span(3)))
    size = struct.calcsize(fmt)
    pos %= len(data) - size
    data[pos : pos + size] = struct.pack(fmt, huge % (256**size))
    payload = bytes(data)
    tracemalloc.start()
    try:
        _decode_only_decode_errors(payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * len(payload) + 256 * 1024


def test_deeply_nested_or_huge_number_json_is_a_decode_error() -> None:
    for payload in (b"[" * 100_000, b'{"span_context":' + b"9" * 10_000 + b"}", b"\xff\xfe{}", b""):
        with pytest.raises(DecodeError):
            decode_json(payload)
        with pytest.raises(DecodeError):
            FormatSniffer("auto").decode(payload)


def test_repository_copy_of_the_trace_fixtures_matches_shared() -> None:
    shared = SHARED / "fixtures" / "agent-trace"
    if not shared.is_dir():
        pytest.skip("shared/ is not beside this checkout")
    for rel in ("bincode/stream.bincode.bin", "bincode/expected.jsonl", "json/stream.json.bin", "json/expected.jsonl"):
        assert (FIXTURES / rel).read_bytes() == (shared / rel).read_bytes(), rel
