"""OTLP protobuf requests written directly from decoded spans: the only protobuf encoder.

The SDK's own encoder (`encode_spans`) takes `ReadableSpan`s and is the forwarder's
bottleneck on one core (keyword-argument messages deep-copied into their parents, each
span's `Resource` hashed through JSON). This one writes the request's protobuf encoding
from our span model: a span is a fixed, small set of fields (tags, lengths, values; `struct`
for the fixed-width ones; a common string attribute is five precomputed or borrowed pieces
and no concatenation). It carries what the SDK encoder leaves out: link trace state, W3C
trace flags and repeated event/link attribute keys exactly as the agent sent them.

Measured against building the same request with the protobuf message API and serialising
it (bench/forwarder.py's 2048-span batches of fixture spans, four sandboxes' resources),
the message API cost 15% (bincode) to 28% (JSON) more CPU per span, so it is not kept as
a second path; `tests/test_otlp_proto.py` checks this encoder by parsing its output with
the protobuf runtime and comparing every field with the decoded spans.

Two rules the encoding keeps:

* Strings must be valid UTF-8; a JSON `\ud800` escape decodes to a lone surrogate, which
  is replaced (`?`) instead of raising and failing the whole batch over and over.
* Spans are grouped under their resource by `spans.resource_key`, never by Python equality
  (`True == 1`, `0.0 == -0.0`, `(1,) == (True,)` would put a span under another span's
  resource, or reuse another resource's cached encoding).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from kata_debug.forwarder.otlp_json import FLAG_HAS_IS_REMOTE, FLAG_IS_REMOTE, trace_state_text
from kata_debug.forwarder.spans import AttrValue, Event, Link, QueuedSpan, ResourceAttrs, Span, resource_key

__all__ = ["EncodedRequest", "encode_requests", "span_bytes"]

#: Varints below 2^14 (every length and count in practice), precomputed.
_VARINT: tuple[bytes, ...] = tuple(bytes((n,)) for n in range(128)) + tuple(
    bytes((n & 0x7F | 0x80, n >> 7)) for n in range(128, 1 << 14)
)
_SMALL = 1 << 14
_U64_MASK = (1 << 64) - 1
_FIXED64_PAIR = struct.Struct("<BQBQ")  # start_time (7) and end_time (8) with their tags
_FIXED64 = struct.Struct("<BQ")
_DOUBLE = struct.Struct("<Bd")  # AnyValue.double_value (4)
_FLAGS = struct.Struct("<BBI")  # Span.flags (16): a two-byte tag, fixed32
_LINK_FLAGS = struct.Struct("<BI")  # Span.Link.flags (6), fixed32
# trace_id (1) and span_id (2), and parent_span_id (4) too: ids are big-endian bytes
_IDS = struct.Struct(">2sQQ2sQ")
_IDS_PARENT = struct.Struct(">2sQQ2sQ2sQ")
_M64 = (1 << 64) - 1


def _varint(n: int) -> bytes:
    if n < _SMALL:
        return _VARINT[n]
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _utf8(s: str) -> bytes:
    """UTF-8, with unpaired surrogates (a JSON `\ud800` escape can make one) replaced:
    protobuf strings must be valid UTF-8, and a span must not make its whole batch fail."""
    try:
        return s.encode()
    except UnicodeEncodeError:
        return s.encode("utf-8", "replace")


#: KeyValue.key fields by key (attribute names repeat endlessly); cleared when it grows large.
_KEY_FIELDS: dict[str, bytes] = {}


def _key_field(k: str) -> bytes:
    kf = _KEY_FIELDS.get(k)
    if kf is None:
        if len(_KEY_FIELDS) >= 4096:
            _KEY_FIELDS.clear()
        kb = _utf8(k)
        kf = _KEY_FIELDS[k] = b"\x0a" + _varint(len(kb)) + kb if kb else b""
    return kf


def _any_value(v: AttrValue) -> bytes:
    """An AnyValue body. bool is tested before int: in Python a bool is an int."""
    t = type(v)
    if t is str:
        vb = _utf8(v)  # type: ignore[arg-type]
        return b"\x0a" + _varint(len(vb)) + vb
    if t is bool:
        return b"\x10\x01" if v else b"\x10\x00"
    if t is int:
        return b"\x18" + _varint(v & _U64_MASK)  # type: ignore[operator]
    if t is float:
        return _DOUBLE.pack(0x21, v)
    body = b"".join([b"\x0a" + _varint(len(x)) + x for x in map(_any_value, v)])  # type: ignore[arg-type]
    return b"\x2a" + _varint(len(body)) + body


#: For a string value of n < 126 bytes: KeyValue.value's tag and length, AnyValue.string_value's
#: tag and length (`12 <n+2> 0a <n>`), so a common attribute needs no concatenation at all.
_STR_VALUE_HEAD: tuple[bytes, ...] = tuple(bytes((0x12, n + 2, 0x0A, n)) for n in range(126))


def _attributes(out: list[bytes], tag: bytes, attrs: Sequence[tuple[str, AttrValue]]) -> None:
    """Append one KeyValue field (`tag`) per attribute, as pieces for one final `join`."""
    for k, v in attrs:
        kf = _KEY_FIELDS.get(k)
        if kf is None:
            kf = _key_field(k)
        if type(v) is str:
            try:
                vb = v.encode()
            except UnicodeEncodeError:
                vb = v.encode("utf-8", "replace")
            n = len(vb)
            if n < 126:
                size = len(kf) + 4 + n
                out += (tag, _VARINT[size] if size < _SMALL else _varint(size), kf, _STR_VALUE_HEAD[n], vb)
                continue
            av = b"\x0a" + _varint(n) + vb
        elif type(v) is int and 0 <= v < _SMALL:  # a small int: AnyValue.int_value, 2 or 3 bytes
            av = b"\x18" + _VARINT[v]
        else:
            av = _any_value(v)
        kv = kf + b"\x12" + _VARINT[len(av)] + av if len(av) < _SMALL else kf + b"\x12" + _varint(len(av)) + av
        n = len(kv)
        out += (tag, _VARINT[n] if n < _SMALL else _varint(n), kv)


def _event(e: Event) -> bytes:
    out: list[bytes] = []
    if e.time_unix_nano:
        out.append(_FIXED64.pack(0x09, e.time_unix_nano))
    if e.name:
        nb = _utf8(e.name)
        out += (b"\x12", _varint(len(nb)), nb)
    if e.attributes:
        _attributes(out, b"\x1a", e.attributes)
    if e.dropped_attributes_count:
        out += (b"\x20", _varint(e.dropped_attributes_count))
    return b"".join(out)


def _link(ln: Link) -> bytes:
    out = [b"\x0a\x10", ln.trace_id.to_bytes(16, "big"), b"\x12\x08", ln.span_id.to_bytes(8, "big")]
    if ln.trace_state:
        ts = _utf8(trace_state_text(ln.trace_state))
        out += (b"\x1a", _varint(len(ts)), ts)
    if ln.attributes:
        _attributes(out, b"\x22", ln.attributes)
    if ln.dropped_attributes_count:
        out += (b"\x28", _varint(ln.dropped_attributes_count))
    out.append(_LINK_FLAGS.pack(0x35, ln.trace_flags | FLAG_HAS_IS_REMOTE | (FLAG_IS_REMOTE if ln.is_remote else 0)))
    return b"".join(out)


def span_bytes(s: Span) -> bytes:
    """The protobuf encoding of one OTLP `Span` (what `_set_span` builds, serialised)."""
    tid = s.trace_id
    if s.trace_state:  # field 3 sits between span_id (2) and parent_span_id (4)
        ts = _utf8(trace_state_text(s.trace_state))
        out = [_IDS.pack(b"\x0a\x10", tid >> 64, tid & _M64, b"\x12\x08", s.span_id), b"\x1a", _varint(len(ts)), ts]
        if s.parent_span_id:
            out.append(b"\x22\x08" + s.parent_span_id.to_bytes(8, "big"))
    elif s.parent_span_id:
        out = [
            _IDS_PARENT.pack(b"\x0a\x10", tid >> 64, tid & _M64, b"\x12\x08", s.span_id, b"\x22\x08", s.parent_span_id)
        ]
    else:
        out = [_IDS.pack(b"\x0a\x10", tid >> 64, tid & _M64, b"\x12\x08", s.span_id)]
    if s.name:
        try:
            nb = s.name.encode()
        except UnicodeEncodeError:
            nb = _utf8(s.name)
        n = len(nb)
        out += (b"\x2a", _VARINT[n] if n < _SMALL else _varint(n), nb)
    if s.kind:
        out += (b"\x30", _VARINT[s.kind])
    start, end = s.start_time_unix_nano, s.end_time_unix_nano
    if start and end:
        out.append(_FIXED64_PAIR.pack(0x39, start, 0x41, end))
    else:
        if start:
            out.append(_FIXED64.pack(0x39, start))
        if end:
            out.append(_FIXED64.pack(0x41, end))
    if s.attributes:
        _attributes(out, b"\x4a", s.attributes)
    if s.dropped_attributes_count:
        out += (b"\x50", _varint(s.dropped_attributes_count))
    for e in s.events:
        eb = _event(e)
        n = len(eb)
        out += (b"\x5a", _VARINT[n] if n < _SMALL else _varint(n), eb)
    if s.dropped_events_count:
        out += (b"\x60", _varint(s.dropped_events_count))
    for ln in s.links:
        lb = _link(ln)
        out += (b"\x6a", _varint(len(lb)), lb)
    if s.dropped_links_count:
        out += (b"\x70", _varint(s.dropped_links_count))
    if s.status_code or s.status_message:
        status = b""
        if s.status_message:
            mb = _utf8(s.status_message)
            status = b"\x12" + _varint(len(mb)) + mb
        if s.status_code:
            status += b"\x18" + _VARINT[s.status_code]
        out += (b"\x7a", _varint(len(status)), status)
    if s.trace_flags:
        out.append(_FLAGS.pack(0x85, 0x01, s.trace_flags))
    return b"".join(out)


#: Resource fields (ResourceSpans.resource) by typed resource key: one per sandbox, reused.
_RESOURCE_FIELDS: dict[object, bytes] = {}


def _resource_field(key: object, res: ResourceAttrs) -> bytes:
    rf = _RESOURCE_FIELDS.get(key)
    if rf is None:
        if len(_RESOURCE_FIELDS) >= 4096:
            _RESOURCE_FIELDS.clear()
        parts: list[bytes] = []
        _attributes(parts, b"\x0a", res)
        body = b"".join(parts)
        rf = _RESOURCE_FIELDS[key] = b"\x0a" + _varint(len(body)) + body if body else b""
    return rf


def _join_groups(groups: dict[object, tuple[bytes, list[bytes]]]) -> bytes:
    out: list[bytes] = []
    for resource, spans in groups.values():
        scope = b"".join(spans)
        scope_len = _varint(len(scope))
        # ResourceSpans { resource = 1; scope_spans = 2 }
        out += (b"\x0a", _varint(len(resource) + 1 + len(scope_len) + len(scope)), resource, b"\x12", scope_len, scope)
    return b"".join(out)


#: Upper bound of what a ResourceSpans adds besides its resource: two tags and two lengths.
_GROUP_OVERHEAD = 12


@dataclass(frozen=True, slots=True)
class EncodedRequest:
    """One serialised `ExportTraceServiceRequest` carrying the batch's next `spans` spans, in order."""

    spans: int
    data: bytes

    def __len__(self) -> int:  # the SDK exporters count what they export with len()
        return self.spans


