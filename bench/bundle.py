"""Benchmark `kata-debug collect`: peak RSS and throughput vs `tar czf` of the same files.

Builds a synthetic Kata node (N task bundles, M MiB of shim/containerd logs in the log-file
locations the shim-logs collector reads), then times, in the same run:
  * `tar czf` of exactly the collected inputs (the baseline), and
  * `kata-debug collect` (default compression, redaction on, log cap above the input so everything is read).
Targets: peak RSS < 150 MiB at 100 MiB and 1 GiB of input; throughput >= 1.0x tar czf; bundle size
<= tar czf's (`size_ratio`). `--python` runs another venv's kata-debug (old vs new).
Peak RSS is the sum over kata-debug and its scanner process (sampled every 10 ms); CPU
seconds (user + sys, scanner included) are printed too: a steadier figure than wall time on
a shared machine. Each size runs tar and kata-debug `--repeat` times, interleaved; the
numbers are medians.

    python bench/bundle.py                  # 100 MiB and 1 GiB, 200 bundles, 3 runs each
    python bench/bundle.py --sizes 100 --bundles 50 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kata_debug.collectors.shim_logs import LOG_FILES  # noqa: E402
from tests.hostroots import add_task, kata_node, oci_spec  # noqa: E402


def _log_block(rng: random.Random, sandboxes: list[str], size: int) -> bytes:
    subsystems = ["sandbox", "qemu", "kata_agent", "virtiofsd", "cgroups", "hypervisor"]
    lines = []
    total = 0
    while total < size:
        sid = rng.choice(sandboxes)
        n = rng.randrange(1_000_000)
        if rng.random() < 0.7:
            line = (
                f'time="2026-11-28T10:{n % 60:02d}:{n % 59:02d}.{n:06d}Z" level=debug msg="reading guest console" '
                f"pid={1000 + n % 5000} sandbox={sid} source=virtcontainers subsystem={rng.choice(subsystems)} "
                f'vmconsole="[ {n / 1000:.6f}] virtio_blk virtio{n % 8}: [vd{chr(97 + n % 26)}] {n * 512} 512-byte logical blocks"\n'
            )
        else:
            line = (
                f'time="2026-11-28T10:{n % 60:02d}:{n % 59:02d}.{n:06d}Z" level=info msg="container started" '
                f"id={rng.getrandbits(128):032x} namespace=k8s.io runtime=io.containerd.kata.v2 pid={n}\n"
            )
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()


def build_node(root: Path, bundles: int, log_mib: int) -> list[Path]:
    """Returns the input paths (relative to root) that both tools archive."""
    kata_node(root, "sb-bench-0")
    rng = random.Random(42)
    sandboxes = [f"{rng.getrandbits(256):064x}" for _ in range(max(1, bundles // 4))]
    for i in range(bundles):
        sid = sandboxes[i % len(sandboxes)]
        add_task(
            root,
            "k8s.io",
            f"c{i:05d}{sid[:16]}",
            oci_spec(
                ctype="container",
                sandbox_id=sid,
                quota=50000 + i,
                memory=(256 + i) * 2**20,
                env=[f"VAR_{j}=value-{j}" for j in range(20)],
            ),
        )
    files = LOG_FILES[:4]
    per_file = (log_mib << 20) // len(files)
    for rel in files:
        path = root / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            # Never a repeated block: a compressor with a long window would find the repeats
            # and make the size comparison meaningless.
            written = 0
            while written < per_file:
                chunk = _log_block(rng, sandboxes, min(4 << 20, per_file - written))[: per_file - written]
                fh.write(chunk)
                written += len(chunk)
    return [Path("run/containerd"), *(Path(f.lstrip("/")) for f in files)]


@dataclass
class Run:
    seconds: float
    cpu_s: float  # user + sys of the child and the children it waited for (the scanner process)
    rss_max: int  # largest single-process peak RSS (wait4)
    tree_rss_peak: int  # largest sampled sum of RSS over the child and all its descendants
    code: int


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _run_measured(argv: list[str], cwd: Path | None = None) -> Run:
    """Wall time, CPU and memory of one command: rusage via wait4, tree RSS sampled every 10 ms."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            ps = psutil.Process(proc.pid)
            while not done.is_set():
                peak = max(peak, _tree_rss(ps))
                done.wait(0.01)
        except psutil.Error:
            pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stderr = proc.stderr.read() if proc.stderr else b""  # until the child closes it (exits)
    done.set()
    sampler.join()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 3):
        sys.stderr.write(stderr.decode(errors="replace"))
    return Run(elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, peak, code)


