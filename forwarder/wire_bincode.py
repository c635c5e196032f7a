"""Bincode span payloads (kata-agent <= 3.28: bincode 1.3.3 over opentelemetry 0.14 `SpanData`).

Every length is checked against the bytes actually present before anything is sliced or
looped over, so a hostile frame can never make the decoder allocate more than a small
multiple of the frame itself, and `DecodeError` is the only exception a payload can raise.

A string that is not valid UTF-8 (any invalid byte, or an encoded surrogate such as
`ED A0 80`) does not cost the span: the payload is decoded a second time with every string
read leniently (see `_Lenient`), and each bad byte then becomes U+FFFD through
`repair_strings`, counted in `span.repaired` like the JSON decoder's lone surrogates. The
common, valid span pays nothing for this: its one pass is the strict code, unchanged.
Written for speed (precompiled `struct.Struct`s, direct field access) because a node
forwards every span of every sandbox.
"""

from __future__ import annotations

import struct
from typing import Any

from kata_debug.forwarder.spans import (
    NS_PER_S,
    U64_MAX,
    Attributes,
    AttrValue,
    DecodeError,
    Event,
    Link,
    Span,
    SpanKind,
    repair_strings,
)

__all__ = ["decode_bincode"]

_U64 = struct.Struct(">Q")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_U8 = struct.Struct("<B")
# span_context up to the trace_state Option tag: trace_id lo, hi, span_id, flags, is_remote, tag
_CTX = struct.Struct("<QQQBBB")  # 27 bytes
# parent_span_id, span_kind tag, name length
_PARENT_KIND_NAME = struct.Struct("<QIQ")
# start secs, start nanos, end secs, end nanos, attribute map length
_TIMES_MAPLEN = struct.Struct("<QIQIQ")
# max_len, dropped_count, events Option tag
_EVICT_TAIL = struct.Struct("<IIB")
# links max_len, links dropped_count, status code tag, status message length
_LINKS_TAIL_STATUS = struct.Struct("<IIIQ")
_VALUE_TAG_LEN = struct.Struct("<IQ")  # value tag followed by a u64 (scalar or length)

_u64 = _U64.unpack_from
_u32 = _U32.unpack_from
_i64 = _I64.unpack_from
_f64 = _F64.unpack_from

_BINCODE_KINDS = (SpanKind.CLIENT, SpanKind.SERVER, SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.INTERNAL)
_NS = NS_PER_S
_U64_MAX = U64_MAX


class _Short(Exception):
    """Internal: the payload ended inside a field."""


class _NotUtf8(Exception):
    """Internal: a string is not valid UTF-8; `decode_bincode` decodes again, leniently."""


class _Lenient(bytes):
    """A payload whose slices decode leniently: each invalid byte becomes a lone surrogate
    (U+DC80..U+DCFF, `surrogateescape`), which `repair_strings` then replaces and counts.

    The decoder reads strings as `buf[o:e].decode()`; passing an error handler to every one
    of those calls would cost the valid span ~60 ns a string. Given this payload instead,
    the same code decodes leniently, and only the rare damaged span pays for the second pass.
    """

    def __getitem__(self, key: Any) -> Any:
        got = bytes.__getitem__(self, key)
        return _Lenient(got) if isinstance(key, slice) else got

    def decode(self, encoding: str = "utf-8", errors: str = "surrogateescape") -> str:
        return bytes.decode(self, encoding, errors)


def _b_str(buf: bytes, o: int, n: int) -> tuple[str, int]:
    if o + 8 > n:
        raise _Short
    ln = _U64.unpack_from(buf, o)[0]
    o += 8
    e = o + ln
    if e > n:
        raise _Short
    return buf[o:e].decode(), e


def _b_array(buf: bytes, o: int, n: int) -> tuple[AttrValue, int]:
    if o + 12 > n:
        raise _Short
    tag, count = _VALUE_TAG_LEN.unpack_from(buf, o)
    o += 12
    left = n - o
    if tag == 0:
        if count > left:
            raise _Short
        raw = buf[o : o + count]
        if raw.translate(None, b"\x00\x01"):
            raise DecodeError("bincode: bool array element is not 0 or 1")
        return tuple(b == 1 for b in raw), o + count
    if tag == 1:
        if count * 8 > left:
            raise _Short
        return struct.unpack_from(f"<{count}q", buf, o), o + 8 * count
    if tag == 2:
        if count * 8 > left:
            raise _Short
        return struct.unpack_from(f"<{count}d", buf, o), o + 8 * count
    if tag == 3:
        if count * 8 > left:
            raise _Short
        items: list[str] = []
        for _ in range(count):
            s, o = _b_str(buf, o, n)
            items.append(s)
        return tuple(items), o
    raise DecodeError(f"bincode: unknown array tag {tag}")


