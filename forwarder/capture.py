"""`trace decode`'s work: a captured frame stream in, OTLP/JSON lines out. Blocking; no event loop.

A capture is what a listener would have received (8-byte length + payload, repeated), e.g.
`socat` output or a test fixture. Undecodable frames are reported through `warn` and
skipped; a frame header above the limit ends the stream (there is no resynchronisation
point), and so does a stream that stops inside a frame. Both are summed up in
`DecodeSummary.problem` so the command can turn them into its exit status.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Protocol

from kata_debug.forwarder.formats import FormatSniffer
from kata_debug.forwarder.frames import HEADER_SIZE, FrameReader, FrameTooLarge
from kata_debug.forwarder.otlp_json import group_by_resource, request_line
from kata_debug.forwarder.spans import DecodeError, Origin, Span

_CHUNK = 1 << 20


class Readable(Protocol):
    """What a decode reads from: a binary file, stdin, or `Prefixed`."""

    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class DecodeSummary:
    """What one capture held."""

    spans: int
    frames: int
    undecodable: int
    #: The format the stream settled on (the requested one if nothing decoded).
    format: str
    #: Why the stream could not be read to its end, or None.
    problem: str | None


def decode_capture(
    src: Readable,
    dst: IO[str],
    *,
    origin: Origin,
    fmt: str = "auto",
    batch_size: int = 512,
    max_frame_bytes: int,
    warn: Callable[[str], None],
) -> DecodeSummary:
    """Decode every frame of `src`, writing one OTLP/JSON line per `batch_size` spans to `dst`."""
    reader = FrameReader(max_frame_bytes)
    sniffer = FormatSniffer(fmt)
    spans = frames = bad = 0
    offset = 0  # stream offset of the next frame header
    batch: list[Span] = []
    problem: str | None = None

    def flush() -> None:
        if batch:
            dst.write(request_line(group_by_resource((s, origin.resource_for(s)) for s in batch)))
            batch.clear()

    while chunk := src.read(_CHUNK):
        too_large: FrameTooLarge | None = None
        try:
            payloads = reader.feed(chunk)
        except FrameTooLarge as exc:
            too_large, payloads = exc, exc.frames
        for payload in payloads:
            frames += 1
            try:
                span = sniffer.decode(payload)
            except DecodeError as exc:
                bad += 1
                warn(f"frame {frames} at offset {offset}: {exc}")
            else:
                spans += 1
                batch.append(span)
                if len(batch) >= batch_size:
                    flush()
            offset += HEADER_SIZE + len(payload)
        if too_large is not None:
            problem = f"frame {frames + 1} at offset {offset}: {too_large}; stopping (cannot resynchronise)"
            break
    else:
        if reader.pending:
            problem = f"stream ends inside frame {frames + 1} at offset {offset} ({reader.pending} bytes)"
    flush()
    dst.flush()
    return DecodeSummary(spans, frames, bad, sniffer.settled or fmt, problem)


class NotATraceStream(ValueError):
    """The input's first frame is not a kata-agent span: it is another kind of file."""


def _read_exactly(src: IO[bytes], n: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = src.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def check_first_frame(src: IO[bytes], max_frame_bytes: int) -> bytes:
    """Read the first frame of a capture and raise `NotATraceStream` unless it is a span.

    Lets `trace decode` refuse a text file, an archive or an empty pipe from a failed
    command in one line, before it writes any output; damage later in a real capture is
    still reported frame by frame. Returns the bytes read (at most one header and
    `max_frame_bytes`), which the decode must see first (`Prefixed`).
    """
    head = _read_exactly(src, HEADER_SIZE)
    if not head:
        return head
    if len(head) < HEADER_SIZE:
        raise NotATraceStream(f"{len(head)} byte(s), less than one frame header")
    (length,) = struct.unpack(">Q", head)
    if length > max_frame_bytes:
        raise NotATraceStream(
            f"it starts with {head!r}, not a frame length (a capture is an 8-byte big-endian length, then a "
            f"bincode or JSON span of at most {max_frame_bytes} bytes, repeated)"
        )
    payload = _read_exactly(src, length)
    if len(payload) < length:
        raise NotATraceStream(f"the first frame announces {length} bytes but the input ends after {len(payload)}")
    try:
        FormatSniffer("auto").decode(payload)
    except DecodeError as exc:
        raise NotATraceStream(f"its first frame is neither a bincode nor a JSON span ({exc})") from None
    return head + payload


class Prefixed:
    """A byte stream with bytes already read from it put back in front."""

    def __init__(self, prefix: bytes, rest: IO[bytes]) -> None:
        self._prefix = prefix
        self._rest = rest

    def read(self, n: int = -1) -> bytes:
        if self._prefix:
            if n < 0 or n >= len(self._prefix):
                out, self._prefix = self._prefix, b""
                return out
            out, self._prefix = self._prefix[:n], self._prefix[n:]
            return out
        return self._rest.read(n)
