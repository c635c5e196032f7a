"""The collector's side of the scanner process (see `logscan_worker`).

Scanning a large log is pure Python on bytes: in a thread it holds the GIL and starves the
threads that compress the bundle. In one separate process it uses its own core while this
process only compresses. It says how far it got as it goes, so what it has written can be
compressed while it scans on (`deflate_ahead`). Its output files live in a private temp
directory; they are read from there or handed to the bundle as spools, never copied.

The logs themselves are handed over as open descriptors (SCM_RIGHTS over a socket pair made
at start), never as paths: the collector opened and measured each one inside the host root,
and a path reopened in another process could by then be a symlink leading out of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

import re2

from kata_debug.bundle.writer import Spool
from kata_debug.logs.scan import SandboxIndex
from kata_debug.redact.user_rules import UserRules

# A file's result carries its sandbox index: up to 512 ids, each with a line of numbers.
_MAX_MESSAGE = 32 << 20
#: How often (bytes read) the scanner says how far it got, so its output can be compressed meanwhile.
PROGRESS_EVERY = 4 << 20
_IMPORT_ROOT = str(Path(__file__).resolve().parents[2])
# The worker runs with -S (no site-packages): the one installed package it imports, RE2
# (redaction's prefilter), goes on its path by the directory it is installed in.
_RE2_ROOT = str(Path(re2.__file__).resolve().parents[1])
#: Descriptors per message on the socket (the kernel's SCM_MAX_FD is 253).
FDS_PER_MESSAGE = 200


class ScannerGone(Exception):
    """The scanner process died or reported an unexpected error; the message says which."""


@dataclass
class ScannedFile:
    """One log file as the scanner copied it: `output` (the redacted copy, `size` bytes) is a
    path in the scanner's directory, None when the file could not be read (`error`)."""

    lines: int
    bytes: int
    skipped: int
    error: str | None
    output: str | None
    size: int
    redactions: dict[str, int] = field(default_factory=dict)
    #: Pseudonyms (`--obfuscate-hosts`) first recorded while scanning this file: pseudonym -> original.
    pseudonyms: dict[str, str] = field(default_factory=dict)
    index: SandboxIndex = field(default_factory=SandboxIndex)


@dataclass
class Progress:
    """How far the scanner got in the current file: the size it has flushed, so readable now."""

    output: str | None  # None: the file could not be read after all
    size: int


def _open_and_unlink(path: str) -> IO[bytes]:
    fh = open(path, "rb")
    os.unlink(path)
    return fh


def _make_workdir() -> tuple[str, IO[bytes]]:
    workdir = tempfile.mkdtemp(prefix="kata-debug-scan-")
    try:
        return workdir, open(os.path.join(workdir, "stderr"), "wb")
    except BaseException:
        shutil.rmtree(workdir, True)
        raise


async def _remove(workdir: str, stderr: IO[bytes] | None) -> None:
    """Remove the scanner's directory even when the caller is being cancelled meanwhile.

    The removal runs in a thread that a cancellation cannot stop half-way; a second
    cancellation while it runs is re-raised only after the directory is gone.
    """

    def _rm() -> None:
        if stderr is not None:
            stderr.close()
        shutil.rmtree(workdir, True)

    task = asyncio.ensure_future(asyncio.to_thread(_rm))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