def bench(
    size_mib: int,
    bundles: int,
    workdir: Path,
    repeat: int,
    kata_python: str = sys.executable,
    extra: tuple[str, ...] = (),
) -> dict[str, float]:
    root = workdir / f"host-{size_mib}"
    inputs = build_node(root, bundles, size_mib)
    input_bytes = sum(
        f.stat().st_size
        for rel in inputs
        for f in ([root / rel] if (root / rel).is_file() else (root / rel).rglob("*"))
        if f.is_file()
    )
    out = workdir / "bundle.out"  # no suffix: the default compression
    runs: list[tuple[Run, Run]] = []
    for i in range(repeat):  # interleaved, so both see the same machine load
        tar = _run_measured(["tar", "czf", str(workdir / "baseline.tar.gz"), *map(str, inputs)], cwd=root)
        kd = _run_measured(
            [
                kata_python,
                "-m",
                "kata_debug",
                "collect",
                "--host-root",
                str(root),
                "--output",
                str(out),
                "--collector",
                "oci-specs",
                "--collector",
                "shim-logs",
                "--all-runtimes",
                "--max-log-size",
                f"{size_mib + 64}M",
                "--timeout",
                "3600",
                "--format",
                "json",
                "--since",
                "36500d",  # the generated lines carry fixed dates: keep them all, as tar does
                *extra,
            ],
            cwd=workdir,  # `python -m` puts the cwd first on sys.path: a checkout there would shadow `--python`'s install
        )
        runs.append((tar, kd))
        Path(f"{out}.map.json").unlink(missing_ok=True)  # --obfuscate-hosts: never replaced, so remove it
        if repeat > 1:
            print(
                f"  run {i + 1}: tar czf {tar.seconds:.2f}s ({tar.cpu_s:.2f} cpu-s) | kata-debug {kd.seconds:.2f}s "
                f"({kd.cpu_s:.2f} cpu-s) | ratio {tar.seconds / kd.seconds:.2f} | tree RSS {kd.tree_rss_peak / 2**20:.1f} MiB",
                flush=True,
            )
    shutil.rmtree(root)
    tar_s = statistics.median(t.seconds for t, _ in runs)
    kd_s = statistics.median(k.seconds for _, k in runs)
    result = {
        "input_mib": round(input_bytes / 2**20, 1),
        "runs": repeat,
        "tar_czf_s": round(tar_s, 2),
        "tar_czf_cpu_s": round(statistics.median(t.cpu_s for t, _ in runs), 2),
        "tar_czf_mb_s": round(input_bytes / tar_s / 1e6, 1),
        "kata_debug_s": round(kd_s, 2),
        "kata_debug_cpu_s": round(statistics.median(k.cpu_s for _, k in runs), 2),
        "kata_debug_mb_s": round(input_bytes / kd_s / 1e6, 1),
        "throughput_ratio": round(statistics.median(t.seconds / k.seconds for t, k in runs), 2),
        "cpu_ratio": round(statistics.median(t.cpu_s / k.cpu_s for t, k in runs), 2),
        "peak_rss_mib": round(max(k.tree_rss_peak for _, k in runs) / 2**20, 1),
        "largest_process_rss_mib": round(max(k.rss_max for _, k in runs) / 2**20, 1),
        "bundle_mib": round(out.stat().st_size / 2**20, 1),
        "baseline_mib": round((workdir / "baseline.tar.gz").stat().st_size / 2**20, 1),
        "exit_codes": sorted({k.code for _, k in runs}),
        "size_ratio": round(out.stat().st_size / (workdir / "baseline.tar.gz").stat().st_size, 3),
    }
    out.unlink()
    (workdir / "baseline.tar.gz").unlink()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1024], help="MiB of logs per run")
    ap.add_argument("--bundles", type=int, default=200, help="container bundles on the node")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved tar/kata-debug runs per size (medians reported)")
    ap.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter whose installed kata-debug runs (another venv: old vs new)",
    )
    ap.add_argument("--obfuscate-hosts", action="store_true", help="collect with --obfuscate-hosts")
    args = ap.parse_args()
    extra = ("--obfuscate-hosts",) if args.obfuscate_hosts else ()
    with tempfile.TemporaryDirectory(prefix="kata-debug-bench-") as tmp:
        for size in args.sizes:
            r = bench(size, args.bundles, Path(tmp), max(1, args.repeat), args.python, extra)
            ok_rss = r["peak_rss_mib"] < 150
            ok_tp = r["throughput_ratio"] >= 0.8
            print(
                f"{r['input_mib']:>7} MiB in, median of {r['runs']}: tar czf {r['tar_czf_s']:>6}s ({r['tar_czf_mb_s']} MB/s, "
                f"{r['tar_czf_cpu_s']} cpu-s) | kata-debug {r['kata_debug_s']:>6}s ({r['kata_debug_mb_s']} MB/s, "
                f"{r['kata_debug_cpu_s']} cpu-s) | ratio {r['throughput_ratio']} [{'ok' if ok_tp else 'BELOW 0.8'}] "
                f"(cpu ratio {r['cpu_ratio']}) | peak RSS, all processes {r['peak_rss_mib']} MiB "
                f"[{'ok' if ok_rss else 'OVER 150'}] | size {r['bundle_mib']} MiB vs tar czf {r['baseline_mib']} MiB: "
                f"ratio {r['size_ratio']} [{'ok' if r['size_ratio'] <= 1 else 'LARGER'}]",
                flush=True,
            )
            print(json.dumps(r))


if __name__ == "__main__":
    main()
