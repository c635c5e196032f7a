"""JSON span payloads (kata-agent >= 3.29: serde_json over opentelemetry 0.17 `SpanData`).

Two decoders that must agree on every payload:

* `decode_json_reference` parses any valid JSON document with the stdlib's C scanner and then
  checks and converts each field in Python. Correct for every layout, but slow: the stdlib
  parse alone is about as much CPU as the node can spend on a whole span.
* `decode_json` is what the forwarder runs: the same checks and conversions on orjson's
  parse, which is about four times cheaper (see "fast path" below for the one place where
  orjson's output differs, numbers, and how that is handled). Whatever the fast path does not
  take (a payload that does not start as serde_json writes a span, anything orjson rejects,
  any field of the wrong shape or out of range) goes to the reference decoder, which then
  decides and words the `DecodeError`. So `decode_json` only ever returns what the reference
  would: `tests/test_json_fast_path.py` checks that on generated, mutated and hand-made
  hostile payloads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

try:
    from orjson import loads as _orjson_loads

    _HAVE_ORJSON = True
except ImportError:  # a declared dependency; without it the reference decoder does all the work
    _HAVE_ORJSON = False

from kata_debug.forwarder.spans import (
    I64_MAX as _I64_MAX,
)
from kata_debug.forwarder.spans import (
    I64_MIN as _I64_MIN,
)
from kata_debug.forwarder.spans import (
    NS_PER_S as _NS,
)
from kata_debug.forwarder.spans import (
    U64_MAX as _U64_MAX,
)
from kata_debug.forwarder.spans import (
    Attributes,
    AttrValue,
    DecodeError,
    Event,
    Link,
    Span,
    SpanKind,
    StatusCode,
    repair_strings,
)

__all__ = ["decode_json", "decode_json_reference"]

# --------------------------------------------------------------------------- reference decoder

_JSON_KINDS = {
    "Client": SpanKind.CLIENT,
    "Server": SpanKind.SERVER,
    "Producer": SpanKind.PRODUCER,
    "Consumer": SpanKind.CONSUMER,
    "Internal": SpanKind.INTERNAL,
}
_JSON_STATUS = {"Unset": StatusCode.UNSET, "Ok": StatusCode.OK, "Error": StatusCode.ERROR}
_NAN = float("nan")
_U128_MAX = (1 << 128) - 1
_U32_MAX = (1 << 32) - 1
_json_loads = json.loads
# The stdlib's own C scanner, called directly: `json.loads` would spend a third of its time
# on encoding detection and wrapper calls for payloads that are always compact UTF-8.
_scan_once: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_JSON_WS = " \t\n\r"


def _parse_json(payload: bytes) -> object:
    text = payload.decode("utf-8")
    if not text or text[0] in _JSON_WS or text[-1] in _JSON_WS:
        return _json_loads(text)  # the general path (whitespace around the value)
    try:
        value, end = _scan_once(text, 0)
    except StopIteration as exc:
        raise json.JSONDecodeError("Expecting value", text, exc.value) from None
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def _j_times(d: dict, key: str) -> int:
    t = d[key]
    secs = t["secs_since_epoch"]
    nanos = t["nanos_since_epoch"]
    if type(secs) is not int or type(nanos) is not int or secs < 0 or nanos < 0 or nanos > _U32_MAX:
        raise _Bad(key)
    ns = secs * _NS + nanos
    if ns > _U64_MAX:
        raise DecodeError(f"{key} {secs}s+{nanos}ns does not fit OTLP's u64 nanoseconds")
    return ns


class _Bad(Exception):
    """Internal: a JSON field of the wrong shape (message = field)."""


def _j_u(v: object, maximum: int, what: str) -> int:
    if type(v) is not int or v < 0 or v > maximum:
        raise _Bad(what)
    return v


def _j_f64(v: object) -> float:
    t = type(v)
    if t is float:
        return v  # type: ignore[return-value]
    if t is int:
        return float(v)  # type: ignore[arg-type]
    if v is None:  # serde_json writes non-finite floats as null
        return _NAN
    raise _Bad("F64 value")


def _j_i64(v: object) -> int:
    if type(v) is not int or not _I64_MIN <= v <= _I64_MAX:
        raise _Bad("I64 value")
    return v


def _j_str(v: object, what: str) -> str:
    if type(v) is not str:
        raise _Bad(what)
    return v


def _j_bool(v: object, what: str) -> bool:
    if type(v) is not bool:
        raise _Bad(what)
    return v


def _j_array(body: object) -> AttrValue:
    if type(body) is not dict or len(body) != 1:
        raise _Bad("Array value")
    ((tag, items),) = body.items()
    if type(items) is not list:
        raise _Bad("Array value")
    if tag == "String":
        for x in items:
            if type(x) is not str:
                raise _Bad("String array element")
        return tuple(items)
    if tag == "I64":
        return tuple([_j_i64(x) for x in items])
    if tag == "F64":
        return tuple([_j_f64(x) for x in items])
    if tag == "Bool":
        for x in items:
            if type(x) is not bool:
                raise _Bad("Bool array element")
        return tuple(items)
    raise _Bad(f"Array tag {tag!r}")


def _j_value(v: object) -> AttrValue:
    """An externally tagged `Value` (`{"String": "x"}`)."""
    if type(v) is not dict or len(v) != 1:
        raise _Bad("attribute value")
    ((tag, x),) = v.items()
    if tag == "String":
        if type(x) is str:
            return x
        raise _Bad("String value")
    if tag == "I64":
        return _j_i64(x)
    if tag == "Bool":
        if type(x) is bool:
            return x
        raise _Bad("Bool value")
    if tag == "F64":
        return _j_f64(x)
    if tag == "Array":
        return _j_array(x)
    raise _Bad(f"value tag {tag!r}")


def _j_map(m: object) -> Attributes:
    if type(m) is not dict:
        raise _Bad("attribute map")
    return _o_map(m)


def _j_kvs(items: object) -> Attributes:
    """A `Vec<KeyValue>` (event and link attributes), the common string and i64 values inline.

    Both decoders use it: one call per list, none per attribute in the common case.
    """
    if type(items) is not list:
        raise _Bad("attribute list")
    out: Attributes = []
    append = out.append
    for kv in items:
        if type(kv) is not dict:
            raise _Bad("KeyValue")
        k = kv["key"]
        v = kv["value"]
        if type(k) is not str:
            raise _Bad("KeyValue key")
        if type(v) is dict and len(v) == 1:
            s = v.get("String")
            if type(s) is str:
                append((k, s))
                continue
            i = v.get("I64")
            if type(i) is int and _I64_MIN <= i <= _I64_MAX:
                append((k, i))
                continue
        append((k, _j_value(v)))
    return out


def _j_trace_state(ts: object) -> tuple[tuple[str, str], ...]:
    if ts is None:
        return ()
    if type(ts) is not list:
        raise _Bad("trace_state")
    out = []
    for pair in ts:
        if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str or type(pair[1]) is not str:
            raise _Bad("trace_state entry")
        out.append((pair[0], pair[1]))
    return tuple(out)


def _j_queue(q: object, what: str) -> tuple[list, int]:
    """An `EvictedQueue`: (items or [], dropped_count)."""
    items = q["queue"]  # type: ignore[index]
    max_len = q["max_len"]  # type: ignore[index]
    dropped = q["dropped_count"]  # type: ignore[index]
    if (
        type(max_len) is not int
        or max_len < 0
        or max_len > _U32_MAX
        or type(dropped) is not int
        or dropped < 0
        or dropped > _U32_MAX
    ):
        raise _Bad(f"{what}.max_len/dropped_count")
    if items is None:
        return _NO_ITEMS, dropped
    if type(items) is not list:
        raise _Bad(f"{what}.queue")
    return items, dropped


def _j_links(raw_links: list) -> list[Link]:
    links: list[Link] = []
    for ln in raw_links:
        lc = ln["span_context"]
        lt = lc["trace_id"]
        if type(lt) is not int or not 0 <= lt <= _U128_MAX:
            raise _Bad("link.trace_id")
        links.append(_link(ln, lc, lt))
    return links


def _link(ln: dict[str, Any], lc: dict[str, Any], trace_id: int) -> Link:
    """A link's fields once its trace id is known (the two decoders read that differently)."""
    return Link(
        trace_id,
        _j_u(lc["span_id"], _U64_MAX, "link.span_id"),
        _j_u(lc["trace_flags"], 255, "link.trace_flags"),
        _j_bool(lc["is_remote"], "link.is_remote"),
        _j_trace_state(lc["trace_state"]),
        _j_kvs(ln["attributes"]),
        _j_u(ln["dropped_attributes_count"], _U32_MAX, "link.dropped_attributes_count"),
    )


