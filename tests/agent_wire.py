"""Write agent trace frames the way the kata-agent does, for tests and benchmarks.

bincode 1.3.3 defaults (little-endian, fixed-width integers, u64 lengths, u32 enum tags,
1-byte Option/bool tags) over the opentelemetry 0.14 `SpanData` field order, and compact
serde_json over the 0.17 shape. `tests/test_trace_wire.py` checks these writers against
the real-serializer fixtures before anything relies on them.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from typing import Any

from kata_debug.forwarder.spans import AttrValue, Span

_KIND_TAG = {3: 0, 2: 1, 4: 2, 5: 3, 1: 4}  # OTLP kind -> agent enum tag (Client..Internal)
_KIND_NAME = {3: "Client", 2: "Server", 4: "Producer", 5: "Consumer", 1: "Internal"}
_STATUS_NAME = {0: "Unset", 1: "Ok", 2: "Error"}
_NS = 1_000_000_000


def frame(payload: bytes) -> bytes:
    return struct.pack(">Q", len(payload)) + payload


def frames(payloads: Iterable[bytes]) -> bytes:
    return b"".join(frame(p) for p in payloads)


# --------------------------------------------------------------------------- bincode


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _value(v: AttrValue) -> bytes:
    if isinstance(v, bool):
        return struct.pack("<IB", 0, v)
    if isinstance(v, int):
        return struct.pack("<Iq", 1, v)
    if isinstance(v, float):
        return struct.pack("<Id", 2, v)
    if isinstance(v, str):
        return struct.pack("<I", 3) + _s(v)
    items = list(v)
    head = struct.pack("<I", 4)
    # An empty array's element type is not known; the agent would have one: say String.
    first = items[0] if items else ""
    if isinstance(first, bool):
        return head + struct.pack("<IQ", 0, len(items)) + bytes(int(x) for x in items)
    if isinstance(first, int):
        return head + struct.pack(f"<IQ{len(items)}q", 1, len(items), *items)
    if isinstance(first, float):
        return head + struct.pack(f"<IQ{len(items)}d", 2, len(items), *items)
    return head + struct.pack("<IQ", 3, len(items)) + b"".join(_s(x) for x in items)


def _kvs(attrs: Iterable[tuple[str, AttrValue]]) -> bytes:
    attrs = list(attrs)
    return struct.pack("<Q", len(attrs)) + b"".join(_s(k) + _value(v) for k, v in attrs)


def _ctx(trace_id: int, span_id: int, flags: int, remote: bool, state: tuple[tuple[str, str], ...] | None) -> bytes:
    out = struct.pack("<QQQBB", trace_id & (2**64 - 1), trace_id >> 64, span_id, flags, remote)
    if state is None:
        return out + b"\x00"
    return out + b"\x01" + struct.pack("<Q", len(state)) + b"".join(_s(k) + _s(v) for k, v in state)


def _time(ns: int) -> bytes:
    return struct.pack("<QI", ns // _NS, ns % _NS)


def to_bincode(span: Span, max_len: int = 128) -> bytes:
    """bincode::serialize of an opentelemetry 0.14 SpanData carrying `span`."""
    out = [
        _ctx(span.trace_id, span.span_id, span.trace_flags, span.is_remote, span.trace_state or None),
        struct.pack("<QI", span.parent_span_id, _KIND_TAG[span.kind]),
        _s(span.name),
        _time(span.start_time_unix_nano),
        _time(span.end_time_unix_nano),
        _kvs(span.attributes),
        struct.pack("<Q", len(span.attributes)) + b"".join(_s(k) for k, _ in span.attributes),  # evict_list
        struct.pack("<II", max_len, span.dropped_attributes_count),
    ]
    if span.events:
        out.append(b"\x01" + struct.pack("<Q", len(span.events)))
        for e in span.events:
            out += [
                _s(e.name),
                _time(e.time_unix_nano),
                _kvs(e.attributes),
                struct.pack("<I", e.dropped_attributes_count),
            ]
    else:
        out.append(b"\x00")
    out.append(struct.pack("<II", max_len, span.dropped_events_count))
    if span.links:
        out.append(b"\x01" + struct.pack("<Q", len(span.links)))
        for ln in span.links:
            out += [
                _ctx(ln.trace_id, ln.span_id, ln.trace_flags, ln.is_remote, ln.trace_state or None),
                _kvs(ln.attributes),
                struct.pack("<I", ln.dropped_attributes_count),
            ]
    else:
        out.append(b"\x00")
    out.append(struct.pack("<II", max_len, span.dropped_links_count))
    out.append(struct.pack("<I", span.status_code) + _s(span.status_message))
    out.append(b"\x00" if span.resource is None else b"\x01" + _kvs(span.resource))
    return b"".join(out)


# --------------------------------------------------------------------------- JSON


def _jvalue(v: AttrValue) -> Any:
    def f64(x: float) -> Any:
        return x if math.isfinite(x) else None

    if isinstance(v, bool):
        return {"Bool": v}
    if isinstance(v, int):
        return {"I64": v}
    if isinstance(v, float):
        return {"F64": f64(v)}
    if isinstance(v, str):
        return {"String": v}
    items = list(v)
    first = items[0] if items else ""
    if isinstance(first, bool):
        return {"Array": {"Bool": items}}
    if isinstance(first, int):
        return {"Array": {"I64": items}}
    if isinstance(first, float):
        return {"Array": {"F64": [f64(x) for x in items]}}
    return {"Array": {"String": items}}


def _jctx(trace_id: int, span_id: int, flags: int, remote: bool, state: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "trace_flags": flags,
        "is_remote": remote,
        "trace_state": [list(p) for p in state] if state else None,
    }


def _jtime(ns: int) -> dict[str, int]:
    return {"secs_since_epoch": ns // _NS, "nanos_since_epoch": ns % _NS}


def _jkvs(attrs: Iterable[tuple[str, AttrValue]]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _jvalue(v)} for k, v in attrs]


def to_json_obj(span: Span, max_len: int = 128) -> dict[str, Any]:
    return {
        "span_context": _jctx(span.trace_id, span.span_id, span.trace_flags, span.is_remote, span.trace_state),
        "parent_span_id": span.parent_span_id,
        "span_kind": _KIND_NAME[span.kind],
        "name": span.name,
        "start_time": _jtime(span.start_time_unix_nano),
        "end_time": _jtime(span.end_time_unix_nano),
        "attributes": {
            "map": {k: _jvalue(v) for k, v in span.attributes},
            "evict_list": [k for k, _ in span.attributes],
            "max_len": max_len,
            "dropped_count": span.dropped_attributes_count,
        },
        "events": {
            "queue": [
                {
                    "name": e.name,
                    "timestamp": _jtime(e.time_unix_nano),
                    "attributes": _jkvs(e.attributes),
                    "dropped_attributes_count": e.dropped_attributes_count,
                }
                for e in span.events
            ]
            or None,
            "max_len": max_len,
            "dropped_count": span.dropped_events_count,
        },
        "links": {
            "queue": [
                {
                    "span_context": _jctx(ln.trace_id, ln.span_id, ln.trace_flags, ln.is_remote, ln.trace_state),
                    "attributes": _jkvs(ln.attributes),
                    "dropped_attributes_count": ln.dropped_attributes_count,
                }
                for ln in span.links
            ]
            or None,
            "max_len": max_len,
            "dropped_count": span.dropped_links_count,
        },
        "status_code": _STATUS_NAME[span.status_code],
        "status_message": span.status_message,
        "resource": None if span.resource is None else {"attrs": {k: _jvalue(v) for k, v in span.resource}},
    }


def to_json(span: Span) -> bytes:
    """serde_json::to_vec of an opentelemetry 0.17 SpanData carrying `span`."""
    return json.dumps(to_json_obj(span), separators=(",", ":"), ensure_ascii=False).encode()


def sample_span(i: int = 0, *, name: str = "rpc.create_container", sandbox_attr: str = "sb") -> Span:
    """A realistic agent span (tracing-opentelemetry attributes, one event)."""
    from kata_debug.forwarder.spans import Event
    from kata_debug.forwarder.spans import Span as _Span

    base = 1_764_000_000_000_000_000 + i * 1000
    return _Span(
        trace_id=(0x5D799C5970332C19C058000D73996C01 + i) % 2**128,
        span_id=0x1000 + i,
        trace_flags=1,
        is_remote=False,
        trace_state=(),
        parent_span_id=0x0FFF + i if i % 4 else 0,
        kind=1,
        name=name,
        start_time_unix_nano=base,
        end_time_unix_nano=base + 250_000,
        attributes=[
            ("code.filepath", "src/rpc.rs"),
            ("code.namespace", "kata_agent::rpc"),
            ("code.lineno", 123),
            ("thread.id", 4),
            ("thread.name", "ttrpc-server"),
            ("busy_ns", 81234),
            ("container_id", f"{sandbox_attr}-{i:06d}"),
        ],
        dropped_attributes_count=0,
        events=[Event("created", base + 1000, [("pid", 1234 + i)], 0)],
        dropped_events_count=0,
        links=[],
        dropped_links_count=0,
        status_code=0,
        status_message="",
        resource=None,
    )
