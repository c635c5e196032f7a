"""Capture on failure: trigger line -> capture on disk latency, and the agent's RSS in a burst.

    python bench/capture.py              # both parts
    python bench/capture.py latency      # N failures one after another: p50/p95 line -> capture on disk
    python bench/capture.py burst        # 100 sandboxes fail at once: peak agent RSS, captures vs counted

The agent is the real `kata-debug node-agent` process on a synthetic host root whose journal
is this machine's (journald, lines written with `systemd-cat -t kata`). Latency is measured
from just before the error line is handed to journald to the moment the capture's file
exists (it is renamed into place complete), with `--capture-after 0s` (the pipeline alone:
journald, the follower, the capture written) and with the default `5s` (what a user waits).
Prints numbers, asserts nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.hostroots import add_task, oci_spec  # noqa: E402


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


def captured(directory: Path, prefix: str) -> bool:
    try:
        return any(n.endswith(".tar.gz") and prefix in n for n in os.listdir(directory))
    except FileNotFoundError:
        return False


def latency(samples: int = 10) -> None:
    for after in ("0s", "5s"):
        with tempfile.TemporaryDirectory(prefix="kcap-") as tmp:
            root = Path(tmp) / "node"
            root.mkdir()
            node(root)
            proc = agent(root, Path(tmp) / "state.json", "--capture-after", after, "--capture-rate", "1000/1m")
            out = root / "var/lib/kata-debug/traces/captures"
            times: list[float] = []
            try:
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
                proc.terminate()
                proc.wait(30)
            q = statistics.quantiles(times, n=20)
            print(
                f"latency --capture-after {after}: line -> capture on disk over {samples} failures: "
                f"p50 {statistics.median(times):.2f}s p95 {q[18]:.2f}s max {max(times):.2f}s"
            )


def burst(n: int = 100) -> None:
    with tempfile.TemporaryDirectory(prefix="kcap-") as tmp:
        root = Path(tmp) / "node"
        root.mkdir()
        node(root)
        sids = [uuid.uuid4().hex for _ in range(n)]
        for sid in sids:
            sandbox(root, sid, with_container=False)
        state = Path(tmp) / "state.json"
        proc = agent(root, state)  # default --capture-rate 6/10m, --capture-after 5s
        ps = psutil.Process(proc.pid)
        peak = ps.memory_info().rss
        try:
            time.sleep(1.5)
            lines = "".join(f'level=error msg="create sandbox failed" sandbox={s}\n' for s in sids)
            subprocess.run(["systemd-cat", "-t", "kata"], input=lines.encode(), check=True)
            for sid in sids:
                remove(root, sid)
            end = time.monotonic() + 20
            while time.monotonic() < end:
                peak = max(peak, ps.memory_info().rss)
                time.sleep(0.05)
            counters = json.loads(state.read_text())["capture"]
        finally:
            proc.terminate()
            proc.wait(30)
        files = [f for f in os.listdir(root / "var/lib/kata-debug/traces/captures") if f.endswith(".tar.gz")]
        print(
            f"burst of {n} failures (error line + vanish each): peak agent RSS {peak / 2**20:.1f} MiB; "
            f"{len(files)} captures on disk; counters {counters}"
        )


if __name__ == "__main__":
    parts = sys.argv[1:] or ["latency", "burst"]
    if "latency" in parts:
        latency()
    if "burst" in parts:
        burst()
