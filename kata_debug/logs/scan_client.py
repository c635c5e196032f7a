"""The collector's side of the scanner process (see `logscan_worker`).

Scanning a large log is pure Python on bytes: in a thread it holds the GIL and starves the
threads that compress the bundle. In one separate process it uses its own core while this
process only compresses. It says how far it got as it goes, so what it has written can be
compressed while it scans on (`deflate_ahead`). Its output files live in a private temp
directory; they are read from there or handed to the bundle as spools, never copied.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import re2

from kata_debug.bundle.writer import Spool
from kata_debug.logs.scan import SandboxIndex

# A file's result carries its sandbox index: up to 512 ids, each with a line of numbers.
_MAX_MESSAGE = 32 << 20
#: How often (bytes read) the scanner says how far it got, so its output can be compressed meanwhile.
PROGRESS_EVERY = 4 << 20
_IMPORT_ROOT = str(Path(__file__).resolve().parents[2])
# The worker runs with -S (no site-packages): the one installed package it imports, RE2
# (redaction's prefilter), goes on its path by the directory it is installed in.
_RE2_ROOT = str(Path(re2.__file__).resolve().parents[1])


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

    def __init__(self, proc: asyncio.subprocess.Process, workdir: str, stderr: IO[bytes]) -> None:
        self._proc = proc
        self.workdir = workdir
        self._stderr = stderr

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
            )
        except OSError:
            await _remove(workdir, stderr)
            return None
        except BaseException:  # cancelled while starting: nobody else knows the directory
            await _remove(workdir, stderr)
            raise
        return cls(proc, workdir, stderr)

    async def send(
        self,
        files: Sequence[tuple[str, int, str]],
        *,
        known: Iterable[str],
        redact: bool,
        hosts: dict[str, Any] | None = None,
    ) -> None:
        """Hand over the files: (real path, cap, bundle member its sandbox lines are indexed under),
        and the sandboxes already indexed (they count towards the limit). `hosts` is
        `Obfuscator.spec()`: it goes through the pipe, never through argv."""
        job = {
            "redact": redact,
            "hosts": hosts,
            "known": sorted(known),
            "dir": self.workdir,
            "progress_every": PROGRESS_EVERY,
            "files": [{"real": real, "cap": cap, "member": member} for real, cap, member in files],
        }
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(job).encode() + b"\n")
        try:
            await self._proc.stdin.drain()
            self._proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            raise ScannerGone(await self._why_gone()) from None

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
            await _remove(self.workdir, self._stderr)


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            lines = fh.read()[-4096:].decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""
