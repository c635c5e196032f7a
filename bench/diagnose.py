"""Benchmark `kata-debug diagnose` on a bundle with a lot of logs: seconds and peak RSS.

Builds the synthetic node of bench/bundle.py (N task bundles, M MiB of shim/containerd
logs) with a few failure lines in the middle of the logs, collects it once with
`kata-debug collect` (which analyses as it writes: analysis/findings.json), then runs
`kata-debug diagnose BUNDLE` on the result and checks it names the planted cause.
Targets: diagnose takes no longer than the collection did, and its peak RSS stays under
200 MiB (logs are streamed through the line scanner, never loaded whole).

    python bench/diagnose.py                 # 1 GiB of logs, 200 bundles, 3 diagnose runs
    python bench/diagnose.py --size 100 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bundle import Run, _run_measured, build_node  # noqa: E402

PLANTED = (
    'time="2026-11-28T10:00:00Z" level=error msg="RunPodSandbox for &PodSandboxMetadata{Name:web-0,Uid:u1,'
    'Namespace:default,Attempt:0,} failed, error" error="failed to create containerd task: failed to create shim '
    'task: open /dev/vhost-vsock: no such file or directory: unknown"\n'
)
RSS_TARGET = 200 << 20


def plant(root: Path) -> None:
    """Put the failure in the middle of the first log file (the scanner has to find it)."""
    log = root / "var/log/containerd.log"
    data = log.read_bytes()
    cut = data.index(b"\n", len(data) // 2) + 1
    log.write_bytes(data[:cut] + PLANTED.encode() + data[cut:])


def _fmt(run: Run) -> str:
    return f"{run.seconds:6.1f} s wall, {run.cpu_s:6.1f} s CPU, peak RSS {run.tree_rss_peak / 2**20:6.1f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024, help="MiB of logs")
    ap.add_argument("--bundles", type=int, default=200, help="container bundles on the node")
    ap.add_argument("--repeat", type=int, default=3, help="diagnose runs (median reported)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kata-debug-bench-diagnose-") as tmp:
        work = Path(tmp)
        root = work / "host"
        build_node(root, args.bundles, args.size)
        plant(root)
        bundle = work / "bundle.tar.gz"
        cli = [sys.executable, "-m", "kata_debug"]
        collect = _run_measured(
            [
                *cli,
                "collect",
                "--host-root",
                str(root),
                "-o",
                str(bundle),
                "--since",
                "87600h",
                "--timeout",
                "1800",
                "--max-log-size",
                f"{args.size * 2}M",
            ]
        )
        print(f"collect  ({args.size} MiB of logs): {_fmt(collect)}  bundle {bundle.stat().st_size / 2**20:.1f} MiB")
        runs = []
        for _ in range(args.repeat):
            runs.append(_run_measured([*cli, "diagnose", str(bundle)]))
        wall = statistics.median(r.seconds for r in runs)
        cpu = statistics.median(r.cpu_s for r in runs)
        rss = max(r.tree_rss_peak for r in runs)
        print(
            f"diagnose (median of {len(runs)}):     {wall:6.1f} s wall, {cpu:6.1f} s CPU, peak RSS {rss / 2**20:6.1f} MiB"
        )
        out = json.loads(
            subprocess.run(
                [*cli, "diagnose", str(bundle), "--format", "json"],
                capture_output=True,
                env={"PYTHONPATH": str(REPO)},
                check=False,
            ).stdout
        )
        top = out["findings"][0]
        print(f"top finding: {top['id']} at {top['evidence'][0]['path']}:{top['evidence'][0]['line']}")
        ok = top["id"] == "vhost-vsock-unavailable" and rss < RSS_TARGET and wall <= collect.seconds
        print(
            f"targets: diagnose <= collect ({wall:.1f} <= {collect.seconds:.1f} s), "
            f"RSS < {RSS_TARGET >> 20} MiB ({rss / 2**20:.1f}): {'met' if ok else 'NOT met'}"
        )
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
