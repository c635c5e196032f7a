"""Capture on failure: trigger line -> capture on disk latency, and the agent's RSS in a burst.

    python bench/capture.py              # both parts, each without and with spans flowing
    python bench/capture.py latency      # N failures one after another: p50/p95 line -> capture on disk
    python bench/capture.py burst        # 100 sandboxes fail at once: peak agent RSS, captures vs counted
    python bench/capture.py ... nospans  # only without spans (or `spans`: only with)

The agent is the real `kata-debug node-agent` process on a synthetic host root whose journal
is this machine's (journald, lines written with `systemd-cat -t kata`). Latency is measured
from just before the error line is handed to journald to the moment the capture's file
exists (it is renamed into place complete), with `--capture-after 0s` (the pipeline alone:
journald, the follower, the capture written) and with the default `5s` (what a user waits).

"With spans" runs each part while another process feeds the agent spans as fast as it takes
them: four Cloud Hypervisor sandboxes (a listening `clh.sock` each, which the agent's
discovery attaches `clh.sock_10240` to, as on a node) with two guest connections each,
sending the real-serializer fixture streams (shared/fixtures/agent-trace, half JSON, half
bincode) in a loop. The agent runs with its defaults (queue, listener limits, spool), so
the figures are what the DaemonSet's 512Mi limit has to hold. Peak RSS is the kernel's
high-water mark for the agent process (VmHWM), not a sampled value.
Prints numbers, asserts nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.hostroots import add_task, oci_spec  # noqa: E402

FIXTURES = REPO.parent / "shared" / "fixtures" / "agent-trace"  # beside the checkout, as in CI
if not FIXTURES.is_dir():  # a git worktree elsewhere: the copy the tests use
    FIXTURES = REPO / "tests" / "fixtures" / "agent-trace"
SPAN_SANDBOXES = 4
CONNECTIONS_PER_SANDBOX = 2


def node(root: Path) -> None:
    for d in ("run/log/journal", "var/log/journal"):
        if Path("/" + d).is_dir() and any(Path("/" + d).iterdir()):
            (root / d).parent.mkdir(parents=True, exist_ok=True)
            (root / d).symlink_to("/" + d)


def sandbox(root: Path, sid: str, with_container: bool) -> None:
    add_task(root, "k8s.io", sid, oci_spec(ctype="sandbox", sandbox_id=sid, pod=f"p-{sid[:6]}"))
    if with_container:
        add_task(root, "k8s.io", "c" + sid, oci_spec(ctype="container", sandbox_id=sid))
    sbs = root / "run/vc/sbs" / sid
    sbs.mkdir(parents=True)
    (sbs / "persist.json").write_text(json.dumps({"SandboxContainer": sid, "HypervisorState": {"Pid": 1}}))


def remove(root: Path, sid: str) -> None:
    shutil.rmtree(root / "run/vc/sbs" / sid, ignore_errors=True)
    for t in (sid, "c" + sid):
        shutil.rmtree(root / "run/containerd/io.containerd.runtime.v2.task/k8s.io" / t, ignore_errors=True)


def agent(root: Path, state: Path, *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kata_debug", "node-agent", "--host-root", str(root), "--state-file", str(state)]
        + ["--stats-interval", "0", "--vsock-port", str(30000 + os.getpid() % 20000), *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "NODE_NAME": "bench"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if json.loads(state.read_text())["ready"]:
                return proc
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("agent not ready")


def peak_rss_mib(pid: int) -> float:
    """The process's RSS high-water mark (VmHWM): the true peak, whatever a sampler misses."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmHWM for pid {pid}")


