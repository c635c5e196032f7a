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

# One message may list up to 512 new sandbox ids; ids have no length limit in the logs.
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
    overflow: int = 0


@dataclass
class Progress:
    """How far the scanner got in the current file: sizes it has flushed, so readable now."""

    output: str | None  # None: the file could not be read after all
    size: int
    sandboxes: dict[str, tuple[str, int]]  # sandbox id -> (file, size) for those that grew


def _open_and_unlink(path: str) -> IO[bytes]:
    fh = open(path, "rb")
    os.unlink(path)
    return fh


def _make_workdir() -> tuple[str, IO[bytes]]:
    workdir = tempfile.mkdtemp(prefix="kata-debug-scan-")
    return workdir, open(os.path.join(workdir, "stderr"), "wb")


class ScannerProcess:
    """One scanner process for one collection: start early, send the files once, read in order."""

    def __init__(self, proc: asyncio.subprocess.Process, workdir: str, stderr: IO[bytes]) -> None:
        self._proc = proc
        self.workdir = workdir
        self._stderr = stderr
        #: sandbox id -> file holding that sandbox's lines from the scanned files, as reported so far.
        self.sandbox_files: dict[str, str] = {}
        #: sandbox id -> bytes of that file the scanner has flushed (all of it after `finish`).
        self.sandbox_sizes: dict[str, int] = {}

    @classmethod
    async def start(cls) -> ScannerProcess | None:
        """None when no separate interpreter can run here (a frozen binary, exec failing)."""
        if getattr(sys, "frozen", False) or not sys.executable:
            return None
        workdir, stderr = await asyncio.to_thread(_make_workdir)
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
            stderr.close()
            await asyncio.to_thread(shutil.rmtree, workdir, True)
            return None
        return cls(proc, workdir, stderr)

    async def send(self, files: Sequence[tuple[str, int]], *, present: Iterable[str], redact: bool) -> None:
        """Hand over the files (real path, cap) and the sandboxes that already have lines elsewhere."""
        job = {
            "redact": redact,
            "dir": self.workdir,
            "present": sorted(present),
            "progress_every": PROGRESS_EVERY,
            "files": [{"real": real, "cap": cap} for real, cap in files],
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
            grown = self._sandboxes(msg)
            name = msg["out"]
            if progress is not None:
                progress(Progress(None if name is None else os.path.join(self.workdir, name), msg["size"], grown))
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
            overflow=msg["overflow"],
        )

    def _sandboxes(self, msg: dict[str, Any]) -> dict[str, tuple[str, int]]:
        for sid, name in msg["sandboxes"]:
            self.sandbox_files[sid] = os.path.join(self.workdir, name)
        for sid, size in msg["sizes"]:
            self.sandbox_sizes[sid] = size
        return {sid: (self.sandbox_files[sid], size) for sid, size in msg["sizes"]}

    async def adopt(self, path: str, cap: int | None = None) -> Spool:
        """A scanner output file as a spool (the caller closes it); the file leaves the directory."""
        return Spool.adopt(await asyncio.to_thread(_open_and_unlink, path), cap)

    async def finish(self) -> None:
        """Wait for the scanner to close its files and exit."""
        msg = await self._read()
        if not msg.get("done"):
            raise ScannerGone(f"log scanner sent {json.dumps(msg)[:200]} instead of done")
        await self._proc.wait()

    async def take_sandbox(self, sid: str, cap: int | None) -> Spool:
        """The scanned lines of one sandbox as a spool (caller closes), after `finish`."""
        return await self.adopt(self.sandbox_files.pop(sid), cap)

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
            self._stderr.close()
            await asyncio.to_thread(shutil.rmtree, self.workdir, True)


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            lines = fh.read()[-4096:].decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""
