"""The scanner process: redacts and splits large log files off the collector's GIL.

Started by `logscan_client` as `python -m kata_debug.logscan_worker`, not through
multiprocessing: `python -m kata_debug` runs the CLI at import, and a plain child with a
line protocol needs nothing pickled and imports only what it uses (redact, logfmt).

Protocol, one JSON object per line:
  stdin  <- {"redact": bool, "dir": str, "present": [sid, ...], "files": [{"real": str, "cap": int}, ...]}
  stdout -> per file, in order: {"file": i, "out": name | null, "skipped": n, "lines": n, "bytes": n,
              "error": str | null, "redactions": {rule: n}, "sandboxes": [[sid, name], ...], "overflow": n}
            then {"done": true}, or {"fatal": "Type: message"} on an unexpected error.
`out` and sandbox file names are relative to `dir` (a private directory the parent made and
removes); `redactions`, `sandboxes` and `overflow` are what is new since the last message.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from typing import IO, Any

from .logscan import PerSandbox, SourceStats, copy_log
from .redact import Redactor


class _Job:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.dir: str = spec["dir"]
        self.redactor = Redactor(enabled=bool(spec["redact"]))
        self.files: list[dict[str, Any]] = spec["files"]
        self._sandbox_files: dict[str, IO[bytes]] = {}
        self._new_sandboxes: list[tuple[str, str]] = []
        self.per_sandbox: PerSandbox[IO[bytes]] = PerSandbox(self._open_sandbox, present=spec.get("present", ()))
        self._reported_counts: dict[str, int] = {}
        self._reported_overflow = 0

    def _create(self, name: str) -> IO[bytes]:
        # "x": never follows anything already there, even in our own private directory.
        return open(os.path.join(self.dir, name), "xb")

    def _open_sandbox(self, sid: str) -> IO[bytes]:
        name = f"s{len(self._sandbox_files)}.log"
        fh = self._sandbox_files[sid] = self._create(name)
        self._new_sandboxes.append((sid, name))
        return fh

    def scan(self, i: int) -> dict[str, Any]:
        spec = self.files[i]
        stats = SourceStats(source=spec["real"])
        name: str | None = f"f{i}.log"
        skipped = 0
        try:
            with self._create(name) as out:
                skipped = copy_log(spec["real"], int(spec["cap"]), out, self.per_sandbox,
                                   self.redactor.stream(), stats)
        except OSError as exc:
            stats.error = exc.strerror or str(exc)
            name = None
        for fh in self._sandbox_files.values():
            fh.flush()  # what the parent reads after this message is complete
        return {"file": i, "out": name, "skipped": skipped, "lines": stats.lines, "bytes": stats.bytes,
                "error": stats.error, **self._news()}

    def _news(self) -> dict[str, Any]:
        counts = self.redactor.counts
        delta = {k: n - self._reported_counts.get(k, 0) for k, n in counts.items()}
        self._reported_counts = counts
        sandboxes, self._new_sandboxes = self._new_sandboxes, []
        overflow = self.per_sandbox.overflow - self._reported_overflow
        self._reported_overflow = self.per_sandbox.overflow
        return {"redactions": {k: n for k, n in delta.items() if n}, "sandboxes": sandboxes, "overflow": overflow}

    def close(self) -> None:
        for fh in self._sandbox_files.values():
            fh.close()


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
