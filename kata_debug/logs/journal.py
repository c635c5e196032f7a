"""Read the journal newest first, stop at the size cap, and hand the kept entries on oldest first.

A week of debug-level Kata logging is gigabytes; a bundle keeps the newest `--max-log-size`
of it. Reading the whole `--since` window forward and dropping the oldest bytes afterwards
costs the whole window; `journalctl --reverse` hands over the newest entries first, so
reading stops (and journalctl is killed) as soon as the cap is filled. The entries are
then turned back into time order, because a maintainer reads a log forwards and redaction
must see a private-key block BEGIN before its body: a block cut by the cap lies at the head
of the forward text, where the stream redactor masks an orphan body up to its END.

One journalctl process reads every identifier (and the kernel transport) in one pass over
the journal, in journalctl's own readable format (`short-iso-precise`, UTC): no JSON is
decoded per entry, so the collector runs at close to journalctl's own speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO

_READ = 1 << 20
#: Older entries read past the cap, never stored: the redactor reads them first, so a
#: private-key block the cap cuts in two is masked whole (its BEGIN is in here).
LEAD_IN = 64 << 10


@dataclass
class JournalRead:
    """What one reverse read left in `file` (newest entry first), or why it failed."""

    file: IO[bytes] | None
    size: int = 0
    #: Whether the cap stopped the read: older entries within `--since` were left out.
    capped: bool = False
    #: Bytes of older entries journalctl had already sent when the cap stopped it (a lower
    #: bound of what was left out: the rest was never read).
    cut: int = 0
    #: Up to LEAD_IN bytes of the entries just older than the kept ones, newest first.
    lead_in: bytes = b""
    error: str | None = None
    missing: bool = False  # journalctl is not installed


def journalctl_argv(root: str, since: datetime, identifiers: Sequence[str], kernel: bool) -> list[str]:
    """The one journalctl command: every identifier, the kernel transport, newest first."""
    argv = ["journalctl", "--no-pager", "-q", "--utc", "-o", "short-iso-precise", "--reverse"]
    if root != "/":
        argv += ["--root", root]
    argv += ["--since", f"@{since.timestamp():.6f}"]
    argv += [f"SYSLOG_IDENTIFIER={i}" for i in identifiers]
    if kernel:
        argv += ["+", "_TRANSPORT=kernel"]
    return argv


def _entry_cut(data: bytes, limit: int) -> int:
    """The largest entry boundary in `data` at or below `limit` (0 when there is none).

    An entry is its first line plus journalctl's indented continuation lines (multi-line
    messages): a boundary is a line start that is not a continuation.
    """
    pos = data.rfind(b"\n", 0, limit)
    while pos >= 0:
        if data[pos + 1 : pos + 2] != b" ":
            return pos + 1
        pos = data.rfind(b"\n", 0, pos)
    return 0


async def read_reverse(argv: Sequence[str], cap: int, timeout: float) -> JournalRead:
    """Run journalctl `--reverse`, keeping whole entries up to `cap` bytes in a temp file."""
    tmp = await asyncio.to_thread(tempfile.TemporaryFile, "w+b", prefix="kata-debug-journal-")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
    except FileNotFoundError:
        tmp.close()
        return JournalRead(None, missing=True)
    assert proc.stdout is not None and proc.stderr is not None
    size = 0
    capped = False
    cut_bytes = 0
    lead_in = b""

    async def pump() -> bytes:
        nonlocal size, capped, cut_bytes, lead_in
        pending = b""
        assert proc.stdout is not None and proc.stderr is not None
        while chunk := await proc.stdout.read(_READ):
            pending += chunk
            if size + len(pending) > cap:
                cut = _entry_cut(pending, cap - size)
                await asyncio.to_thread(tmp.write, pending[:cut])
                size += cut
                capped = True
                rest = pending[cut:]
                while len(rest) < LEAD_IN and (more := await proc.stdout.read(_READ)):
                    rest += more
                lead_in = rest[: _entry_cut(rest, LEAD_IN)] if len(rest) > LEAD_IN else rest
                cut_bytes = len(rest)
                # What is older is not wanted: stop journalctl reading it (it may have
                # finished on its own meanwhile, when the window held little more).
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                return b""
            cut = _entry_cut(pending, len(pending))
            if cut:
                await asyncio.to_thread(tmp.write, pending[:cut])
                size += cut
                pending = pending[cut:]
        if pending:  # the oldest entry, or output without a final newline
            await asyncio.to_thread(tmp.write, pending if pending.endswith(b"\n") else pending + b"\n")
            size += len(pending) + (not pending.endswith(b"\n"))
        return await proc.stderr.read()

    try:
        err = await asyncio.wait_for(pump(), timeout)
        code = await proc.wait()
    except BaseException:
        tmp.close()
        raise
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it may have exited on its own
                proc.kill()
            await proc.wait()
    if code != 0 and not capped:
        tmp.close()
        return JournalRead(None, error=f"journalctl exit {code}: {err.decode(errors='replace').strip()[:300]}")
    await asyncio.to_thread(tmp.flush)
    return JournalRead(tmp, size=size, capped=capped, cut=cut_bytes, lead_in=lead_in)


def _entries_reversed(block: bytes) -> list[bytes]:
    """The entries of `block` (whole entries, newest first) in time order."""
    if b"\n " not in block:  # no multi-line message: lines are entries (all in C)
        lines = block.split(b"\n")
        lines.pop()  # block ends with a newline
        lines.reverse()
        lines.append(b"")
        return [b"\n".join(lines)]
    entries: list[bytes] = []
    start = 0
    while start < len(block):
        end = _next_entry(block, start)
        entries.append(block[start:end])
        start = end
    entries.reverse()
    return entries


def _next_entry(block: bytes, start: int) -> int:
    end = block.find(b"\n", start)
    while end >= 0 and block[end + 1 : end + 2] == b" ":
        end = block.find(b"\n", end + 1)
    return len(block) if end < 0 else end + 1


def lead_in_forward(read: JournalRead) -> bytes:
    """The lead-in entries in time order (feed them to the stream redactor first, then drop the output)."""
    if not read.lead_in:
        return b""
    data = read.lead_in if read.lead_in.endswith(b"\n") else read.lead_in + b"\n"
    return b"".join(_entries_reversed(data))


def forward_blocks(fh: IO[bytes], size: int, block: int = _READ) -> Iterator[bytes]:
    """The reverse-read file's entries in time order, in blocks of whole entries.

    Reads the file from its end, so memory stays at about one block whatever the size.
    """
    pos = size
    carry = b""  # continuation lines whose entry starts in the part before this block
    while pos > 0:
        start = max(0, pos - block)
        fh.seek(start)
        data = fh.read(pos - start) + carry
        pos = start
        if start > 0:
            cut = data.find(b"\n")
            while cut >= 0 and data[cut + 1 : cut + 2] == b" ":
                cut = data.find(b"\n", cut + 1)
            if cut < 0:  # one entry larger than a block: read on with all of it
                carry = data
                continue
            carry, data = data[: cut + 1], data[cut + 1 :]
        else:
            carry = b""
        if data:
            yield b"".join(_entries_reversed(data))
    if carry:
        yield b"".join(_entries_reversed(carry))


def copy_forward(fh: IO[bytes], size: int, out: Callable[[bytes], None]) -> None:
    """Feed `out` the reverse-read file in time order (blocks of whole entries)."""
    for data in forward_blocks(fh, size):
        out(data)
