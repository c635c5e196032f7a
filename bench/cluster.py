"""Benchmark `kata-debug collect --cluster`: wall time, aggregate MB/s and peak RSS of the CLI.

A loopback API server (tests/fake_kube_exec.ClusterFake, in its own process so it does not
share the CLI's CPU accounting or memory) serves N Kata nodes whose agent pods answer exec
with a prepared 20 MiB node bundle, framed exactly like a real API server (32 KiB binary
frames, status on channel 3). The real CLI then collects the cluster into a file.
Targets: aggregate MB/s at 200 nodes >= 0.7x that at 50 nodes; peak RSS < 200 MiB at both.

    python bench/cluster.py                    # 50 and 200 nodes, 20 MiB each, --parallel 8
    python bench/cluster.py --nodes 20 --mib 5
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MIB = 1 << 20


def make_node_bundle(path: Path, mib: int) -> int:
    """A valid node bundle (tar.gz with a manifest) of about `mib` MiB: incompressible content,
    as a real compressed bundle is."""
    from kata_debug.bundle.writer import BundleWriter

    with open(path, "wb") as fh:
        w = BundleWriter(fh, "kata-debug-bench-node-20260101T000000Z", "gzip", level=1)
        chunk = os.urandom(MIB)
        w.add_fileobj("shim-logs/kata.log", io.BytesIO(chunk * 1), MIB)
        for i in range(mib - 1):
            w.add_bytes(f"shim-logs/part-{i:04d}.bin", os.urandom(MIB))
        w.close({"schema_version": 1, "node": "bench"})
    return path.stat().st_size


async def serve(nodes: int, bundle: Path, kubeconfig: Path) -> None:
    """The API server process: N Kata nodes, each agent streaming `bundle`."""
    from tests.fake_kube_exec import ClusterFake, ExecBehaviour
    from tests.kata_cluster import agent_pod, node, runtime_class

    fake = ClusterFake()
    fake.add(runtime_class("kata-qemu", "kata-qemu"))
    for i in range(nodes):
        name = f"kata-{i:03d}"
        fake.add(node(name), agent_pod(name))
        fake.behave(f"kata-debug-node-agent-{name}", ExecBehaviour("file", file=bundle))
    await fake.start()
    tmp = kubeconfig.with_suffix(".tmp")
    fake.kubeconfig(tmp)
    tmp.rename(kubeconfig)  # appears complete
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await fake.close()


def run_once(nodes: int, bundle: Path, work: Path, parallel: int) -> dict[str, float]:
    kubeconfig = work / f"kc-{nodes}"
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(nodes), "--bundle", str(bundle), "--kubeconfig", str(kubeconfig)],
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 60
        while not kubeconfig.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the API server process did not start")
            time.sleep(0.05)
        out = work / f"cluster-{nodes}.tar.gz"
        t0 = time.perf_counter()
        cli = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kata_debug",
                "collect",
                "--cluster",
                "--kubeconfig",
                str(kubeconfig),
                "--output",
                str(out),
                "--output-format",
                "json",
                "--parallel",
                str(parallel),
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(work)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert cli.stdout is not None
        stdout = cli.stdout.read()
        _, status, usage = os.wait4(cli.pid, 0)
        wall = time.perf_counter() - t0
        cli.returncode = os.waitstatus_to_exitcode(status)
        if cli.returncode != 0:
            err = cli.stderr.read().decode() if cli.stderr else ""
            raise SystemExit(f"collect --cluster exited {cli.returncode}: {err[-2000:]}")
        summary = json.loads(stdout)
        node_bytes = sum(n["bytes"] for n in summary["nodes"])
        ok = sum(1 for n in summary["nodes"] if n["status"] == "ok")
        size = out.stat().st_size
        out.unlink()
        return {
            "nodes": nodes,
            "ok": ok,
            "wall_s": wall,
            "node_bytes": node_bytes,
            "bundle_bytes": size,
            "mb_s": node_bytes / MIB / wall,
            "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux: KiB
            "cli_cpu_s": usage.ru_utime + usage.ru_stime,
        }
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="*", default=[50, 200])
    ap.add_argument("--mib", type=int, default=20, help="node bundle size")
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--bundle", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--kubeconfig", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve is not None:
        asyncio.run(serve(args.serve, args.bundle, args.kubeconfig))
        return
    with tempfile.TemporaryDirectory(prefix="kata-debug-bench-") as tmp:
        work = Path(tmp)
        bundle = work / "node-bundle.tar.gz"
        size = make_node_bundle(bundle, args.mib)
        print(f"node bundle: {size / MIB:.1f} MiB; --parallel {args.parallel}; CPUs: {os.cpu_count()}")
        print(
            f"{'nodes':>6} {'ok':>5} {'wall s':>8} {'node GiB':>9} {'MB/s':>8} {'peak RSS MiB':>13} {'CLI CPU s':>10}"
        )
        results = []
        for n in args.nodes:
            r = run_once(n, bundle, work, args.parallel)
            results.append(r)
            print(
                f"{r['nodes']:>6} {r['ok']:>5} {r['wall_s']:>8.1f} {r['node_bytes'] / (1 << 30):>9.2f} "
                f"{r['mb_s']:>8.1f} {r['peak_rss_mib']:>13.1f} {r['cli_cpu_s']:>10.1f}",
                flush=True,
            )
        if len(results) >= 2:
            ratio = results[-1]["mb_s"] / results[0]["mb_s"]
            print(f"MB/s at {results[-1]['nodes']} nodes / at {results[0]['nodes']} nodes: {ratio:.2f} (target >= 0.7)")
        print(f"peak RSS max: {max(r['peak_rss_mib'] for r in results):.1f} MiB (target < 200)")


if __name__ == "__main__":
    main()