def encode_requests(batch: Sequence[QueuedSpan], max_bytes: int) -> list[EncodedRequest]:
    """The batch as requests of at most `max_bytes` each (a single larger span goes alone).

    A receiver rejects a request above its size limit every time, so one oversized batch
    would be retried forever and hold up everything queued behind it. Requests cover
    consecutive runs of the batch, so a sink can say how far delivery got. Resources come
    in first-seen order, spans in arrival order within their resource.
    """
    requests: list[EncodedRequest] = []
    #: The current request's groups: typed resource key -> (resource field, span pieces).
    groups: dict[object, tuple[bytes, list[bytes]]] = {}
    #: id(resource tuple) -> (the tuple, its key, its group): most spans share their origin's
    #: resource tuple, so a span finds its group without hashing the resource. The tuple is
    #: kept referenced, so its id cannot be reused by another while this runs.
    seen: dict[int, tuple[ResourceAttrs, object, tuple[bytes, list[bytes]]]] = {}
    size = count = 0
    for span, origin in batch:
        res = origin.resource_for(span) if span.resource else origin.resource
        hit = seen.get(id(res))
        if hit is None or hit[0] is not res:
            key = resource_key(res)
            group = groups.get(key)
            if group is None:  # registered in `groups` with its first span, below
                group = (_resource_field(key, res), [])
            hit = seen[id(res)] = (res, key, group)
        group = hit[2]
        body = span_bytes(span)
        n = len(body)
        head = _VARINT[n] if n < _SMALL else _varint(n)
        grows = 1 + len(head) + n
        if not group[1]:  # the resource's first span in this request
            grows += len(group[0]) + _GROUP_OVERHEAD
        if count and size + grows > max_bytes:
            requests.append(EncodedRequest(count, _join_groups(groups)))
            groups, seen, size, count = {}, {}, 0, 0
            group = (group[0], [])
            seen[id(res)] = (res, hit[1], group)
            grows = 1 + len(head) + n + len(group[0]) + _GROUP_OVERHEAD
        if not group[1]:
            groups[hit[1]] = group
        group[1].extend((b"\x12", head, body))  # ScopeSpans.spans
        size += grows
        count += 1
    if count:
        requests.append(EncodedRequest(count, _join_groups(groups)))
    return requests
