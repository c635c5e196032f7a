"""The kata-agent trace wire format: framing and both span payload decoders. No I/O.

The agent writes one span per frame: an 8-byte big-endian length, then the payload. Agents up
to 3.28 serialise opentelemetry 0.14 `SpanData` with bincode 1.3.3; agents from 3.29 serialise
opentelemetry 0.17 `SpanData` with serde_json. Both decode into one `Span` model so the
rest of the forwarder never knows which agent it is talking to. The JSON decoder lives in
`forwarder.wire_json` and is importable from here (`wire.decode_json`).

The guest is untrusted: every length is checked against the bytes actually present before
anything is sliced or looped over, so a hostile frame can never make the decoder allocate more
than a small multiple of the frame itself, and `DecodeError` is the only exception a payload
can raise. The decoders are written for speed (precompiled `struct.Struct`s, direct field
access) because a node forwards every span of every sandbox.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

__all__ = [
    "AttrValue",
    "Attributes",
    "DecodeError",
    "Event",
    "FrameReader",
    "FrameTooLarge",
    "FORMATS",
    "Link",
    "Span",
    "SpanKind",
    "StatusCode",
    "WireFormat",
    "FormatSniffer",
    "decode_bincode",
    "decode_json",
    "decoder_for",
    "HEADER_SIZE",
    "DEFAULT_MAX_FRAME_BYTES",
]

HEADER_SIZE = 8
DEFAULT_MAX_FRAME_BYTES = 1 << 20

WireFormat = Literal["auto", "bincode", "json"]
FORMATS: tuple[str, ...] = ("auto", "bincode", "json")

#: An attribute value: the four scalar kinds, or a homogeneous tuple of one of them.
AttrValue = bool | int | float | str | tuple[bool, ...] | tuple[int, ...] | tuple[float, ...] | tuple[str, ...]
#: Attributes in wire order. A list, not a dict: event and link attributes are a `Vec` on the
#: wire and may repeat a key; the forwarder passes on what the agent sent.
Attributes = list[tuple[str, AttrValue]]


class SpanKind(IntEnum):
    """OTLP span kinds (the agent's enum order differs; the decoders map it)."""

    UNSPECIFIED = 0
    INTERNAL = 1
    SERVER = 2
    CLIENT = 3
    PRODUCER = 4
    CONSUMER = 5


class StatusCode(IntEnum):
    """OTLP status codes (same order as the agent's)."""

    UNSET = 0
    OK = 1
    ERROR = 2


class DecodeError(ValueError):
    """A payload or frame that is not a kata-agent span. The only error decoding raises."""


class FrameTooLarge(DecodeError):
    """A frame header announcing more than the configured maximum: the stream cannot be trusted."""

    def __init__(self, length: int, limit: int, frames: list[bytes] | None = None) -> None:
        super().__init__(f"frame length {length} exceeds the {limit}-byte limit")
        self.length = length
        self.limit = limit
        #: Complete frames that arrived before the bad header, in the same chunk.
        self.frames: list[bytes] = frames or []


@dataclass(slots=True)
class Event:
    name: str
    time_unix_nano: int
    attributes: Attributes
    dropped_attributes_count: int


@dataclass(slots=True)
class Link:
    trace_id: int
    span_id: int
    trace_flags: int
    is_remote: bool
    trace_state: tuple[tuple[str, str], ...]
    attributes: Attributes
    dropped_attributes_count: int


@dataclass(slots=True)
class Span:
    """One agent span, whichever format it arrived in. Ids are integers; times are ns."""

    trace_id: int
    span_id: int
    trace_flags: int
    is_remote: bool
    trace_state: tuple[tuple[str, str], ...]
    parent_span_id: int  # 0 = root
    kind: int  # SpanKind value
    name: str
    start_time_unix_nano: int
    end_time_unix_nano: int
    attributes: Attributes
    dropped_attributes_count: int
    events: list[Event]
    dropped_events_count: int
    links: list[Link]
    dropped_links_count: int
    status_code: int  # StatusCode value
    status_message: str
    #: The span's own resource attributes (`None` from real agents).
    resource: Attributes | None


# --------------------------------------------------------------------------- framing


class FrameReader:
    """Splits a byte stream into frame payloads, holding at most one partial frame.

    Nothing is allocated from a header's claim: a frame's bytes are only kept as they
    actually arrive, and a header above `max_frame_bytes` raises `FrameTooLarge` at once
    (the stream has no resynchronisation point, so the caller must drop it).

    Linear in the bytes fed: an incomplete frame only grows a bytearray; it is converted
    to `bytes` once, when a frame is complete, so each received byte is copied a bounded
    number of times however small the pieces it arrives in.
    """

    __slots__ = ("max_frame_bytes", "_buf", "frames")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self.frames = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the payloads of every frame now complete.

        On a header above the limit, raises `FrameTooLarge` carrying the complete frames
        that preceded it (they are good and must not be lost with the connection).
        """
        buf = self._buf
        limit = self.max_frame_bytes
        unpack = _BE_U64.unpack_from
        if buf:  # a partial frame is waiting
            buf += data
            # Still incomplete: only the append above (amortised O(len(data))). Converting
            # here would copy the whole partial frame on every read, quadratic in its size
            # when a large frame trickles in in small pieces.
            held = len(buf)
            if held < HEADER_SIZE:
                return []
            (length,) = unpack(buf, 0)
            if length > limit:
                raise FrameTooLarge(length, limit)  # the bytes stay held, as below
            if held < HEADER_SIZE + length:
                return []
            # At least one frame is complete: one copy, so payloads are sliced from bytes.
            data = bytes(buf)
            buf.clear()
        elif type(data) is not bytes:
            data = bytes(data)
        out: list[bytes] = []
        append = out.append
        size = len(data)
        pos = 0
        while size - pos >= HEADER_SIZE:
            (length,) = unpack(data, pos)
            if length > limit:
                buf += memoryview(data)[pos:]
                self.frames += len(out)
                raise FrameTooLarge(length, limit, out)
            end = pos + HEADER_SIZE + length
            if end > size:
                break
            append(data[pos + HEADER_SIZE : end])  # slicing bytes: the payload's only copy
            pos = end
        if pos < size:
            buf += memoryview(data)[pos:]
        self.frames += len(out)
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back; non-zero at EOF means a truncated frame."""
        return len(self._buf)

    def pending_header(self) -> int | None:
        """The announced length of the incomplete frame, if its header has arrived."""
        if len(self._buf) < HEADER_SIZE:
            return None
        return _BE_U64.unpack_from(self._buf, 0)[0]


# --------------------------------------------------------------------------- bincode

_BE_U64 = struct.Struct(">Q")
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
_NS = 1_000_000_000
_U64_MAX = (1 << 64) - 1
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1


class _Short(Exception):
    """Internal: the payload ended inside a field."""


def _b_str(buf: bytes, o: int, n: int) -> tuple[str, int]:
    if o + 8 > n:
        raise _Short
    ln = _U64.unpack_from(buf, o)[0]
    o += 8
    e = o + ln
    if e > n:
        raise _Short
    return buf[o:e].decode(), e


def _b_array(buf: bytes, o: int, n: int) -> tuple[tuple[AttrValue, ...], int]:
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
    `FormatSniffer` confirm a format instead of guessing it.
    """
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
    except UnicodeDecodeError as exc:
        raise DecodeError(f"bincode: string is not UTF-8 at byte {exc.start}") from None
    except (OverflowError, MemoryError, IndexError) as exc:
        raise DecodeError(f"bincode: malformed payload ({exc})") from None


# --------------------------------------------------------------------------- format choice

Decoder = Callable[[bytes], Span]


def decoder_for(fmt: str) -> Decoder:
    if fmt == "bincode":
        return decode_bincode
    if fmt == "json":
        from kata_debug.forwarder.wire_json import decode_json

        return decode_json
    raise ValueError(f"no single decoder for format {fmt!r}")


class FormatSniffer:
    """Decodes one connection's frames, settling its format on the first frame that decodes.

    `auto` does not trust the first byte: a bincode payload starts with the low byte of the
    trace id, which is `{` one time in 256. A frame is tried with the likelier decoder first
    (JSON for `{`) and then the other, and only a complete, exact decode settles the
    connection's format; from then on only that decoder is used, so a later garbage frame
    cannot flip it.
    """

    __slots__ = ("requested", "settled", "_decode")

    def __init__(self, fmt: str = "auto") -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.requested = fmt
        self.settled: str | None = None if fmt == "auto" else fmt
        self._decode: Decoder | None = None if fmt == "auto" else decoder_for(fmt)

    @property
    def decoder(self) -> Decoder:
        """The settled format's decoder itself (one call less per frame), or `decode`."""
        return self._decode if self._decode is not None else self.decode

    def decode(self, payload: bytes) -> Span:
        if self._decode is not None:
            return self._decode(payload)
        order = ("json", "bincode") if payload[:1] == b"{" else ("bincode", "json")
        errors = []
        for fmt in order:
            try:
                span = decoder_for(fmt)(payload)
            except DecodeError as exc:
                errors.append(str(exc))
                continue
            self.settled = fmt
            self._decode = decoder_for(fmt)
            return span
        raise DecodeError("neither format decodes: " + "; ".join(errors))


def __getattr__(name: str) -> object:
    """`wire.decode_json`, without an import cycle: `wire_json` builds on this module's model."""
    if name == "decode_json":
        from kata_debug.forwarder.wire_json import decode_json

        return decode_json
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