_NO_ITEMS: list = []  # never mutated


def decode_json_reference(payload: bytes) -> Span:
    """Decode a serde_json opentelemetry 0.17 `SpanData` (agents >= 3.29), any valid JSON layout.

    The general decoder: parses the whole document, then checks and converts every field.
    `decode_json` runs it for every payload its fast path does not take, and it is the one
    that words every `DecodeError`. A lone surrogate escape (`\\ud800`) is replaced by U+FFFD
    (`repair_strings`): orjson refuses those, so only this path can meet one. So are bytes
    that are not UTF-8 inside a string (the bincode decoder repairs them too): each becomes a
    `\\udcXX` escape, then U+FFFD like any lone surrogate, and the span is counted repaired.
    """
    try:
        span = _reference(payload)
    except DecodeError as exc:
        if not str(exc).startswith(_NOT_UTF8):
            raise
        escaped = payload.decode("utf-8", "surrogateescape").encode("utf-8", "backslashreplace")
        span = _reference(escaped)
        repair_strings(span)
        return span
    if _surrogate_escape(payload):
        repair_strings(span)
    return span


_NOT_UTF8 = "json: not UTF-8"


# `\uD800`..`\uDFFF` in any case; also matches an escaped backslash before `uD8..` (harmless:
# repairing then finds nothing).
_surrogate_escape = re.compile(rb"\\u[dD][89a-fA-F]").search