class ScannerProcess:
    """One scanner process for one collection: start early, send the files once, read in order."""

    def __init__(
        self, proc: asyncio.subprocess.Process, workdir: str, stderr: IO[bytes], fds: socket.socket, their_fds: int
    ) -> None:
        self._proc = proc
        self.workdir = workdir
        self._stderr = stderr
        #: Our end of the socket the logs' descriptors go through; `their_fds` is its peer's number in the scanner.
        self._fds = fds
        self._their_fds = their_fds

    @classmethod
    async def start(cls) -> ScannerProcess | None:
        """None when no separate interpreter can run here (a frozen binary, exec failing)."""
        if getattr(sys, "frozen", False) or not sys.executable:
            return None
        making = asyncio.ensure_future(asyncio.to_thread(_make_workdir))
        try:
            workdir, stderr = await asyncio.shield(making)
        except asyncio.CancelledError:  # the thread goes on: wait for the directory, then remove it
            await asyncio.wait([making])
            if not making.cancelled() and making.exception() is None:
                await _remove(*making.result())
            raise
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError:  # out of descriptors: scan in process
            await _remove(workdir, stderr)
            return None
        ours.setblocking(False)
        their_number = theirs.fileno()  # pass_fds keeps a descriptor's number in the child
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": _IMPORT_ROOT + os.pathsep + _RE2_ROOT + (os.pathsep + path if path else "")}
        try:
            proc = await asyncio.create_subprocess_exec(
                # -S: the scanner needs only the standard library and this package (on
                # PYTHONPATH), so skipping site-packages start-up hooks saves ~60 ms.
                # -P, and cwd in our private directory: nothing where the collector was
                # started from (often a shared directory) can shadow a module.
                sys.executable,
                "-S",
                "-P",
                "-m",
                "kata_debug.logs.scan_worker",
                cwd=workdir,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                limit=_MAX_MESSAGE,
                pass_fds=(theirs.fileno(),),
            )
        except OSError:
            ours.close()
            await _remove(workdir, stderr)
            return None
        except BaseException:  # cancelled while starting: nobody else knows the directory
            ours.close()
            await _remove(workdir, stderr)
            raise
        finally:
            theirs.close()  # the scanner holds its own copy
        return cls(proc, workdir, stderr, ours, their_number)

    async def send(
        self,
        files: Sequence[tuple[BinaryIO, int, str]],
        *,
        known: Iterable[str],
        redact: bool,
        rules: UserRules | None = None,
        hosts: dict[str, Any] | None = None,
    ) -> None:
        """Hand over the files: (open log file, cap, bundle member its sandbox lines are indexed
        under), the sandboxes already indexed (they count towards the limit), the operator's
        redaction rules (`--redact-config`), which the scanner applies like the collector's, and
        `hosts` (`Obfuscator.spec()`, `--obfuscate-hosts`): the key goes through the pipe, never argv.

        The scanner gets its own copies of the descriptors; the caller still closes its files
        (once this returns, closing them no longer matters to the scanner).
        """
        job = {
            "redact": redact,
            "rules": None if rules is None else rules.to_json(),
            "hosts": hosts,
            "known": sorted(known),
            "dir": self.workdir,
            "progress_every": PROGRESS_EVERY,
            "fds": self._their_fds,
            "files": [{"cap": cap, "member": member} for _, cap, member in files],
        }
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(job).encode() + b"\n")
        try:
            await self._proc.stdin.drain()
            self._proc.stdin.close()
            fds = [fh.fileno() for fh, _, _ in files]
            for at in range(0, len(fds), FDS_PER_MESSAGE):
                await self._send_fds(fds[at : at + FDS_PER_MESSAGE])
        except (BrokenPipeError, ConnectionResetError):
            raise ScannerGone(await self._why_gone()) from None

    async def _send_fds(self, fds: list[int]) -> None:
        """One message carrying `fds`, waiting (on the loop, not in a thread) while the socket is full."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                socket.send_fds(self._fds, [b"f"], fds)
                return
            except BlockingIOError:
                writable: asyncio.Future[None] = loop.create_future()
                loop.add_writer(self._fds, _wake, writable)
                try:
                    await writable
                finally:
                    loop.remove_writer(self._fds)

    async def next_file(self, progress: Callable[[Progress], None] | None = None) -> ScannedFile:
        """The next file's result, in the order sent; `progress` hears of what is flushed meanwhile
        (and, last, of the final sizes)."""
        while True:
            msg = await self._read()
            name = msg["out"]
            if progress is not None:
                progress(Progress(None if name is None else os.path.join(self.workdir, name), msg["size"]))
            if "progress" not in msg:
                break
        return ScannedFile(
            lines=msg["lines"],
            bytes=msg["bytes"],
            skipped=msg["skipped"],
            error=msg["error"],
            output=None if name is None else os.path.join(self.workdir, name),
            size=msg["size"],
            redactions=msg["redactions"],
            pseudonyms=msg.get("pseudonyms") or {},
            index=SandboxIndex.from_json(msg["index"], msg["overflow"], msg["rejected"]),
        )

    async def adopt(self, path: str, cap: int | None = None) -> Spool:
        """A scanner output file as a spool (the caller closes it); the file leaves the directory."""
        return Spool.adopt(await asyncio.to_thread(_open_and_unlink, path), cap)

    async def finish(self) -> None:
        """Wait for the scanner to close its files and exit."""
        msg = await self._read()
        if not msg.get("done"):
            raise ScannerGone(f"log scanner sent {json.dumps(msg)[:200]} instead of done")
        await self._proc.wait()

    async def _read(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        try:
            line = await self._proc.stdout.readline()
        except ValueError:  # a line over _MAX_MESSAGE
            raise ScannerGone("log scanner sent an oversized message") from None
        if not line.endswith(b"\n"):
            raise ScannerGone(await self._why_gone())
        msg = json.loads(line)
        if "fatal" in msg:
            raise ScannerGone(f"log scanner failed: {msg['fatal']}")
        return msg

    async def _why_gone(self) -> str:
        code = await self._proc.wait()
        tail = await asyncio.to_thread(_last_line, os.path.join(self.workdir, "stderr"))
        return f"log scanner exited with code {code}" + (f": {tail}" if tail else "")

    async def close(self) -> None:
        """Kill the scanner if it still runs and remove its files (opened spools stay readable)."""
        try:
            if self._proc.returncode is None:
                try:
                    self._proc.kill()
                except ProcessLookupError:
                    pass
                await self._proc.wait()
        finally:
            self._fds.close()
            await _remove(self.workdir, self._stderr)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            lines = fh.read()[-4096:].decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""
