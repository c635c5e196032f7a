"""The OTLP protobuf request encoder (`forwarder.otlp_proto`), what both OTLP exporters send.

A request must carry every span exactly as decoded (ids, times, attributes with their value
types, events, links, dropped counts, status), each under the resource the host assigned
it, resources in first-seen order and spans in arrival order; and a batch above the size
cap must become consecutive requests under it.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from kata_debug.forwarder.otlp_json import FLAG_HAS_IS_REMOTE, FLAG_IS_REMOTE, trace_state_text
from kata_debug.forwarder.otlp_proto import encode_requests, span_bytes
from kata_debug.forwarder.spans import AttrValue, Event, Link, Origin, Span
from kata_debug.forwarder.wire_bincode import decode_bincode
from kata_debug.forwarder.wire_json import decode_json
from tests.agent_wire import sample_span
from tests.test_trace_wire import fixture_payloads, spans

_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BASE = (("service.name", "kata-agent"),)
ORIGINS = [
    Origin.make("sb-a", "test", BASE, (("kata.sandbox.id", "sb-a"), ("k8s.pod.name", "pod-a"))),
    Origin.make("sb-b", "test", BASE, (("kata.sandbox.id", "sb-b"),)),
    Origin.make(None, "test", (), ()),  # an empty resource
    # Resources Python calls equal to each other, which OTLP encodes differently.
    Origin.make("c1", "test", (), (("v", True), ("arr", (1, 2)))),
    Origin.make("c2", "test", (), (("v", 1), ("arr", (True, False)))),
    Origin.make("c3", "test", (), (("v", 1.0), ("arr", (1.0, 2.0)), ("z", 0.0))),
    Origin.make("c4", "test", (), (("v", 1.0), ("arr", (1.0, 2.0)), ("z", -0.0))),
]


def request(batch: list[tuple[Span, Origin]]) -> ExportTraceServiceRequest:
    """The batch as one request (no size cap), parsed back by the protobuf runtime."""
    (req,) = encode_requests(batch, 1 << 62)
    return ExportTraceServiceRequest.FromString(req.data)


def typed(v: Any) -> Any:
    """A value with its type made part of equality (True != 1 != 1.0, -0.0 != 0.0, NaN == NaN)."""
    if isinstance(v, (tuple, list)):
        return ("seq", tuple(typed(x) for x in v))
    if isinstance(v, float):
        return ("float", math.copysign(1, v), "nan" if math.isnan(v) else abs(v))
    return (type(v).__name__, v)


def attrs_of(values: Any) -> Any:
    return [(kv.key, typed(value_of(kv.value))) for kv in values]


def value_of(av: Any) -> AttrValue:
    which = av.WhichOneof("value")
    if which == "array_value":
        return tuple(value_of(x) for x in av.array_value.values)
    return getattr(av, which)  # type: ignore[no-any-return]


def sent(req: ExportTraceServiceRequest) -> list[tuple[Any, Any]]:
    """(resource, span) pairs as a receiver reads them, in request order."""
    out = []
    for rs in req.resource_spans:
        (scope,) = rs.scope_spans
        for p in scope.spans:
            out.append(
                (
                    attrs_of(rs.resource.attributes),
                    (
                        int.from_bytes(p.trace_id, "big"),
                        int.from_bytes(p.span_id, "big"),
                        int.from_bytes(p.parent_span_id, "big") if p.parent_span_id else 0,
                        p.trace_state,
                        p.flags,
                        p.name,
                        p.kind,
                        p.start_time_unix_nano,
                        p.end_time_unix_nano,
                        attrs_of(p.attributes),
                        p.dropped_attributes_count,
                        [
                            (e.name, e.time_unix_nano, attrs_of(e.attributes), e.dropped_attributes_count)
                            for e in p.events
                        ],
                        p.dropped_events_count,
                        [
                            (
                                int.from_bytes(ln.trace_id, "big"),
                                int.from_bytes(ln.span_id, "big"),
                                ln.trace_state,
                                attrs_of(ln.attributes),
                                ln.dropped_attributes_count,
                                ln.flags,
                            )
                            for ln in p.links
                        ],
                        p.dropped_links_count,
                        p.status.code,
                        p.status.message,
                    ),
                )
            )
    return out


def expected(batch: list[tuple[Span, Origin]]) -> list[tuple[Any, Any]]:
    """The same pairs from the decoded spans: grouped by typed resource, first seen first."""
    groups: dict[Any, list[tuple[Any, Any]]] = {}
    for s, origin in batch:
        res = [(k, typed(v)) for k, v in origin.resource_for(s)]
        span = (
            s.trace_id,
            s.span_id,
            s.parent_span_id,
            trace_state_text(s.trace_state),
            s.trace_flags,
            s.name,
            s.kind,
            s.start_time_unix_nano,
            s.end_time_unix_nano,
            [(k, typed(v)) for k, v in s.attributes],
            s.dropped_attributes_count,
            [
                (e.name, e.time_unix_nano, [(k, typed(v)) for k, v in e.attributes], e.dropped_attributes_count)
                for e in s.events
            ],
            s.dropped_events_count,
            [
                (
                    ln.trace_id,
                    ln.span_id,
                    trace_state_text(ln.trace_state),
                    [(k, typed(v)) for k, v in ln.attributes],
                    ln.dropped_attributes_count,
                    ln.trace_flags | FLAG_HAS_IS_REMOTE | (FLAG_IS_REMOTE if ln.is_remote else 0),
                )
                for ln in s.links
            ],
            s.dropped_links_count,
            s.status_code,
            s.status_message,
        )
        groups.setdefault(repr(res), []).append((res, span))
    return [pair for pairs in groups.values() for pair in pairs]


def assert_carries(batch: list[tuple[Span, Origin]]) -> None:
    assert sent(request(batch)) == expected(batch)


@_SETTINGS
@given(st.lists(st.tuples(spans, st.sampled_from(ORIGINS)), min_size=1, max_size=6))
def test_any_batch_reaches_the_receiver_as_decoded_under_its_resource(batch: list[tuple[Span, Origin]]) -> None:
    assert_carries(batch)


def test_fixture_spans_reach_the_receiver_as_decoded() -> None:
    for decode, fmt in ((decode_bincode, "bincode"), (decode_json, "json")):
        assert_carries([(decode(p), ORIGINS[i % 2]) for i, p in enumerate(fixture_payloads(fmt))])


def test_resources_python_calls_equal_are_kept_apart() -> None:
    """True == 1 == 1.0 and (1, 2) == (True, False)... in Python; not on the wire."""
    batch = [(sample_span(i), ORIGINS[3 + i % 4]) for i in range(8)]
    req = request(batch)
    assert [len(rs.scope_spans[0].spans) for rs in req.resource_spans] == [2, 2, 2, 2]
    assert [rs.resource.attributes[0].value.WhichOneof("value") for rs in req.resource_spans] == [
        "bool_value",
        "int_value",
        "double_value",
        "double_value",
    ]
    assert_carries(batch)


def test_long_fields_and_extreme_values() -> None:
    span = sample_span(1)
    span.name = "n" * 200
    span.attributes = [
        ("k" * 130, "v" * 125),
        ("big", "x" * 20_000),
        ("arr", tuple("y" * 50 for _ in range(400))),
        ("neg", -1),
        ("min", -(2**63)),
        ("max", 2**63 - 1),
        ("f", -0.0),
        ("nan", float("nan")),
        ("inf", float("inf")),
        ("bools", (False,)),
    ]
    span.events = [Event("e" * 300, 1, [("a", "b" * 16_500)], 7)]
    span.links = [Link(1, 2, 3, True, (("k", "v" * 200),), [("l", 1)], 0)]
    span.dropped_attributes_count, span.dropped_events_count, span.dropped_links_count = 2**32 - 1, 300, 1
    span.status_code, span.status_message = 2, "m" * 129
    span.trace_id, span.span_id, span.parent_span_id, span.trace_flags = 0, 0, 2**64 - 1, 255
    span.start_time_unix_nano, span.end_time_unix_nano = 0, 2**64 - 1
    assert_carries([(span, ORIGINS[0])])


def test_an_empty_array_attribute_stays_an_empty_array() -> None:
    span = sample_span(3)
    span.attributes = [("empty", ())]
    (kv,) = request([(span, ORIGINS[0])]).resource_spans[0].scope_spans[0].spans[0].attributes
    assert kv.key == "empty" and kv.value.HasField("array_value") and len(kv.value.array_value.values) == 0


def test_a_lone_surrogate_is_replaced_instead_of_failing_the_batch() -> None:
    """A JSON `\\ud800` escape decodes to a lone surrogate, which UTF-8 cannot carry."""
    span = sample_span(4)
    span.name = "bad\ud800name"
    span.attributes = [("k\udfff", "v\ud800"), ("arr", ("ok", "x\udc00"))]
    span.resource = [("guest.res", "r\ud800")]
    (req,) = encode_requests([(span, ORIGINS[0]), (sample_span(5), ORIGINS[0])], 1 << 20)
    got = ExportTraceServiceRequest.FromString(req.data)
    assert [s.name for rs in got.resource_spans for s in rs.scope_spans[0].spans] == [
        "bad?name",
        "rpc.create_container",
    ]
    first = got.resource_spans[0].scope_spans[0].spans[0]
    assert attrs_of(first.attributes) == [("k?", typed("v?")), ("arr", typed(("ok", "x?")))]
    assert ("guest.res", typed("r?")) in attrs_of(got.resource_spans[0].resource.attributes)


@_SETTINGS
@given(st.lists(st.tuples(spans, st.sampled_from(ORIGINS)), min_size=1, max_size=8), st.integers(1, 3000))
def test_a_batch_is_cut_into_consecutive_requests_that_fit_the_size_cap(
    batch: list[tuple[Span, Origin]], max_bytes: int
) -> None:
    requests = encode_requests(batch, max_bytes)
    start = 0
    for req in requests:
        assert req.spans >= 1
        assert req.data == encode_requests(batch[start : start + req.spans], 1 << 62)[0].data
        assert len(req.data) <= max_bytes or req.spans == 1, "only a span that alone exceeds the cap goes over it"
        start += req.spans
    assert start == len(batch)


def test_a_cut_batch_uses_the_room_it_has() -> None:
    """Cutting is not needlessly fine: each request but the last could not take the next span."""
    batch = [(sample_span(i), ORIGINS[i % 3]) for i in range(300)]
    requests = encode_requests(batch, 4096)
    start = 0
    for req in requests[:-1]:
        start += req.spans
        assert len(encode_requests(batch[start - req.spans : start + 1], 1 << 62)[0].data) > 4096 * 0.9
    assert sum(r.spans for r in requests) == 300


def test_a_batch_under_the_cap_is_one_request() -> None:
    batch = [(sample_span(i), ORIGINS[i % 2]) for i in range(100)]
    (req,) = encode_requests(batch, 3 * 1024 * 1024)
    assert req.spans == 100 and ExportTraceServiceRequest.FromString(req.data) == request(batch)


def test_span_bytes_is_one_span_message() -> None:
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

    span = sample_span(6)
    pb = PbSpan.FromString(span_bytes(span))
    assert (pb.name, pb.span_id, pb.start_time_unix_nano) == (
        span.name,
        span.span_id.to_bytes(8, "big"),
        span.start_time_unix_nano,
    )


def test_a_resource_seen_in_an_earlier_batch_is_not_confused_with_an_equal_one_of_another_type() -> None:
    """The encoder caches resource encodings across batches: True and 1 must not share one."""
    first = request([(sample_span(1), ORIGINS[3])])
    second = request([(sample_span(2), ORIGINS[4])])
    assert first.resource_spans[0].resource.attributes[0].value.WhichOneof("value") == "bool_value"
    assert second.resource_spans[0].resource.attributes[0].value.WhichOneof("value") == "int_value"