def _reference(payload: bytes) -> Span:
    try:
        d = _parse_json(payload)
        if type(d) is not dict:
            raise _Bad("top level")
        ctx = d["span_context"]
        trace_id = ctx["trace_id"]
        span_id = ctx["span_id"]
        flags = ctx["trace_flags"]
        parent = d["parent_span_id"]
        if (
            type(trace_id) is not int
            or trace_id < 0
            or trace_id > _U128_MAX
            or type(span_id) is not int
            or span_id < 0
            or span_id > _U64_MAX
            or type(flags) is not int
            or flags < 0
            or flags > 255
            or type(parent) is not int
            or parent < 0
            or parent > _U64_MAX
        ):
            raise _Bad("span_context ids/flags or parent_span_id")
        remote = ctx["is_remote"]
        if type(remote) is not bool:
            raise _Bad("span_context.is_remote")
        ts = ctx["trace_state"]
        trace_state = () if ts is None else _j_trace_state(ts)
        kind = _JSON_KINDS.get(d["span_kind"])
        if kind is None:
            raise _Bad("span_kind")
        name = d["name"]
        if type(name) is not str:
            raise _Bad("name")
        start = _j_times(d, "start_time")
        end = _j_times(d, "end_time")

        attrs = d["attributes"]
        amap = attrs["map"]
        if type(amap) is not dict:
            raise _Bad("attributes.map")
        attributes = _o_map(amap)
        dropped_attrs = attrs["dropped_count"]
        max_len = attrs["max_len"]
        if (
            type(attrs["evict_list"]) is not list
            or type(max_len) is not int
            or max_len < 0
            or max_len > _U32_MAX
            or type(dropped_attrs) is not int
            or dropped_attrs < 0
            or dropped_attrs > _U32_MAX
        ):
            raise _Bad("attributes evict_list/max_len/dropped_count")

        raw_events, dropped_events = _j_queue(d["events"], "events")
        events = (
            [
                Event(
                    _j_str(ev["name"], "event.name"),
                    _j_times(ev, "timestamp"),
                    _j_kvs(ev["attributes"]),
                    _j_u(ev["dropped_attributes_count"], _U32_MAX, "event.dropped_attributes_count"),
                )
                for ev in raw_events
            ]
            if raw_events
            else []
        )
        raw_links, dropped_links = _j_queue(d["links"], "links")
        links = _j_links(raw_links)
        status = _JSON_STATUS.get(d["status_code"])
        if status is None:
            raise _Bad("status_code")
        message = d["status_message"]
        if type(message) is not str:
            raise _Bad("status_message")
        res = d["resource"]
        resource = None if res is None else _j_map(res["attrs"])
        return Span(
            trace_id,
            span_id,
            flags,
            remote,
            trace_state,
            parent,
            kind,
            name,
            start,
            end,
            attributes,
            dropped_attrs,
            events,
            dropped_events,
            links,
            dropped_links,
            status,
            message,
            resource,
        )
    except _Bad as exc:
        raise DecodeError(f"json: bad or missing {exc.args[0]}") from None
    except KeyError as exc:
        raise DecodeError(f"json: missing field {exc.args[0]!r}") from None
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{_NOT_UTF8} at byte {exc.start}") from None
    except ValueError as exc:  # JSONDecodeError, and int/str conversion limits
        raise DecodeError(f"json: {exc}") from None
    except (TypeError, AttributeError, IndexError):
        raise DecodeError("json: a field has the wrong JSON type") from None
    except OverflowError:  # an F64 written as an integer too large for a float
        raise DecodeError("json: number out of range") from None
    except RecursionError:
        raise DecodeError("json: nested too deeply") from None
    except MemoryError:
        raise DecodeError("json: payload too large to parse") from None