class Spans:
    """Spans flowing into the agent for as long as this is open: VMM stand-ins and a feeder process."""

    def __init__(self, root: Path) -> None:
        self.vmms: list[socket.socket] = []
        self.paths: list[str] = []
        for i in range(SPAN_SANDBOXES):
            clh = root / "run/vc/vm" / f"tr{i}{uuid.uuid4().hex[:10]}" / "clh.sock"
            clh.parent.mkdir(parents=True)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(str(clh))
            s.listen()
            self.vmms.append(s)
            self.paths += [f"{clh}_10240"] * CONNECTIONS_PER_SANDBOX
        self.feeder: subprocess.Popen[bytes] | None = None
        self.t0 = 0.0
        self.sent = 0  # spans written by the feeder, known once it stopped
        self.rate = 0.0

    def __enter__(self) -> Spans:
        self.feeder = subprocess.Popen(
            [sys.executable, __file__, "_feed", *self.paths],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.feeder.stdout is not None
        if self.feeder.stdout.readline().strip() != b"flowing":  # every connection made, bytes sent
            raise SystemExit("span feeder did not start")
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.feeder is not None
        out, _ = self.feeder.communicate(b"", timeout=60)  # stdin closed: the feeder stops and reports
        self.sent = int(out.split()[-1]) if out.split() else 0
        self.rate = self.sent / max(1e-9, time.monotonic() - self.t0)
        for s in self.vmms:
            s.close()


def _feed(paths: list[str]) -> None:
    """Send fixture streams over one connection per path until stdin closes; print spans sent."""
    from kata_debug.forwarder.frames import FrameReader

    streams = []
    for fmt in ("json", "bincode"):
        raw = (FIXTURES / fmt / f"stream.{fmt}.bin").read_bytes()
        streams.append((raw, len(FrameReader().feed(raw))))
    stop = threading.Event()
    sent = [0] * len(paths)

    def one(i: int, path: str) -> None:
        raw, spans = streams[i % 2]
        while not stop.is_set():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(path)
                    while not stop.is_set():
                        s.sendall(raw)
                        sent[i] += spans
            except OSError:  # not attached yet, or closed by the agent's limits: connect again
                time.sleep(0.05)

    threads = [threading.Thread(target=one, args=(i, p), daemon=True) for i, p in enumerate(paths)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while not all(sent) and time.monotonic() < deadline:
        time.sleep(0.05)
    print("flowing" if all(sent) else "not-flowing", flush=True)
    sys.stdin.read()
    stop.set()
    print(sum(sent), flush=True)


def captured(directory: Path, prefix: str) -> bool:
    try:
        return any(n.endswith(".tar.gz") and prefix in n for n in os.listdir(directory))
    except FileNotFoundError:
        return False


def latency(spans: bool, samples: int = 10) -> None:
    for after in ("0s", "5s"):
        with tempfile.TemporaryDirectory(prefix="kcap-") as tmp:
            root = Path(tmp) / "node"
            root.mkdir()
            node(root)
            flow = Spans(root) if spans else None
            state = Path(tmp) / "state.json"
            proc = agent(root, state, "--capture-after", after, "--capture-rate", "1000/1m")
            out = root / "var/lib/kata-debug/traces/captures"
            times: list[float] = []
            try:
                if flow is not None:
                    flow.__enter__()
                time.sleep(1.0)
                for _ in range(samples):
                    sid = uuid.uuid4().hex
                    sandbox(root, sid, with_container=True)  # only the line can trigger it
                    time.sleep(0.6)  # the watcher has seen it
                    line = f'level=error msg="failed to launch qemu: exit status 1" sandbox={sid}\n'
                    t0 = time.monotonic()
                    subprocess.run(["systemd-cat", "-t", "kata"], input=line.encode(), check=True)
                    while not captured(out, sid[:12]):
                        if time.monotonic() - t0 > 60:
                            raise SystemExit("no capture within 60 s")
                        time.sleep(0.02)
                    times.append(time.monotonic() - t0)
                    remove(root, sid)
            finally:
                if flow is not None and flow.feeder is not None:
                    flow.__exit__()
                peak = peak_rss_mib(proc.pid)
                proc.terminate()
                proc.wait(30)
            q = statistics.quantiles(times, n=20, method="inclusive")  # within the samples: p95 <= max
            print(
                f"latency --capture-after {after}, {_flow_label(flow, state)}: line -> capture on disk over "
                f"{samples} failures: p50 {statistics.median(times):.2f}s p95 {q[18]:.2f}s max {max(times):.2f}s; "
                f"peak agent RSS {peak:.1f} MiB"
            )


def _flow_label(flow: Spans | None, state: Path) -> str:
    """What flowed meanwhile: the feeder's rate, and what the agent's final counters say it took."""
    if flow is None:
        return "no spans"
    counters = json.loads(state.read_text())["counters"]
    dropped = sum(e["dropped"] for e in counters["exporters"].values())
    return (
        f"spans flowing ({flow.rate:,.0f} spans/s sent over {len(flow.paths)} connections; agent took "
        f"{counters['spans']:,}, dropped {dropped:,}, {counters['budget_waits']:,} budget waits)"
    )


def burst(spans: bool, n: int = 100) -> None:
    with tempfile.TemporaryDirectory(prefix="kcap-") as tmp:
        root = Path(tmp) / "node"
        root.mkdir()
        node(root)
        sids = [uuid.uuid4().hex for _ in range(n)]
        for sid in sids:
            sandbox(root, sid, with_container=False)
        flow = Spans(root) if spans else None
        state = Path(tmp) / "state.json"
        proc = agent(root, state)  # default --capture-rate 6/10m, --capture-after 5s
        ps = psutil.Process(proc.pid)
        peak = ps.memory_info().rss
        try:
            if flow is not None:
                flow.__enter__()
            time.sleep(1.5)
            lines = "".join(f'level=error msg="create sandbox failed" sandbox={s}\n' for s in sids)
            t_line = time.time()
            subprocess.run(["systemd-cat", "-t", "kata"], input=lines.encode(), check=True)
            for sid in sids:
                remove(root, sid)
            end = time.monotonic() + 20
            while time.monotonic() < end:
                peak = max(peak, ps.memory_info().rss)
                time.sleep(0.05)
        finally:
            if flow is not None and flow.feeder is not None:
                flow.__exit__()
            hwm = peak_rss_mib(proc.pid)
            proc.terminate()
            proc.wait(30)
        counters = json.loads(state.read_text())["capture"]
        latencies = _capture_latencies(root / "var/lib/kata-debug/traces/captures", t_line)
        files = [f for f in os.listdir(root / "var/lib/kata-debug/traces/captures") if f.endswith(".tar.gz")]
        if os.environ.get("KATA_DEBUG_BENCH_KEEP"):  # to read the captures' manifests (per-part durations)
            shutil.copytree(root / "var/lib/kata-debug/traces/captures", os.environ["KATA_DEBUG_BENCH_KEEP"])
        print(
            f"burst of {n} failures (error line + vanish each), {_flow_label(flow, state)}: peak agent RSS "
            f"{hwm:.1f} MiB (sampled {peak / 2**20:.1f}); {len(files)} captures on disk, lines -> on disk "
            f"{latencies}; counters {counters}"
        )


def _capture_latencies(directory: Path, t_line: float) -> str:
    """p50/p95/max from the burst's lines handed to journald to each capture's rename into place."""
    ages = sorted((directory / f).stat().st_mtime - t_line for f in os.listdir(directory) if f.endswith(".tar.gz"))
    if not ages:
        return "none"
    p95 = statistics.quantiles(ages, n=20, method="inclusive")[18] if len(ages) > 1 else ages[0]
    return f"p50 {statistics.median(ages):.2f}s p95 {p95:.2f}s max {ages[-1]:.2f}s"


if __name__ == "__main__":
    if sys.argv[1:2] == ["_feed"]:
        _feed(sys.argv[2:])
        raise SystemExit(0)
    args = sys.argv[1:]
    parts = [a for a in args if a in ("latency", "burst")] or ["latency", "burst"]
    flows = [f == "spans" for f in args if f in ("nospans", "spans")] or [False, True]
    if any(a not in ("latency", "burst", "nospans", "spans") for a in args):
        raise SystemExit(__doc__)
    for part in parts:
        for spans in flows:
            (latency if part == "latency" else burst)(spans)