def _b_kvs(buf: bytes, o: int, n: int, count: int) -> tuple[Attributes, int]:
    """`count` (key, value) pairs: a HashMap/BTreeMap body or a Vec<KeyValue> body.

    Bounds: `unpack_from` raises `struct.error` past the end (reported as a short payload);
    only a slice's end, which slicing would silently clip, is checked here.
    """
    if count * 12 > n - o:
        raise _Short
    out: Attributes = []
    append = out.append
    u64 = _u64
    u32 = _u32
    for _ in range(count):
        e = o + 8 + u64(buf, o)[0]
        tag = u32(buf, e)[0]  # also proves the key's bytes are all there
        key = buf[o + 8 : e].decode()
        o = e + 4
        if tag == 3:  # String: the common case first
            e = o + 8 + u64(buf, o)[0]
            if e > n:
                raise _Short
            append((key, buf[o + 8 : e].decode()))
            o = e
        elif tag == 1:
            append((key, _i64(buf, o)[0]))
            o += 8
        elif tag == 0:
            if o >= n:
                raise _Short
            b = buf[o]
            if b > 1:
                raise DecodeError(f"bincode: bool value {b} is not 0 or 1")
            append((key, b == 1))
            o += 1
        elif tag == 2:
            append((key, _f64(buf, o)[0]))
            o += 8
        elif tag == 4:
            arr, o = _b_array(buf, o, n)
            append((key, arr))
        else:
            raise DecodeError(f"bincode: unknown value tag {tag}")
    return out, o


def _b_trace_state(buf: bytes, o: int, n: int) -> tuple[tuple[tuple[str, str], ...], int]:
    """The body of `Some(VecDeque<(String, String)>)` (the tag is already read)."""
    if o + 8 > n:
        raise _Short
    count = _U64.unpack_from(buf, o)[0]
    o += 8
    if count * 16 > n - o:
        raise _Short
    pairs: list[tuple[str, str]] = []
    for _ in range(count):
        k, o = _b_str(buf, o, n)
        v, o = _b_str(buf, o, n)
        pairs.append((k, v))
    return tuple(pairs), o


def _b_option_tag(tag: int, what: str) -> None:
    if tag > 1:
        raise DecodeError(f"bincode: {what} option tag {tag} is not 0 or 1")


def _b_bool(value: int, what: str) -> bool:
    if value > 1:
        raise DecodeError(f"bincode: {what} {value} is not 0 or 1")
    return value == 1


def _ns(secs: int, nanos: int, what: str) -> int:
    t = secs * _NS + nanos
    if t > _U64_MAX:
        raise DecodeError(f"{what} {secs}s+{nanos}ns does not fit OTLP's u64 nanoseconds")
    return t


def _b_events(buf: bytes, o: int, n: int) -> tuple[list[Event], int]:
    if o + 8 > n:
        raise _Short
    count = _U64.unpack_from(buf, o)[0]
    o += 8
    if count * 32 > n - o:  # name len 8 + time 12 + attributes len 8 + dropped 4
        raise _Short
    events: list[Event] = []
    for _ in range(count):
        name, o = _b_str(buf, o, n)
        if o + 20 > n:
            raise _Short
        secs, nanos, nattrs = _EVENT_HEAD.unpack_from(buf, o)
        attrs, o = _b_kvs(buf, o + 20, n, nattrs)
        if o + 4 > n:
            raise _Short
        events.append(Event(name, _ns(secs, nanos, "event time"), attrs, _U32.unpack_from(buf, o)[0]))
        o += 4
    return events, o


def _b_links(buf: bytes, o: int, n: int) -> tuple[list[Link], int]:
    if o + 8 > n:
        raise _Short
    count = _U64.unpack_from(buf, o)[0]
    o += 8
    if count * 39 > n - o:  # span_context 27 + attributes len 8 + dropped 4
        raise _Short
    links: list[Link] = []
    for _ in range(count):
        if o + 27 > n:
            raise _Short
        lo, hi, sid, flags, remote, ts_tag = _CTX.unpack_from(buf, o)
        o += 27
        _b_option_tag(ts_tag, "link trace_state")
        ts: tuple[tuple[str, str], ...] = ()
        if ts_tag:
            ts, o = _b_trace_state(buf, o, n)
        if o + 8 > n:
            raise _Short
        attrs, o = _b_kvs(buf, o + 8, n, _U64.unpack_from(buf, o)[0])
        if o + 4 > n:
            raise _Short
        links.append(
            Link(
                (hi << 64) | lo,
                sid,
                flags,
                _b_bool(remote, "link is_remote"),
                ts,
                attrs,
                _U32.unpack_from(buf, o)[0],
            )
        )
        o += 4
    return links, o


_EVENT_HEAD = struct.Struct("<QIQ")  # timestamp secs, nanos, attributes length