# --------------------------------------------------------------------------- fast path
#
# orjson parses a span about four times faster than the stdlib, with the same results on
# every document it accepts except one: integers outside [-2^63, 2^64) come back as floats
# (rounded as float(int) would: exactly what the reference makes of one in an F64 value).
# Some inputs the stdlib accepts it rejects (NaN, a lone surrogate, 1e400): those simply go
# to the reference decoder. So:
#
# * the span's own trace id, a u128 that serde_json writes first, is read from the text and
#   replaced by 0 before parsing; link trace ids (rare) are read from the text too;
# * every other integer field is checked to be an int, as the reference does (a float there
#   means "out of range" either way).
#
# The span's trace id is replaced together with its key (`"trace_id":N` becomes `"_":0`), so
# if orjson still finds a `trace_id` in that context, the text had a second one (perhaps
# spelled with escapes), which JSON would let win: the reference decoder decides. Link ids
# are only sound if every `"trace_id":` in the text is one of those keys: exactly one per
# context, and no `\u` escape (which could spell another).

_PREFIX = b'{"span_context":{"trace_id":'
_P = len(_PREFIX)
_RENAMED = b'{"span_context":{"_":0'
_TRACE_ID_KEY = b'"trace_id":'
_link_trace_ids = re.compile(rb'"trace_id":(0|[1-9][0-9]*)[,}]').findall
_escape_u = re.compile(rb"\\u").search  # three times faster than `in` on these payloads


class _NotCanonical(Exception):
    """Internal: the fast path does not cover this payload; the reference decoder decides."""


def _o_map(m: object) -> Attributes:
    """A `{key: Value}` map (`_j_map`), the common string and i64 values inline."""
    out: Attributes = []
    append = out.append
    for k, v in m.items():  # type: ignore[attr-defined]
        if type(v) is dict and len(v) == 1:
            s = v.get("String")
            if type(s) is str:
                append((k, s))
                continue
            i = v.get("I64")
            if type(i) is int and _I64_MIN <= i <= _I64_MAX:
                append((k, i))
                continue
        append((k, _j_value(v)))
    return out


def _o_events(raw: list) -> list[Event]:
    """The events queue's items (`Event`s as the reference builds them), checks inline."""
    events: list[Event] = []
    for ev in raw:
        name = ev["name"]
        t = ev["timestamp"]
        kvs = ev["attributes"]
        dropped = ev["dropped_attributes_count"]
        secs, nanos = t["secs_since_epoch"], t["nanos_since_epoch"]
        if (
            type(name) is not str
            or type(secs) is not int
            or type(nanos) is not int
            or secs < 0
            or nanos < 0
            or nanos > _U32_MAX
            or type(dropped) is not int
            or dropped < 0
            or dropped > _U32_MAX
        ):
            raise _NotCanonical
        ns = secs * _NS + nanos
        if ns > _U64_MAX:
            raise _NotCanonical
        events.append(Event(name, ns, _j_kvs(kvs), dropped))
    return events


def _o_links(raw: list, payload: bytes) -> list[Link]:
    ids = _link_trace_ids(payload, _P)
    if len(ids) != len(raw) or payload.count(_TRACE_ID_KEY) != 1 + len(raw) or _escape_u(payload):
        raise _NotCanonical
    links: list[Link] = []
    for ln, tid in zip(raw, ids):
        lc = ln["span_context"]
        trace_id = int(tid)
        if trace_id > _U128_MAX:
            raise _NotCanonical
        links.append(_link(ln, lc, trace_id))
    return links


