"""Forwarder throughput and memory: prints numbers, asserts nothing.

    python bench/forwarder.py            # all three parts
    python bench/forwarder.py decode     # decode-only spans/s per format, and bare json.loads
    python bench/forwarder.py e2e        # frames in over a Unix socket -> OTLP/HTTP receiver (3 runs each)
    python bench/forwarder.py e2e json   # the same, one format only
    python bench/forwarder.py memory     # peak RSS while 1,000,000 spans arrive, backend down

Targets (one core): decode >= 50,000 spans/s per format and the JSON path >= 0.5x bare
`json.loads` on the same payloads; end to end >= 20,000 spans/s; peak RSS < 200 MiB.
The forwarder runs pinned to one CPU; the sender and the receiver run in other processes
(pinned to another CPU when there is one), so they do not eat the forwarder's core. End to
end, spans are counted by the receiver and the clock runs from the first frame sent to the
last span received; the forwarder's CPU seconds per span are printed too, as the figure that
depends least on whatever else the machine is running.
Payloads are the real-serializer fixture frames (shared/fixtures/agent-trace).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FIXTURES = REPO.parent / "shared" / "fixtures" / "agent-trace"  # beside the checkout, as in CI
if not FIXTURES.is_dir():  # a git worktree elsewhere: the copy the tests use
    FIXTURES = REPO / "tests" / "fixtures" / "agent-trace"


# The CPUs this bench may use, read once by the first process: child processes inherit the
# parent's pinning, so they must not read their own affinity to find "the other core".
os.environ.setdefault("KATA_DEBUG_BENCH_CPUS", ",".join(map(str, sorted(os.sched_getaffinity(0)))))


def _cpus() -> list[int]:
    return [int(c) for c in os.environ["KATA_DEBUG_BENCH_CPUS"].split(",")]


def pin(cpu_index: int) -> int:
    cpus = _cpus()
    cpu = cpus[cpu_index % len(cpus)]
    os.sched_setaffinity(0, {cpu})
    return cpu


def payloads(fmt: str) -> list[bytes]:
    from kata_debug.forwarder.frames import FrameReader

    return FrameReader().feed((FIXTURES / fmt / f"stream.{fmt}.bin").read_bytes())


# --------------------------------------------------------------------------- decode


def bench_decode(rounds: int = 7, repeat: int = 40) -> None:
    from kata_debug.forwarder.wire_bincode import decode_bincode
    from kata_debug.forwarder.wire_json import decode_json

    pin(0)
    for fmt, decode in (("bincode", decode_bincode), ("json", decode_json)):
        frames = payloads(fmt)
        n = len(frames) * repeat
        best = {"decode": 0.0, "json.loads": 0.0}
        cpu = {"decode": 1e9, "json.loads": 1e9}
        for _ in range(rounds):  # interleaved, best of N: the same machine state for both
            for label, fn in (("decode", decode), ("json.loads", json.loads)):
                if label == "json.loads" and fmt != "json":
                    continue
                c = time.thread_time()
                t = time.perf_counter()
                for _ in range(repeat):
                    for p in frames:
                        fn(p)
                best[label] = max(best[label], n / (time.perf_counter() - t))
                cpu[label] = min(cpu[label], (time.thread_time() - c) / n)
        size = sum(map(len, frames)) / len(frames)
        print(
            f"decode {fmt:7s}: {best['decode']:>9,.0f} spans/s  (avg payload {size:.0f} B; "
            f"CPU {1e6 * cpu['decode']:.1f} us/span)"
        )
        if fmt == "json":
            print(
                f"  bare json.loads: {best['json.loads']:>9,.0f} payloads/s  -> JSON path at "
                f"{best['decode'] / best['json.loads']:.2f}x json.loads"
            )


# --------------------------------------------------------------------------- helpers run in other processes


def _sender(sock_path: str, fmt: str, total: int, connections: int) -> None:
    """Write `total` spans (fixture frames, repeated) over `connections` streams.

    Prints the monotonic time (system-wide clock, comparable across processes) just before
    the first byte is sent: the end-to-end clock starts there, not at process start-up.
    """
    pin(1)
    from tests.agent_wire import frames as make_frames

    frames_list = payloads(fmt)
    block = make_frames(frames_list)
    per_block = len(frames_list)
    per_conn = [total // connections + (1 if i < total % connections else 0) for i in range(connections)]
    socks = []
    for _ in range(connections):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock_path)
        socks.append(s)

    def one(s: socket.socket, count: int) -> None:
        sent = 0
        while sent + per_block <= count:
            s.sendall(block)
            sent += per_block
        if sent < count:
            s.sendall(make_frames(frames_list[: count - sent]))
        s.close()

    import threading

    threads = [threading.Thread(target=one, args=(s, n)) for s, n in zip(socks, per_conn)]
    print(f"{time.monotonic():.6f}", flush=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _receiver(port_file: str, expect: int) -> None:
    """The tests' OTLP/HTTP receiver (tests/otlp_receiver.py) in its own process.

    It parses every request and counts its spans; once `expect` spans arrived it prints the
    count and the monotonic time the last of them was received, then runs until killed.
    """
    pin(1)
    from tests.otlp_receiver import OtlpHttpReceiver

    class Timed(OtlpHttpReceiver):
        def add(self, req: Any, encoding: str) -> None:
            super().add(req, encoding)
            self.last = time.monotonic()
            if self.count >= expect and not self.reported:
                self.reported = True
                print(f"{self.count} {self.last:.6f}", flush=True)

    async def main() -> None:
        rx = Timed(keep=False)
        rx.reported = False
        await rx.start()
        Path(port_file).write_text(str(rx.port))
        while True:
            await asyncio.sleep(3600)

    asyncio.run(main())


def _spawn(*args: str, stdout: Any = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, *args], cwd=REPO, stdout=stdout, env={**os.environ, "PYTHONPATH": str(REPO)}
    )


def _wait_file(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {path}")
        time.sleep(0.05)
    return path.read_text()


# --------------------------------------------------------------------------- end to end


async def _e2e(total: int, fmt: str) -> dict[str, float]:
    """One run. Spans are counted at the receiver (another process), and the wall time runs
    from the sender's first frame to the receiver's last span."""
    from kata_debug.forwarder.server import Forwarder, ForwarderConfig
    from kata_debug.forwarder.targets import parse_export

    tmp = Path(tempfile.mkdtemp(prefix="kd-bench-"))
    port_file = tmp / "port"
    receiver = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "_receiver",
        str(port_file),
        str(total),
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        port = int(await asyncio.to_thread(_wait_file, port_file))
        sock = tmp / "agent.sock"
        fwd = Forwarder(
            ForwarderConfig(
                listen=[f"unix://{sock}?sandbox=bench"],
                exports=[parse_export(f"otlp+http://127.0.0.1:{port}/v1/traces")],
                queue_size=total,
                queue_bytes=1 << 30,
                stats_interval=0,
                host_root=str(tmp),
            )
        )
        task = asyncio.create_task(fwd.run())
        await fwd.wait_started()
        cpu0 = os.times()
        sender = _spawn("_sender", str(sock), fmt, str(total), "4", stdout=subprocess.PIPE)
        assert receiver.stdout is not None
        try:
            line = await asyncio.wait_for(receiver.stdout.readline(), 300)
        except TimeoutError:
            line = b""
        cpu1 = os.times()
        out, _ = await asyncio.to_thread(sender.communicate)
        first_frame = float(out.split()[0])
        stats, _ = next(iter(fwd.stats.per_exporter.values()))
        fwd.stop()
        await task
        if not line:
            raise SystemExit(
                f"end to end ({fmt}): the receiver did not get {total} spans; forwarder: {fwd.stats.line()}"
            )
        received, last_span = int(line.split()[0]), float(line.split()[1])
        elapsed = last_span - first_frame
        cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        return {
            "received": received,
            "elapsed": elapsed,
            "rate": received / elapsed,
            "us_per_span": 1e6 * cpu / received,
            "dropped": stats.dropped,
        }
    finally:
        receiver.kill()
        await receiver.wait()


def bench_e2e(total: int = 100_000, runs: int = 3, formats: tuple[str, ...] = ("bincode", "json")) -> None:
    from kata_debug.forwarder.server import tune_gc

    pin(0)
    tune_gc()  # as `kata-debug forward` does
    for fmt in formats:
        results = [asyncio.run(_e2e(total, fmt)) for _ in range(runs)]
        rates = sorted(r["rate"] for r in results)
        cpus = sorted(r["us_per_span"] for r in results)
        median_rate, median_cpu = rates[len(rates) // 2], cpus[len(cpus) // 2]
        # Wall-clock rate (first frame sent -> last span received, counted by the receiver),
        # and the forwarder's own CPU time per span: what one idle core would give, the
        # figure that depends least on what else the machine is running.
        print(
            f"end to end ({fmt}, 4 connections, unix socket -> SDK OTLP/HTTP exporter -> loopback receiver, "
            f"median of {runs} x {total:,} spans): {median_rate:>9,.0f} spans/s wall "
            f"(runs: {', '.join(f'{r:,.0f}' for r in rates)}); forwarder CPU {median_cpu:.1f} us/span = "
            f"{1e6 / median_cpu:,.0f} spans per CPU-second (runs: {', '.join(f'{c:.1f}' for c in cpus)})"
        )


# --------------------------------------------------------------------------- memory


async def _memory(total: int) -> None:
    from kata_debug.forwarder.server import Forwarder, ForwarderConfig, tune_gc
    from kata_debug.forwarder.targets import parse_export

    pin(0)
    tune_gc()  # as `kata-debug forward` does
    tmp = Path(tempfile.mkdtemp(prefix="kd-bench-"))
    sock = tmp / "agent.sock"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # nobody listens: the backend is down throughout
    fwd = Forwarder(
        ForwarderConfig(
            listen=[f"unix://{sock}?sandbox=bench"],
            exports=[parse_export(f"otlp+http://127.0.0.1:{dead_port}/v1/traces")],
            stats_interval=0,
            host_root=str(tmp),
            shutdown_timeout=1,
        )
    )
    task = asyncio.create_task(fwd.run())
    await fwd.wait_started()
    t0 = time.perf_counter()
    senders = [
        _spawn("_sender", str(sock), fmt, str(total // 2), "2", stdout=subprocess.DEVNULL)
        for fmt in ("bincode", "json")
    ]
    while fwd.stats.spans + fwd.stats.decode_errors < total:
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - t0
    for s in senders:
        s.wait()
    exp, queued = next(iter(fwd.stats.per_exporter.values()))
    dropped, failed = exp.dropped, exp.failed_exports  # before shutdown adds the leftovers
    fwd.stop()
    await task
    peak = _peak_rss_mib()
    print(
        f"memory: {total:,} spans in {elapsed:.1f}s with the backend down (queue {fwd.config.queue_size:,}): "
        f"peak RSS {peak:.0f} MiB; {dropped:,} dropped while running (oldest first), {queued:,} queued "
        f"when the last span arrived, {failed} failed export attempts"
    )


def _peak_rss_mib() -> float:
    """This process's own peak RSS. Not `ru_maxrss`: Linux carries that over from the parent
    across fork and exec, so after the end-to-end part (whose parent holds 100,000 spans) it
    would report the bench's RSS, not the forwarder's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_memory(total: int = 1_000_000) -> None:
    # A fresh process: the peak must be the forwarder's alone.
    subprocess.run(
        [sys.executable, __file__, "_memory", str(total)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )


def main() -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
    args = sys.argv[1:]
    if args and args[0] == "_sender":
        _sender(args[1], args[2], int(args[3]), int(args[4]))
        return
    if args and args[0] == "_receiver":
        _receiver(args[1], int(args[2]))
        return
    if args and args[0] == "_memory":
        asyncio.run(_memory(int(args[1])))
        return
    parts = {"decode": bench_decode, "e2e": bench_e2e, "memory": bench_memory}
    if args[:1] == ["e2e"] and len(args) == 2 and args[1] in ("bincode", "json"):
        chosen = [lambda: bench_e2e(formats=(args[1],))]
    elif all(a in parts for a in args):
        chosen = [parts[a] for a in args or parts]
    else:
        raise SystemExit(__doc__)
    print(f"python {sys.version.split()[0]}, {len(_cpus())} CPUs available, forwarder pinned to one")
    for run in chosen:
        run()


if __name__ == "__main__":
    main()
