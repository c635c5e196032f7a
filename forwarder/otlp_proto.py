"""OTLP protobuf requests built straight from decoded spans, for the SDK exporters to send.

The SDK's own encoder (`encode_spans`) takes `ReadableSpan`s, and on one core it is the
forwarder's bottleneck: it builds every message from keyword arguments and then deep-copies
them into their parents, and it hashes each span's `Resource` by serialising it to JSON.
Building the request in place (`.add()` and field assignment) is about six times faster,
and it also carries what that encoder leaves out: link trace state, W3C trace flags and
repeated event/link attribute keys exactly as the agent sent them.
"""

from __future__ import annotations

from typing import Any, Sequence

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .exporters import QueuedSpan, ResourceAttrs
from .otlp_json import FLAG_HAS_IS_REMOTE, FLAG_IS_REMOTE, trace_state_text
from .wire import AttrValue, Span


def _set_value(av: Any, v: AttrValue) -> None:
    t = type(v)
    if t is str:
        av.string_value = v
    elif t is bool:
        av.bool_value = v
    elif t is int:
        av.int_value = v
    elif t is float:
        av.double_value = v
    else:
        add = av.array_value.values.add
        for x in v:  # type: ignore[union-attr]
            _set_value(add(), x)


def _set_attrs(repeated: Any, attrs: Sequence[tuple[str, AttrValue]]) -> None:
    add = repeated.add
    for k, v in attrs:
        kv = add()
        kv.key = k
        # Inline the common case (a string) to save a call per attribute.
        if type(v) is str:
            kv.value.string_value = v
        else:
            _set_value(kv.value, v)


def _set_span(p: Any, s: Span) -> None:
    p.trace_id = s.trace_id.to_bytes(16, "big")
    p.span_id = s.span_id.to_bytes(8, "big")
    if s.parent_span_id:
        p.parent_span_id = s.parent_span_id.to_bytes(8, "big")
    if s.trace_state:
        p.trace_state = trace_state_text(s.trace_state)
    if s.trace_flags:
        p.flags = s.trace_flags
    p.name = s.name
    p.kind = s.kind
    p.start_time_unix_nano = s.start_time_unix_nano
    p.end_time_unix_nano = s.end_time_unix_nano
    if s.attributes:
        _set_attrs(p.attributes, s.attributes)
    if s.dropped_attributes_count:
        p.dropped_attributes_count = s.dropped_attributes_count
    if s.events:
        add = p.events.add
        for e in s.events:
            pe = add()
            pe.name = e.name
            pe.time_unix_nano = e.time_unix_nano
            if e.attributes:
                _set_attrs(pe.attributes, e.attributes)
            if e.dropped_attributes_count:
                pe.dropped_attributes_count = e.dropped_attributes_count
    if s.dropped_events_count:
        p.dropped_events_count = s.dropped_events_count
    if s.links:
        add = p.links.add
        for ln in s.links:
            pl = add()
            pl.trace_id = ln.trace_id.to_bytes(16, "big")
            pl.span_id = ln.span_id.to_bytes(8, "big")
            if ln.trace_state:
                pl.trace_state = trace_state_text(ln.trace_state)
            if ln.attributes:
                _set_attrs(pl.attributes, ln.attributes)
            if ln.dropped_attributes_count:
                pl.dropped_attributes_count = ln.dropped_attributes_count
            pl.flags = ln.trace_flags | FLAG_HAS_IS_REMOTE | (FLAG_IS_REMOTE if ln.is_remote else 0)
    if s.dropped_links_count:
        p.dropped_links_count = s.dropped_links_count
    if s.status_code:
        p.status.code = s.status_code
    if s.status_message:
        p.status.message = s.status_message


def encode_request(batch: Sequence[QueuedSpan]) -> ExportTraceServiceRequest:
    """One `ExportTraceServiceRequest`, spans grouped under their resources in arrival order."""
    req = ExportTraceServiceRequest()
    scopes: dict[ResourceAttrs, Any] = {}
    for span, origin in batch:
        res = origin.resource_for(span)
        spans = scopes.get(res)
        if spans is None:
            rs = req.resource_spans.add()
            _set_attrs(rs.resource.attributes, res)
            spans = scopes[res] = rs.scope_spans.add().spans
        _set_span(spans.add(), span)
    return req
