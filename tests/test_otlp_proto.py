"""The OTLP request encoder that writes protobuf bytes directly, against the message-API one.

`encode_request_bytes` is what both OTLP exporters send; `encode_request` builds the same
request through the protobuf message API and is the reference. The bytes must be identical
(field order, proto3 defaults left out, lengths), for any span and any mix of resources.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from kata_debug.forwarder.exporters import Origin
from kata_debug.forwarder.otlp_proto import encode_request, encode_request_bytes, encode_requests, span_bytes
from kata_debug.forwarder.wire import Event, Link, Span
from tests.agent_wire import sample_span
from tests.test_trace_wire import fixture_payloads, spans

_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BASE = (("service.name", "kata-agent"),)
ORIGINS = [
    Origin.make("sb-a", "test", BASE, (("kata.sandbox.id", "sb-a"), ("k8s.pod.name", "pod-a"))),
    Origin.make("sb-b", "test", BASE, (("kata.sandbox.id", "sb-b"),)),
    Origin.make(None, "test", (), ()),  # an empty resource
]


def assert_same_request(batch: list[tuple[Span, Origin]]) -> None:
    assert encode_request_bytes(batch) == encode_request(batch).SerializeToString()


@_SETTINGS
@given(st.lists(st.tuples(spans, st.sampled_from(ORIGINS)), min_size=1, max_size=6))
def test_any_batch_encodes_byte_for_byte_like_the_message_api(batch: list[tuple[Span, Origin]]) -> None:
    assert_same_request(batch)


def test_fixture_spans_encode_byte_for_byte_like_the_message_api() -> None:
    from kata_debug.forwarder.wire import decode_bincode
    from kata_debug.forwarder.wire_json import decode_json

    for fmt, decode in (("bincode", decode_bincode), ("json", decode_json)):
        batch = [(decode(p), ORIGINS[i % 2]) for i, p in enumerate(fixture_payloads(fmt))]
        assert_same_request(batch)


def test_long_fields_get_multi_byte_lengths() -> None:
    span = sample_span(1)
    span.name = "n" * 200
    span.attributes = [("k" * 130, "v" * 125), ("big", "x" * 20_000), ("arr", tuple("y" * 50 for _ in range(400)))]
    span.events = [Event("e" * 300, 1, [("a", "b" * 16_500)], 7)]
    span.links = [Link(1, 2, 3, True, (("k", "v" * 200),), [("l", 1)], 0)]
    span.dropped_attributes_count, span.dropped_events_count, span.dropped_links_count = 2**32 - 1, 300, 1
    span.status_code, span.status_message = 2, "m" * 129
    assert_same_request([(span, ORIGINS[0])])


def test_negative_and_extreme_values() -> None:
    span = sample_span(2)
    span.attributes = [
        ("neg", -1),
        ("min", -(2**63)),
        ("max", 2**63 - 1),
        ("zero", 0),
        ("f", -0.0),
        ("nan", float("nan")),
        ("inf", float("inf")),
        ("t", True),
        ("e", ""),
        ("bools", (False,)),
    ]
    span.trace_id, span.span_id, span.parent_span_id, span.trace_flags = 0, 0, 2**64 - 1, 255
    span.start_time_unix_nano, span.end_time_unix_nano = 0, 2**64 - 1
    assert_same_request([(span, ORIGINS[1])])


def test_an_empty_array_attribute_stays_an_empty_array() -> None:
    span = sample_span(3)
    span.attributes = [("empty", ())]
    (kv,) = (
        ExportTraceServiceRequest.FromString(encode_request_bytes([(span, ORIGINS[0])]))
        .resource_spans[0]
        .scope_spans[0]
        .spans[0]
        .attributes
    )
    assert kv.key == "empty" and kv.value.HasField("array_value") and len(kv.value.array_value.values) == 0
    assert_same_request([(span, ORIGINS[0])])


def test_a_lone_surrogate_is_replaced_instead_of_failing_the_batch() -> None:
    """A JSON `\\ud800` escape decodes to a lone surrogate, which UTF-8 cannot carry."""
    span = sample_span(4)
    span.name = "bad\ud800name"
    span.attributes = [("k\udfff", "v\ud800")]
    req = ExportTraceServiceRequest.FromString(encode_request_bytes([(span, ORIGINS[0]), (sample_span(5), ORIGINS[0])]))
    got = req.resource_spans[0].scope_spans[0].spans
    assert [s.name for s in got] == ["bad?name", "rpc.create_container"]
    assert (got[0].attributes[0].key, got[0].attributes[0].value.string_value) == ("k?", "v?")


def test_span_bytes_is_one_span_message() -> None:
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

    span = sample_span(6)
    pb = PbSpan.FromString(span_bytes(span))
    assert (pb.name, pb.span_id, pb.start_time_unix_nano) == (
        span.name,
        span.span_id.to_bytes(8, "big"),
        span.start_time_unix_nano,
    )


@_SETTINGS
@given(st.lists(st.tuples(spans, st.sampled_from(ORIGINS)), min_size=1, max_size=8), st.integers(1, 3000))
def test_a_batch_is_cut_into_consecutive_requests_that_fit_the_size_cap(
    batch: list[tuple[Span, Origin]], max_bytes: int
) -> None:
    requests = encode_requests(batch, max_bytes)
    start = 0
    for req in requests:
        assert req.spans >= 1
        assert req.data == encode_request_bytes(batch[start : start + req.spans])
        assert len(req.data) <= max_bytes or req.spans == 1, "only a span that alone exceeds the cap goes over it"
        start += req.spans
    assert start == len(batch)


def test_a_batch_under_the_cap_is_one_request() -> None:
    batch = [(sample_span(i), ORIGINS[i % 2]) for i in range(100)]
    (req,) = encode_requests(batch)
    assert req.spans == 100 and req.data == encode_request_bytes(batch)
