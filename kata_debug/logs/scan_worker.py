"""The scanner process: redacts and splits large log files off the collector's GIL.

Started by `kata_debug.logs.scan_client` as `python -m kata_debug.logs.scan_worker`, not through
multiprocessing: `python -m kata_debug` runs the CLI at import, and a plain child with a
line protocol needs nothing pickled and imports only what it uses (redact, logfmt).

Protocol, one JSON object per line:
  stdin  <- {"redact": bool, "dir": str, "present": [sid, ...], "files": [{"real": str, "cap": int}, ...],
             "progress_every": bytes}
  stdout -> per file, in order, every `progress_every` bytes read:
              {"progress": i, "out": name, "size": n, "sandboxes": [[sid, name], ...], "sizes": [[sid, n], ...]}
            and when it is done:
              {"file": i, "out": name | null, "size": n, "skipped": n, "lines": n, "bytes": n, "error": str | null,
               "redactions": {rule: n}, "sandboxes": [[sid, name], ...], "sizes": [[sid, n], ...], "overflow": n}
            then {"done": true}, or {"fatal": "Type: message"} on an unexpected error.
File names are relative to `dir` (a private directory the parent made and removes). `size`
and `sizes` are bytes flushed to the file's output and to the sandbox files that grew: the
parent may read that much while the scan goes on. `sandboxes` (files opened), `redactions`
and `overflow` are what is new since the last message.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from typing import IO, Any

from kata_debug.logs.scan import BATCH, PerSandbox, SourceStats, copy_log
from kata_debug.redact.redactor import Redactor


class _Counted:
    """A file that knows how much was written to it, and marks itself grown."""

    __slots__ = ("fh", "size", "_grown")

    def __init__(self, fh: IO[bytes], grown: dict[str, _Counted] | None = None, sid: str = "") -> None:
        self.fh = fh
        self.size = 0
        self._grown = (grown, sid)

    def write(self, data: bytes) -> None:
        self.fh.write(data)
        self.size += len(data)
        grown, sid = self._grown
        if grown is not None:
            grown[sid] = self


class _Job:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.dir: str = spec["dir"]
        self.redactor = Redactor(enabled=bool(spec["redact"]))
        self.files: list[dict[str, Any]] = spec["files"]
        self.progress_every = int(spec["progress_every"])
        self._sandbox_files: dict[str, _Counted] = {}
        self._new_sandboxes: list[tuple[str, str]] = []
        self._grown: dict[str, _Counted] = {}
        self.per_sandbox: PerSandbox[_Counted] = PerSandbox(self._open_sandbox, present=spec.get("present", ()))
        self._reported_counts: dict[str, int] = {}
        self._reported_overflow = 0

    def _create(self, name: str) -> IO[bytes]:
        # "x": never follows anything already there, even in our own private directory.
        return open(os.path.join(self.dir, name), "xb")

    def _open_sandbox(self, sid: str) -> _Counted:
        name = f"s{len(self._sandbox_files)}.log"
        sink = self._sandbox_files[sid] = _Counted(self._create(name), self._grown, sid)
        self._new_sandboxes.append((sid, name))
        return sink

    def scan(self, i: int) -> dict[str, Any]:
        spec = self.files[i]
        stats = SourceStats(source=spec["real"])
        name = f"f{i}.log"
        skipped = 0
        out = _Counted(self._create(name))
        read = 0

        def progress() -> None:
            nonlocal read
            read += BATCH
            if read >= self.progress_every:
                read = 0
                _send({"progress": i, "out": name, **self._flushed(out)})

        try:
            with out.fh:
                skipped = copy_log(
                    spec["real"], int(spec["cap"]), out, self.per_sandbox, self.redactor.stream(), stats, progress
                )
        except OSError as exc:
            stats.error = exc.strerror or str(exc)
        return {
            "file": i,
            "out": None if stats.error else name,
            "skipped": skipped,
            "lines": stats.lines,
            "bytes": stats.bytes,
            "error": stats.error,
            **self._flushed(out),
            **self._news(),
        }

    def _flushed(self, out: _Counted) -> dict[str, Any]:
        """Flush what grew, so the parent may read it: the sizes it may read up to."""
        if not out.fh.closed:
            out.fh.flush()
        for sink in self._grown.values():
            sink.fh.flush()
        sizes = [(sid, sink.size) for sid, sink in self._grown.items()]
        self._grown.clear()
        sandboxes, self._new_sandboxes = self._new_sandboxes, []
        return {"size": out.size, "sandboxes": sandboxes, "sizes": sizes}

    def _news(self) -> dict[str, Any]:
        counts = self.redactor.counts
        delta = {k: n - self._reported_counts.get(k, 0) for k, n in counts.items()}
        self._reported_counts = counts
        overflow = self.per_sandbox.overflow - self._reported_overflow
        self._reported_overflow = self.per_sandbox.overflow
        return {"redactions": {k: n for k, n in delta.items() if n}, "overflow": overflow}

    def close(self) -> None:
        for sink in self._sandbox_files.values():
            sink.fh.close()


def _send(msg: dict[str, Any]) -> None:
    sys.stdout.buffer.write(json.dumps(msg).encode() + b"\n")
    sys.stdout.buffer.flush()


def main() -> int:
    # Ctrl-C in a terminal signals the whole process group: the collector decides what an
    # interrupt means and kills this process itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    line = sys.stdin.buffer.readline()
    if not line:  # the parent went away (or needed no scan) before sending work
        return 0
    job = _Job(json.loads(line))
    try:
        try:
            for i in range(len(job.files)):
                _send(job.scan(i))
        finally:
            job.close()
        _send({"done": True})
    except BrokenPipeError:
        # The parent died without cleaning up: nobody will read what we wrote.
        shutil.rmtree(job.dir, ignore_errors=True)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # reported, so the collector can say what failed
        _send({"fatal": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
