"""OTLP/JSON encoding of decoded spans, as the OpenTelemetry Collector's `otlpjsonfile` reads it.

The protobuf JSON mapping would be wrong here in two ways that matter to every OTLP/JSON
reader: trace and span ids are lower-case hex (not base64) and the field names are
lowerCamelCase. 64-bit integers are strings and enums are integers, as the OTLP
specification asks. One `ExportTraceServiceRequest` is written per line, so a file is
both appendable and greppable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kata_debug.forwarder.spans import AttrValue, Event, Link, QueuedSpan, Span, resource_key

# OTLP SpanFlags bits: 8 says whether bit 9 (context is remote) is known.
FLAG_HAS_IS_REMOTE = 0x100
FLAG_IS_REMOTE = 0x200

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _double(v: float) -> float | str:
    if math.isfinite(v):
        return v
    if math.isnan(v):
        return "NaN"
    return "Infinity" if v > 0 else "-Infinity"


def any_value(v: AttrValue) -> dict[str, Any]:
    """One `AnyValue`. bool is tested before int: in Python a bool is an int."""
    t = type(v)
    if t is str:
        return {"stringValue": v}
    if t is bool:
        return {"boolValue": v}
    if t is int:
        return {"intValue": str(v)}
    if t is float:
        return {"doubleValue": _double(v)}  # type: ignore[arg-type]
    if t is tuple or t is list:
        return {"arrayValue": {"values": [any_value(x) for x in v]}}  # type: ignore[union-attr]
    raise TypeError(f"not an attribute value: {v!r}")


def key_values(attrs: Iterable[tuple[str, AttrValue]]) -> list[dict[str, Any]]:
    return [{"key": k, "value": any_value(v)} for k, v in attrs]


def trace_id_hex(trace_id: int) -> str:
    return f"{trace_id:032x}"


def span_id_hex(span_id: int) -> str:
    return f"{span_id:016x}" if span_id else ""


def trace_state_text(pairs: Sequence[tuple[str, str]]) -> str:
    """W3C tracestate header form (`k1=v1,k2=v2`), as OTLP carries it."""
    return ",".join(f"{k}={v}" for k, v in pairs)


def _event(ev: Event) -> dict[str, Any]:
    return {
        "timeUnixNano": str(ev.time_unix_nano),
        "name": ev.name,
        "attributes": key_values(ev.attributes),
        "droppedAttributesCount": ev.dropped_attributes_count,
    }


def _link(ln: Link) -> dict[str, Any]:
    return {
        "traceId": trace_id_hex(ln.trace_id),
        "spanId": span_id_hex(ln.span_id),
        "traceState": trace_state_text(ln.trace_state),
        "attributes": key_values(ln.attributes),
        "droppedAttributesCount": ln.dropped_attributes_count,
        "flags": ln.trace_flags | FLAG_HAS_IS_REMOTE | (FLAG_IS_REMOTE if ln.is_remote else 0),
    }


def span_json(span: Span) -> dict[str, Any]:
    """One OTLP `Span` message in the OTLP/JSON encoding.

    `flags` carries the W3C trace flags only: the agent reports whether *its own* context is
    remote, while OTLP's remote bits describe the parent's, which the agent does not send.
    """
    return {
        "traceId": trace_id_hex(span.trace_id),
        "spanId": span_id_hex(span.span_id),
        "traceState": trace_state_text(span.trace_state),
        "parentSpanId": span_id_hex(span.parent_span_id),
        "flags": span.trace_flags,
        "name": span.name,
        "kind": int(span.kind),
        "startTimeUnixNano": str(span.start_time_unix_nano),
        "endTimeUnixNano": str(span.end_time_unix_nano),
        "attributes": key_values(span.attributes),
        "droppedAttributesCount": span.dropped_attributes_count,
        "events": [_event(e) for e in span.events],
        "droppedEventsCount": span.dropped_events_count,
        "links": [_link(ln) for ln in span.links],
        "droppedLinksCount": span.dropped_links_count,
        "status": {"code": int(span.status_code), "message": span.status_message},
    }


@dataclass(frozen=True)
class ResourceGroup:
    """Spans that share one resource (one `ResourceSpans` entry)."""

    attributes: tuple[tuple[str, AttrValue], ...]
    spans: list[Span]


def request_json(groups: Iterable[ResourceGroup]) -> dict[str, Any]:
    """An `ExportTraceServiceRequest`. No scope: the agent's tracer name is not on the wire."""
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": key_values(g.attributes)},
                "scopeSpans": [{"scope": {}, "spans": [span_json(s) for s in g.spans]}],
            }
            for g in groups
        ]
    }


def request_line(groups: Iterable[ResourceGroup]) -> str:
    """One OTLP/JSON line (with the trailing newline)."""
    return _dumps(request_json(groups)) + "\n"


def group_by_resource(items: Iterable[tuple[Span, tuple[tuple[str, AttrValue], ...]]]) -> list[ResourceGroup]:
    """Group (span, resource) pairs, keeping first-seen order of resources and of spans."""
    groups: dict[object, ResourceGroup] = {}
    for span, res in items:
        key = resource_key(res)  # not `res`: True == 1, yet they are different resources
        group = groups.get(key)
        if group is None:
            group = groups[key] = ResourceGroup(res, [])
        group.spans.append(span)
    return list(groups.values())


def batch_line(batch: Iterable[QueuedSpan]) -> str:
    """A batch of queued spans as one OTLP/JSON line, each span under its own resource."""
    return request_line(group_by_resource((span, origin.resource_for(span)) for span, origin in batch))
