"""The scanner process: redacts and indexes large log files off the collector's GIL.

Started by `kata_debug.logs.scan_client` as `python -m kata_debug.logs.scan_worker`, not through
multiprocessing: `python -m kata_debug` runs the CLI at import, and a plain child with a
line protocol needs nothing pickled and imports only what it uses (redact, logfmt).

Protocol, one JSON object per line:
  stdin  <- {"redact": bool, "rules": {user redaction rules} | null, "hosts": {"key", "hostnames"} | null,
             "dir": str, "files": [{"cap": int, "member": str}, ...], "known": [sid, ...], "progress_every": bytes,
             "fds": n}
  socket `fds` (inherited, SOCK_SEQPACKET) <- the files' open descriptors, in order, up to
             200 per message. The worker reads only through them: it never opens a log by
             path, so a log swapped for a symlink after the collector measured it changes nothing.
  stdout -> per file, in order, every `progress_every` bytes read:
              {"progress": i, "out": name, "size": n}
            and when it is done:
              {"file": i, "out": name | null, "size": n, "skipped": n, "lines": n, "bytes": n, "error": str | null,
               "redactions": {rule: n}, "pseudonyms": {pseudonym: original}, "index": {sid: {member: {"lines", "first_line", "last_line"}}},
               "overflow": n, "rejected": n}
            then {"done": true}, or {"fatal": "Type: message"} on an unexpected error.
File names are relative to `dir` (a private directory the parent made and removes). `size`
is bytes flushed to the file's output: the parent may read that much while the scan goes
on. `redactions`, `index`, `overflow` and `rejected` are what this file added.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
from typing import IO, Any

from kata_debug.logs.scan import BATCH, SandboxIndex, SourceStats, copy_log
from kata_debug.redact.obfuscate import Obfuscator
from kata_debug.redact.redactor import Redactor
from kata_debug.redact.user_rules import UserRules


class _Counted:
    """A file that knows how much was written to it."""

    __slots__ = ("fh", "size")

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.size = 0

    def write(self, data: bytes) -> None:
        self.fh.write(data)
        self.size += len(data)


class _Job:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.dir: str = spec["dir"]
        rules = spec.get("rules")
        hosts = spec.get("hosts")
        self.redactor = Redactor(
            enabled=bool(spec["redact"]),
            rules=None if rules is None else UserRules.from_json(rules, "scanner job"),
            hosts=Obfuscator.from_spec(hosts) if hosts else None,
        )
        self.files: list[dict[str, Any]] = spec["files"]
        self.progress_every = int(spec["progress_every"])
        self._reported_counts: dict[str, int] = {}
        #: Sandboxes indexed so far (the collector's, then each file's): the limit counts them all.
        self._known: set[str] = set(spec.get("known", ()))
        self.fds_socket = int(spec["fds"])
        self.fds: list[int] = []

    def receive_fds(self, sock: socket.socket) -> None:
        """Take the files' descriptors, all before scanning any: the collector sends them at once."""
        while len(self.fds) < len(self.files):
            msg, fds, flags, _ = socket.recv_fds(sock, 1, len(self.files) - len(self.fds))
            self.fds += fds
            if flags & socket.MSG_CTRUNC or not msg:
                raise RuntimeError(f"received {len(self.fds)} of {len(self.files)} log file descriptors")

    def scan(self, i: int) -> dict[str, Any]:
        spec = self.files[i]
        stats = SourceStats(source=spec["member"])
        name = f"f{i}.log"
        skipped = 0
        index = SandboxIndex(self._known)
        # "x": never follows anything already there, even in our own private directory.
        out = _Counted(open(os.path.join(self.dir, name), "xb"))
        read = 0

        def progress() -> None:
            nonlocal read
            read += BATCH
            if read >= self.progress_every:
                read = 0
                out.fh.flush()
                _send({"progress": i, "out": name, "size": out.size})

        fd, self.fds[i] = self.fds[i], -1
        try:
            with out.fh, os.fdopen(fd, "rb") as src:
                skipped = copy_log(
                    src, int(spec["cap"]), out, index, spec["member"], self.redactor.stream(), stats, progress
                )
        except OSError as exc:
            stats.error = exc.strerror or str(exc)
        counts = self.redactor.counts
        delta = {k: n - self._reported_counts.get(k, 0) for k, n in counts.items()}
        self._reported_counts = counts
        return {
            "file": i,
            "out": None if stats.error else name,
            "size": out.size,
            "skipped": skipped,
            "lines": stats.lines,
            "bytes": stats.bytes,
            "error": stats.error,
            "redactions": {k: n for k, n in delta.items() if n},
            "pseudonyms": self.redactor.hosts.take_new() if self.redactor.hosts is not None else {},
            "index": index.to_json(),
            "overflow": index.overflow,
            "rejected": index.rejected,
        }


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
        with socket.socket(fileno=job.fds_socket) as sock:
            job.receive_fds(sock)
        for i in range(len(job.files)):
            _send(job.scan(i))
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
