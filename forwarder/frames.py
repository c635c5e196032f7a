"""Framing of the kata-agent trace stream: an 8-byte big-endian length, then one span payload.

No I/O and no decoding: `FrameReader` turns received bytes into payloads. The guest is
untrusted, so nothing is allocated from a header's claim.
"""

from __future__ import annotations

import struct

from kata_debug.forwarder.spans import DecodeError

HEADER_SIZE = 8
DEFAULT_MAX_FRAME_BYTES = 1 << 20

_BE_U64 = struct.Struct(">Q")


class FrameTooLarge(DecodeError):
    """A frame header announcing more than the configured maximum: the stream cannot be trusted."""

    def __init__(self, length: int, limit: int, frames: list[bytes] | None = None) -> None:
        super().__init__(f"frame length {length} exceeds the {limit}-byte limit")
        self.length = length
        self.limit = limit
        #: Complete frames that arrived before the bad header, in the same chunk.
        self.frames: list[bytes] = frames or []


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
