"""The span model every forwarder module shares, whichever format a span arrived in. No I/O.

Agents up to 3.28 send bincode, agents from 3.29 send JSON; both decoders
(`forwarder.wire_bincode`, `forwarder.wire_json`) produce these types, so the rest of the
forwarder never knows which agent it is talking to. `Origin` is what the host adds: where
the span came from and the resource it is exported with.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from enum import IntEnum

#: Limits both decoders check against (OTLP carries times as u64 nanoseconds).
NS_PER_S = 1_000_000_000
U64_MAX = (1 << 64) - 1
I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1

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
    #: Strings the decoder had to repair (see `repair_strings`); counted in the forwarder's stats.
    repaired: int = 0


ResourceAttrs = tuple[tuple[str, AttrValue], ...]

#: A UTF-16 surrogate on its own: JSON can spell one (`"\\ud800"`), no UTF-8 encoder takes it.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_REPLACEMENT = "\ufffd"


def _fix(s: str) -> tuple[str, int]:
    fixed, n = _LONE_SURROGATE.subn(_REPLACEMENT, s)
    return fixed, 1 if n else 0


def _fix_value(v: AttrValue) -> tuple[AttrValue, int]:
    if type(v) is str:
        return _fix(v)
    if type(v) is tuple and v and type(v[0]) is str:
        items = [_fix(x) for x in v]
        return tuple(x for x, _ in items), sum(n for _, n in items)
    return v, 0


def _fix_attrs(attrs: Attributes) -> int:
    count = 0
    for i, (k, v) in enumerate(attrs):
        k2, nk = _fix(k)
        v2, nv = _fix_value(v)
        if nk or nv:
            attrs[i] = (k2, v2)
            count += nk + nv
    return count


def _fix_state(state: tuple[tuple[str, str], ...]) -> tuple[tuple[tuple[str, str], ...], int]:
    pairs = [(_fix(k), _fix(v)) for k, v in state]
    return tuple((k, v) for (k, _), (v, _) in pairs), sum(a + b for (_, a), (_, b) in pairs)


def repair_strings(span: Span) -> int:
    """Replace every lone surrogate in `span`'s strings by U+FFFD, in place; return the strings changed.

    The guest is untrusted and a JSON agent payload can carry `\\ud800`: Python decodes it into
    a `str` no sink can encode, and a sink that cannot export a span retries its whole batch
    forever. Decoders call this only when the payload could hold one, so the common span pays
    nothing. The count is added to `span.repaired`.
    """
    count = 0
    span.name, n = _fix(span.name)
    count += n
    span.status_message, n = _fix(span.status_message)
    count += n
    span.trace_state, n = _fix_state(span.trace_state)
    count += n
    count += _fix_attrs(span.attributes)
    if span.resource:
        count += _fix_attrs(span.resource)
    for ev in span.events:
        ev.name, n = _fix(ev.name)
        count += n + _fix_attrs(ev.attributes)
    for ln in span.links:
        ln.trace_state, n = _fix_state(ln.trace_state)
        count += n + _fix_attrs(ln.attributes)
    span.repaired += count
    return count


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a span came from, as the host sees it, and the resource that follows from it.

    `base` holds the forwarder's defaults (`service.name`); `identity` what the host knows
    (sandbox id, pod, node). A span's own resource sits between the two: the guest is
    untrusted and must not be able to claim another pod's identity.
    """

    sandbox_id: str | None
    source: str
    base: ResourceAttrs
    identity: ResourceAttrs
    #: base + identity, the resource of every span that brings none of its own.
    resource: ResourceAttrs = field(default=())

    @classmethod
    def make(cls, sandbox_id: str | None, source: str, base: ResourceAttrs, identity: ResourceAttrs) -> Origin:
        merged = dict(base)
        merged.update(identity)
        return cls(sandbox_id, source, base, identity, tuple(merged.items()))

    def resource_for(self, span: Span) -> ResourceAttrs:
        if not span.resource:
            return self.resource
        merged: dict[str, AttrValue] = dict(self.base)
        merged.update(span.resource)
        merged.update(self.identity)
        return tuple(merged.items())


#: A decoded span and where it came from: what the queues hold and the sinks consume.
QueuedSpan = tuple[Span, Origin]

_DOUBLE_BITS = struct.Struct("<d").pack


def _value_key(v: AttrValue) -> object:
    t = type(v)
    if t is float:
        return (float, _DOUBLE_BITS(v))
    if t is tuple:
        return (tuple, tuple(map(_value_key, v)))  # type: ignore[arg-type]
    return (t, v)


_TYPED = object()  # marks a typed key: never equal to a plain resource tuple


def resource_key(resource: ResourceAttrs) -> object:
    """A key under which two resources are equal only if they encode the same.

    Python equality is too loose to group spans by resource: `True == 1 == 1.0`,
    `0.0 == -0.0`, `(1,) == (True,)`, yet OTLP encodes each differently. Grouping on the
    plain tuple put spans under another span's resource. A resource of strings only (the
    usual case) is its own key: for strings, equality is exact.
    """
    for _, v in resource:
        if type(v) is not str:
            return (_TYPED, *[(k, _value_key(v)) for k, v in resource])
    return resource