def _fast(payload: bytes) -> Span | None:
    """The span, if orjson reads `payload` as the reference would; else None (or any exception)."""
    comma = payload.find(b",", _P)
    digits = payload[_P:comma]
    if comma <= _P or not digits.isdigit() or (digits[0] == 48 and comma > _P + 1):
        return None
    trace_id = int(digits)
    d = _orjson_loads(_RENAMED + payload[comma:])
    ctx = d["span_context"]
    if "trace_id" in ctx:
        return None
    span_id = ctx["span_id"]
    flags = ctx["trace_flags"]
    parent = d["parent_span_id"]
    remote = ctx["is_remote"]
    if (
        trace_id > _U128_MAX
        or type(span_id) is not int
        or span_id < 0
        or span_id > _U64_MAX
        or type(flags) is not int
        or flags < 0
        or flags > 255
        or type(parent) is not int
        or parent < 0
        or parent > _U64_MAX
        or type(remote) is not bool
    ):
        return None
    ts = ctx["trace_state"]
    name = d["name"]
    if type(name) is not str:
        return None
    attrs = d["attributes"]
    amap = attrs["map"]
    dropped_attrs = attrs["dropped_count"]
    max_len = attrs["max_len"]
    if (
        type(amap) is not dict
        or type(attrs["evict_list"]) is not list
        or type(max_len) is not int
        or max_len < 0
        or max_len > _U32_MAX
        or type(dropped_attrs) is not int
        or dropped_attrs < 0
        or dropped_attrs > _U32_MAX
    ):
        return None
    q = d["events"]
    raw_events, ev_max, dropped_events = q["queue"], q["max_len"], q["dropped_count"]
    q = d["links"]
    raw_links, ln_max, dropped_links = q["queue"], q["max_len"], q["dropped_count"]
    if (  # `_j_queue`, inline
        (raw_events is not None and type(raw_events) is not list)
        or (raw_links is not None and type(raw_links) is not list)
        or type(ev_max) is not int
        or ev_max < 0
        or ev_max > _U32_MAX
        or type(dropped_events) is not int
        or dropped_events < 0
        or dropped_events > _U32_MAX
        or type(ln_max) is not int
        or ln_max < 0
        or ln_max > _U32_MAX
        or type(dropped_links) is not int
        or dropped_links < 0
        or dropped_links > _U32_MAX
    ):
        return None
    message = d["status_message"]
    if type(message) is not str:
        return None
    res = d["resource"]
    # Both times inline (`_j_times`, one call less each).
    t = d["start_time"]
    secs, nanos = t["secs_since_epoch"], t["nanos_since_epoch"]
    t = d["end_time"]
    e_secs, e_nanos = t["secs_since_epoch"], t["nanos_since_epoch"]
    if (
        type(secs) is not int
        or type(nanos) is not int
        or secs < 0
        or nanos < 0
        or nanos > _U32_MAX
        or type(e_secs) is not int
        or type(e_nanos) is not int
        or e_secs < 0
        or e_nanos < 0
        or e_nanos > _U32_MAX
    ):
        return None
    start = secs * _NS + nanos
    end = e_secs * _NS + e_nanos
    if start > _U64_MAX or end > _U64_MAX:
        return None
    return Span(
        trace_id,
        span_id,
        flags,
        remote,
        () if ts is None else _j_trace_state(ts),
        parent,
        _JSON_KINDS[d["span_kind"]],
        name,
        start,
        end,
        _o_map(amap),
        dropped_attrs,
        _o_events(raw_events) if raw_events else [],
        dropped_events,
        _o_links(raw_links, payload) if raw_links else [],
        dropped_links,
        _JSON_STATUS[d["status_code"]],
        message,
        None if res is None else _o_map(res["attrs"]),
    )


def decode_json(payload: bytes) -> Span:
    """Decode a serde_json opentelemetry 0.17 `SpanData` (agents >= 3.29).

    Through orjson when the payload starts as serde_json writes a span; anything the fast
    path does not take, and every error, is the reference decoder's (`decode_json_reference`),
    so both always agree.
    """
    if _HAVE_ORJSON and payload.startswith(_PREFIX):
        try:
            span = _fast(payload)
        except Exception:  # noqa: BLE001 - whatever it is, the reference decoder words the error
            span = None
        if span is not None:
            return span
    return decode_json_reference(payload)
