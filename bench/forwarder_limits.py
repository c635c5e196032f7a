"""The forwarder's memory under stalled connections: prints numbers, asserts nothing.

    python bench/forwarder_limits.py                      # 500 connections, default limits
    python bench/forwarder_limits.py 500 --max-connections 1000   # all 500 admitted: the budget alone

Each connection comes in over hybrid vsock (`<vmm socket>_10240`), sends a frame header
announcing 1 MiB and then all of it but the last byte, and stalls. `kata-debug forward` runs
as its own process with the given options; its RSS (VmRSS) is read before the connections
open (baseline), once every connection has sent what the forwarder would take (open), and
3 s after they all close (after). Targets: open < 200 MiB, after near the baseline.

The sender uses non-blocking sockets sharing one payload buffer, so what the forwarder does
not read stays in the kernel's socket buffers, not in a copy per connection.
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FRAME = 1 << 20


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_socket():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"forwarder did not listen on {path}")
        time.sleep(0.05)


def stall(path: Path, count: int, settle: float) -> tuple[list[socket.socket], int]:
    """Open `count` connections, each sending a 1 MiB frame but its last byte; return them and the bytes sent.

    Sends until no socket accepts more for `settle` seconds (the forwarder read what it takes).
    """
    payload = memoryview(struct.pack(">Q", FRAME) + b"x" * (FRAME - 1))
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    sent: dict[socket.socket, int] = {}
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        s.setblocking(False)
        socks.append(s)
        sent[s] = 0
        sel.register(s, selectors.EVENT_WRITE)
    total = 0
    quiet_since = time.monotonic()
    while sel.get_map() and time.monotonic() - quiet_since < settle:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                n = s.send(payload[sent[s] :])
            except BlockingIOError:
                continue
            except OSError:  # refused (--max-connections): closed by the forwarder
                sel.unregister(s)
                continue
            sent[s] += n
            total += n
            quiet_since = time.monotonic()
            if sent[s] == len(payload):
                sel.unregister(s)
    sel.close()
    return socks, total


def main() -> None:
    args = sys.argv[1:]
    count = int(args[0]) if args and args[0].isdigit() else 500
    extra = args[1:] if args and args[0].isdigit() else args
    tmp = Path(tempfile.mkdtemp(prefix="kd-lim-", dir="/tmp"))
    vmm = tmp / "clh.sock"
    listen = tmp / "clh.sock_10240"
    cmd = [
        sys.executable,
        "-m",
        "kata_debug",
        "forward",
        "--listen",
        f"hvsock://{vmm}?sandbox=bench",
        "--export",
        f"file://{tmp}/spool.jsonl",
        "--stats-interval",
        "0",
        "--log-level",
        "error",
        *extra,
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        wait_socket(listen, proc)
        time.sleep(1.0)
        base = rss_mib(proc.pid)
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        socks, sent = stall(listen, count, settle=2.0)
        opened = rss_mib(proc.pid)
        t1 = time.perf_counter()
        for s in socks:
            s.close()
        time.sleep(3.0)
        after = rss_mib(proc.pid)
        cpu = cpu_seconds(proc.pid) - cpu0
        print(
            f"stalled connections: {count} x partial 1 MiB frame over hybrid vsock ({' '.join(extra) or 'defaults'}): "
            f"sockets took {sent / (1 << 20):.0f} of {count} MiB; RSS baseline {base:.0f} MiB, "
            f"open {opened:.0f} MiB, 3 s after close {after:.0f} MiB; {t1 - t0:.1f}s wall, {cpu:.2f} CPU-s"
        )
    finally:
        proc.terminate()
        proc.wait(15)


if __name__ == "__main__":
    main()
