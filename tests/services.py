"""Start the real services the tests use (containerd, systemd-journald), or say why not.

One module for `scripts/test` (`python3 -m tests.services`) and the pytest fixtures, so
both judge "running" the same way: by talking to the service, never by a socket file
existing. A journald that died leaves `/run/systemd/journal/{socket,stdout}` behind;
`systemd-cat` then fails with "Connection refused" while a file check says all is well.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

JOURNAL_DIR = Path("/run/systemd/journal")
JOURNALD = "/lib/systemd/systemd-journald"
CONTAINERD_LOG = Path("/tmp/kata-debug-containerd.log")
JOURNALD_LOG = Path("/tmp/kata-debug-journald.log")


class ServiceError(RuntimeError):
    """A service the tests need could not be started; the message says which and where to look."""


def _connects(path: Path, kind: socket.SocketKind) -> bool:
    with socket.socket(socket.AF_UNIX, kind) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def journald_alive() -> bool:
    """Both sockets `systemd-cat` and native-protocol writers use accept a connection."""
    return _connects(JOURNAL_DIR / "socket", socket.SOCK_DGRAM) and _connects(
        JOURNAL_DIR / "stdout", socket.SOCK_STREAM
    )


def containerd_alive(ctr: str) -> bool:
    try:
        return subprocess.run([ctr, "version"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _wait(alive, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if alive():
            return True
        time.sleep(0.1)
    return alive()


def _spawn(argv: list[str], log: Path) -> None:
    with log.open("ab") as out:
        subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)


def ensure_journald(seconds: float = 15) -> None:
    if journald_alive():
        return
    if not Path(JOURNALD).exists():
        raise ServiceError(f"{JOURNALD} not found; install the Debian package systemd (scripts/test does)")
    JOURNAL_DIR.mkdir(parents=True, exist_ok=True)
    # Sockets left by a journald that is gone; the new one must bind fresh ones.
    for name in ("socket", "stdout", "dev-log", "io.systemd.journal"):
        (JOURNAL_DIR / name).unlink(missing_ok=True)
    _spawn([JOURNALD], JOURNALD_LOG)
    if not _wait(journald_alive, seconds):
        raise ServiceError(f"systemd-journald did not start within {seconds:.0f} s; see {JOURNALD_LOG}")


def ensure_containerd(seconds: float = 20) -> str:
    """Returns the `ctr` path."""
    ctr = shutil.which("ctr")
    if ctr is None or shutil.which("containerd") is None:
        raise ServiceError(
            "containerd/ctr not installed; install the Debian packages containerd and runc (scripts/test does)"
        )
    if containerd_alive(ctr):
        return ctr
    _spawn(["containerd"], CONTAINERD_LOG)
    if not _wait(lambda: containerd_alive(ctr), seconds):
        raise ServiceError(f"containerd did not start within {seconds:.0f} s; see {CONTAINERD_LOG}")
    return ctr


def main() -> int:
    if os.geteuid() != 0:
        print("tests.services: containerd and journald need root", file=sys.stderr)
        return 1
    try:
        ensure_containerd()
        ensure_journald()
    except ServiceError as e:
        print(f"tests.services: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
