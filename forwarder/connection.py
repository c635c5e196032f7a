"""One guest's trace stream: bytes from the socket -> frames -> spans -> the exporter queues.

A `BufferedProtocol` rather than a `StreamReader`: the forwarder decides how many bytes each
read may take (`limits.UNRESERVED_BYTES` plus what the connection's frame has reserved), so
a connection that is waiting for the buffer budget holds at most one small read and the
rest stays in the guest's socket. A `StreamReader` buffers ahead on its own, up to a few
hundred KiB per connection whatever its reader does.

Bad input never takes the forwarder down: an oversized frame header closes that one
connection (nothing is allocated for it), an undecodable payload is skipped and counted and
the connection goes on, a truncated frame at EOF is counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from kata_debug.forwarder.formats import FormatSniffer
from kata_debug.forwarder.frames import HEADER_SIZE, FrameReader, FrameTooLarge
from kata_debug.forwarder.limits import UNRESERVED_BYTES, BufferBudget, ListenerLimits
from kata_debug.forwarder.listeners import Peer
from kata_debug.forwarder.spans import DecodeError, Origin, QueuedSpan
from kata_debug.forwarder.stats import ForwarderStats

log = logging.getLogger("kata_debug.forwarder")

_ERRORS_LOGGED_PER_CONNECTION = 10
#: Largest single read: a reserved frame is read in pieces this big.
_READ_MAX = 256 * 1024
_REJECTIONS_LOGGED = 10


@dataclass
class ConnectionHub:
    """What every connection of one forwarder shares."""

    stats: ForwarderStats
    #: `ExportPipeline.put_many` of every exporter.
    puts: Sequence[Callable[[list[QueuedSpan], Sequence[int]], None]]
    #: The origin of a stream from `peer` (the vsock CID, when known, as the second argument).
    origin: Callable[[Peer, int | None], Awaitable[Origin]]
    limits: ListenerLimits
    max_frame_bytes: int
    fmt: str
    budget: BufferBudget = field(init=False)
    connections: set[TraceConnection] = field(default_factory=set)
    accepting: bool = True
    scratch: memoryview = field(init=False)

    def __post_init__(self) -> None:
        self.budget = BufferBudget(self.limits.buffer_budget)
        # One receive buffer for every connection: a read is consumed before the next starts.
        self.scratch = memoryview(bytearray(_READ_MAX))

    def close_idle(self, now: float) -> None:
        """Close every connection that has stopped in the middle of a frame for `idle_timeout`."""
        timeout = self.limits.idle_timeout
        if timeout <= 0:
            return
        for conn in list(self.connections):
            if conn.stalled_since(now) > timeout:
                self.stats.idle_timeouts += 1
                conn.close_idle(timeout)

    def close_all(self) -> None:
        self.accepting = False
        for conn in list(self.connections):
            conn.abort()


class TraceConnection(asyncio.BufferedProtocol):
    """One accepted trace stream (see the module doc)."""

    def __init__(self, hub: ConnectionHub, peer: Peer) -> None:
        self.hub = hub
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.frames = FrameReader(hub.max_frame_bytes)
        self.sniffer = FormatSniffer(hub.fmt)
        self.origin: Origin | None = None
        #: Whole frames read before the origin was known (see `_feed`).
        self._early: list[bytes] = []
        self.who = f"sandbox={peer.sandbox_id or 'unknown'}"
        self.reserved = 0  # bytes of the budget this connection's current frame holds
        self.waiting = False  # paused until the budget can hold its frame
        self.closed = False
        self.last_data = 0.0
        self._errors_logged = 0
        self._conn_errors = 0
        self._start: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        hub = self.hub
        if not hub.accepting or len(hub.connections) >= hub.limits.max_connections:
            self.closed = True
            if hub.accepting:
                hub.stats.rejected_connections += 1
                if hub.stats.rejected_connections <= _REJECTIONS_LOGGED:
                    log.warning(
                        "%s: refusing a trace connection via %s: %d already open (--max-connections)%s",
                        self.who,
                        self.peer.source,
                        len(hub.connections),
                        "; further refusals are only counted"
                        if hub.stats.rejected_connections == _REJECTIONS_LOGGED
                        else "",
                    )
            transport.abort()
            return
        hub.connections.add(self)
        hub.stats.connections += 1
        hub.stats.open_connections += 1
        self.last_data = asyncio.get_running_loop().time()
        transport.pause_reading()  # until the stream's origin is known
        self._start = asyncio.get_running_loop().create_task(self._resolve(transport))

    async def _resolve(self, transport: asyncio.Transport) -> None:
        cid: int | None = None
        if self.peer.vsock:
            peername = transport.get_extra_info("peername")
            if isinstance(peername, tuple) and peername and isinstance(peername[0], int):
                cid = peername[0]
        try:
            self.origin = await self.hub.origin(self.peer, cid)
        except Exception as exc:  # noqa: BLE001 - one stream's identity lookup must not crash the loop
            log.warning("%s: cannot tell where this trace stream comes from: %s", self.who, exc)
            self.abort()
            return
        if self.origin.sandbox_id:
            self.who = f"sandbox={self.origin.sandbox_id}"
        if cid is not None:
            self.who += f" cid={cid}"
        log.info("%s: trace stream connected via %s", self.who, self.peer.source)
        if self._early:
            early, self._early = self._early, []
            self._decode(early)
        self._update_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        # Beyond what its frame reserved, a connection reads at most UNRESERVED_BYTES: that is
        # all it can hold while it waits for the budget.
        room = UNRESERVED_BYTES + max(0, self.reserved - self.frames.pending)
        return self.hub.scratch[: min(room, _READ_MAX)]

    def buffer_updated(self, nbytes: int) -> None:
        if self.closed:
            return
        self.last_data = asyncio.get_running_loop().time()
        self._feed(self.hub.scratch[:nbytes])

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None or self not in self.hub.connections:
            return
        hub = self.hub
        hub.connections.discard(self)
        hub.stats.open_connections -= 1
        was_closed = self.closed
        self.closed = True
        if self._start is not None and not self._start.done() and not self._early:
            # Frames that arrived before the origin was known still go out once it is.
            self._start.cancel()
        if exc is not None and not was_closed:
            log.warning("%s: connection error: %s", self.who, exc)
        pending = self.frames.pending
        if pending and not was_closed:
            hub.stats.truncated_frames += 1
            announced = self.frames.pending_header()
            log.warning(
                "%s: stream ended inside a frame (%d bytes held%s)",
                self.who,
                pending,
                f", {announced} announced" if announced is not None else ", header incomplete",
            )
        self._release()
        frames_seen = self.frames.frames
        # The partial frame's memory goes now. Measured (bench/forwarder_limits.py): RSS is back
        # at the baseline 3 s after 500 stalled connections close, with or without glibc's
        # malloc_trim, so it is not called.
        self.frames = FrameReader(hub.max_frame_bytes)
        if self.origin is not None:
            log.info(
                "%s: trace stream closed (%d frames, %d undecodable, format %s)",
                self.who,
                frames_seen,
                self._conn_errors,
                self.sniffer.settled or "unknown",
            )

    # ------------------------------------------------------------------ budget and limits

    def budget_granted(self, nbytes: int) -> None:
        self.reserved = nbytes
        self.waiting = False
        if not self.closed:
            assert self.transport is not None
            self.last_data = asyncio.get_running_loop().time()  # its idle time starts now
            self._update_reading()

    def stalled_since(self, now: float) -> float:
        """Seconds this connection has held an incomplete frame without receiving anything.

        Zero between frames and while it waits for the budget: that pause is ours.
        """
        if self.closed or self.waiting or not self.frames.pending or self.origin is None:
            return 0.0
        return now - self.last_data

    def close_idle(self, timeout: float) -> None:
        log.warning(
            "%s: closing connection: no data for %.0fs in the middle of a frame (%d bytes held; --idle-timeout)",
            self.who,
            timeout,
            self.frames.pending,
        )
        self.abort()

    def abort(self) -> None:
        """Close now (shutdown, a limit): held bytes are not counted as a truncated frame."""
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _release(self) -> None:
        if self.waiting:
            self.waiting = False
            self.hub.budget.forget(self)
        if self.reserved:
            reserved, self.reserved = self.reserved, 0
            self.hub.budget.release(reserved)

    def _update_reading(self) -> None:
        t = self.transport
        if t is None or self.closed:
            return
        if self.origin is not None and not self.waiting:
            t.resume_reading()
        else:
            t.pause_reading()

    def _reserve_for_pending(self) -> None:
        """After a read: hold the budget the incomplete frame needs, or pause until it can."""
        announced = self.frames.pending_header() if self.frames.pending else None
        want = HEADER_SIZE + announced if announced is not None else 0
        if want <= UNRESERVED_BYTES:
            want = 0
        if want == self.reserved:
            return
        self._release()
        if want and not self.hub.budget.acquire(self, want):
            self.waiting = True
            self.hub.stats.budget_waits += 1
            self._update_reading()
        else:
            self.reserved = want

    # ------------------------------------------------------------------ decoding

    def _feed(self, data: memoryview) -> None:
        st = self.hub.stats
        too_large: FrameTooLarge | None = None
        try:
            payloads = self.frames.feed(data)  # type: ignore[arg-type]  # bytes-like: only appended or copied
        except FrameTooLarge as exc:
            too_large, payloads = exc, exc.frames
        if payloads:
            if self.origin is None:
                # Read before the stream's origin was known: reading is paused from
                # connection_made on, but a transport may still deliver the read it had
                # already scheduled (seen with Debian's Python 3.11.2). Held, decoded once
                # the origin is known; bounded by that one read.
                self._early.extend(payloads)
            else:
                self._decode(payloads)
        if too_large is not None:
            st.oversized_frames += 1
            log.warning("%s: closing connection: %s (--max-frame-bytes)", self.who, too_large)
            self._release()
            self.abort()
            return
        self._reserve_for_pending()

    def _decode(self, payloads: list[bytes]) -> None:
        st = self.hub.stats
        origin = self.origin
        assert origin is not None
        # Per span only decode and collect; counters and queues are updated once per read.
        st.frames += len(payloads)
        items: list[QueuedSpan] = []
        append = items.append
        # Each span is accounted in the exporter queues with its payload's size, which is
        # what bounds their memory (queue_bytes) whatever size of frame a guest sends.
        sizes: list[int] = []
        append_size = sizes.append
        sniffer = self.sniffer
        decode = sniffer.decoder  # still sniffing (auto): settles within `decode`
        for payload in payloads:
            try:
                span = decode(payload)
            except DecodeError as exc:
                st.decode_errors += 1
                self._conn_errors += 1
                if self._errors_logged < _ERRORS_LOGGED_PER_CONNECTION:
                    self._errors_logged += 1
                    log.warning(
                        "%s: skipping undecodable frame of %d bytes (format %s): %s%s",
                        self.who,
                        len(payload),
                        sniffer.settled or self.hub.fmt,
                        exc,
                        "; further errors on this connection are only counted"
                        if self._errors_logged == _ERRORS_LOGGED_PER_CONNECTION
                        else "",
                    )
                continue
            if span.repaired:
                st.repaired_strings += span.repaired
            append((span, origin))
            append_size(len(payload))
        if items:
            st.spans += len(items)
            for put in self.hub.puts:
                put(items, sizes)