def decode_bincode(payload: bytes) -> Span:
    """Decode a bincode 1.x opentelemetry 0.14 `SpanData` (agents <= 3.28).

    The whole payload must be one span: trailing bytes are an error, which is what lets
    `FormatSniffer` confirm a format instead of guessing it. Strings that are not UTF-8 are
    repaired (U+FFFD, counted in `span.repaired`), not a reason to drop the span: the guest
    is untrusted, and one bad byte in an attribute must not lose the rest of what it says.
    """
    try:
        return _decode(payload)
    except _NotUtf8:
        span = _decode(_Lenient(payload))
        repair_strings(span)
        return span


def _decode(payload: bytes) -> Span:
    """The decoder proper: `_NotUtf8` when a string is not UTF-8 (never for a `_Lenient` payload)."""
    buf = payload
    n = len(buf)
    try:
        if n < 27:
            raise _Short
        lo, hi, span_id, flags, remote, ts_tag = _CTX.unpack_from(buf, 0)
        o = 27
        if ts_tag:
            _b_option_tag(ts_tag, "trace_state")
            trace_state, o = _b_trace_state(buf, o, n)
        else:
            trace_state = ()
        if o + 20 > n:
            raise _Short
        parent, kind_tag, name_len = _PARENT_KIND_NAME.unpack_from(buf, o)
        o += 20
        if kind_tag > 4:
            raise DecodeError(f"bincode: unknown span_kind tag {kind_tag}")
        e = o + name_len
        if e + 32 > n:
            raise _Short
        name = buf[o:e].decode()
        s_secs, s_nanos, e_secs, e_nanos, nattrs = _TIMES_MAPLEN.unpack_from(buf, e)
        attributes, o = _b_kvs(buf, e + 32, n, nattrs)
        # evict_list: LinkedList<Key>, order information OTLP has no place for: skipped
        # (lengths checked, contents not decoded).
        if o + 8 > n:
            raise _Short
        nevict = _u64(buf, o)[0]
        o += 8
        if nevict * 8 > n - o:
            raise _Short
        for _ in range(nevict):
            if o + 8 > n:
                raise _Short
            o += 8 + _u64(buf, o)[0]
        if o > n:
            raise _Short
        if o + 9 > n:
            raise _Short
        _max_len, dropped_attrs, ev_tag = _EVICT_TAIL.unpack_from(buf, o)
        o += 9
        events: list[Event] = []
        if ev_tag:
            _b_option_tag(ev_tag, "events queue")
            events, o = _b_events(buf, o, n)
        if o + 9 > n:
            raise _Short
        _max_len, dropped_events, ln_tag = _EVICT_TAIL.unpack_from(buf, o)
        o += 9
        links: list[Link] = []
        if ln_tag:
            _b_option_tag(ln_tag, "links queue")
            links, o = _b_links(buf, o, n)
        if o + 20 > n:
            raise _Short
        _max_len, dropped_links, status_tag, msg_len = _LINKS_TAIL_STATUS.unpack_from(buf, o)
        o += 20
        if status_tag > 2:
            raise DecodeError(f"bincode: unknown status_code tag {status_tag}")
        e = o + msg_len
        if e + 1 > n:
            raise _Short
        status_message = buf[o:e].decode()
        res_tag = buf[e]
        o = e + 1
        resource: Attributes | None = None
        if res_tag:
            _b_option_tag(res_tag, "resource")
            if o + 8 > n:
                raise _Short
            resource, o = _b_kvs(buf, o + 8, n, _U64.unpack_from(buf, o)[0])
        if o != n:
            raise DecodeError(f"bincode: {n - o} trailing bytes after the span")
        # `_b_bool` and `_ns`, inline (same checks, same messages, same order)
        if remote > 1:
            raise DecodeError(f"bincode: is_remote {remote} is not 0 or 1")
        start = s_secs * _NS + s_nanos
        if start > _U64_MAX:
            raise DecodeError(f"start_time {s_secs}s+{s_nanos}ns does not fit OTLP's u64 nanoseconds")
        end = e_secs * _NS + e_nanos
        if end > _U64_MAX:
            raise DecodeError(f"end_time {e_secs}s+{e_nanos}ns does not fit OTLP's u64 nanoseconds")
        return Span(
            (hi << 64) | lo,
            span_id,
            flags,
            remote == 1,
            trace_state,
            parent,
            _BINCODE_KINDS[kind_tag],
            name,
            start,
            end,
            attributes,
            dropped_attrs,
            events,
            dropped_events,
            links,
            dropped_links,
            status_tag,
            status_message,
            resource,
        )
    except (_Short, struct.error):
        raise DecodeError(f"bincode: payload ends inside a field ({n} bytes)") from None
    except UnicodeDecodeError:
        raise _NotUtf8 from None
    except (OverflowError, MemoryError, IndexError) as exc:
        raise DecodeError(f"bincode: malformed payload ({exc})") from None
