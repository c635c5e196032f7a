"""Benchmark shim-logs on the real journal: collect time vs `journalctl -o json`, and peak RSS.

Writes shim-like lines into the running journald (as the tests do: `systemd-cat -t kata`;
`python -m tests.services` starts journald), at two sizes, then times, interleaved:
  * `journalctl -o json` over the identifiers shim-logs reads and the same window (baseline:
    the journal itself is the bottleneck), and
  * `kata-debug collect --collector shim-logs` (the same window, default cap).
Target: speed >= 0.8x journalctl (time <= 1.25x), peak RSS flat in journal size. Medians.

    python bench/journal.py                           # 20,000 then 80,000 more lines, 3 runs each
    python bench/journal.py --lines 50000 --python /venvs/old/bin/python --python /venvs/new/bin/python
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bundle import _log_block, _run_measured  # noqa: E402
from kata_debug.collectors.shim_logs import IDENTIFIERS  # noqa: E402


def write_lines(n: int, seed: int) -> int:
    """Log `n` shim lines under `kata` through journald; returns their bytes."""
    rng = random.Random(seed)
    sandboxes = [f"{rng.getrandbits(256):064x}" for _ in range(20)]
    data = _log_block(rng, sandboxes, n * 260)
    lines = data.split(b"\n")[:n]
    payload = b"\n".join(lines) + b"\n"
    subprocess.run(["systemd-cat", "-t", "kata"], input=payload, check=True, timeout=600)
    subprocess.run(["journalctl", "--sync"], capture_output=True, timeout=120)
    return len(payload)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, nargs="+", default=[20_000, 80_000], help="lines added before each size")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--python", action="append", help="interpreter(s) whose installed kata-debug runs (default: this one)"
    )
    args = ap.parse_args()
    codes = args.python or [sys.executable]
    started = time.time() - 60
    total = 0
    with tempfile.TemporaryDirectory(prefix="kata-debug-jbench-") as tmp:
        for i, n in enumerate(args.lines):
            total += write_lines(n, i)
            since = f"@{int(started)}"
            window = int(time.time() - started) + 60
            base = ["journalctl", "--no-pager", "-o", "json", "--since", since]
            for ident in IDENTIFIERS:
                base += ["-t", ident]
            in_window = subprocess.run(
                ["journalctl", "--no-pager", "-q", "--since", since, "-t", "kata", "-o", "cat"],
                capture_output=True,
                timeout=600,
            ).stdout.count(b"\n")
            times: dict[str, list[float]] = {"journalctl": []}
            cpu: dict[str, list[float]] = {"journalctl": []}
            rss: dict[str, int] = {}
            for _ in range(args.repeat):
                jrun = _run_measured(base)
                times["journalctl"].append(jrun.seconds)
                cpu["journalctl"].append(jrun.cpu_s)
                for code in codes:
                    run = _run_measured(
                        [
                            code,
                            "-m",
                            "kata_debug",
                            "collect",
                            "-c",
                            "shim-logs",
                            "--since",
                            f"{window}s",
                            "--output",
                            str(Path(tmp) / "b.out"),  # no suffix: each version's default compression
                            "--output-format",
                            "json",
                        ],
                        cwd=Path(tmp),  # `python -m` puts the cwd first on sys.path: never a checkout's package
                    )
                    times.setdefault(str(code), []).append(run.seconds)
                    cpu.setdefault(str(code), []).append(run.cpu_s)
                    rss[str(code)] = max(rss.get(str(code), 0), run.tree_rss_peak)
            jt = statistics.median(times["journalctl"])
            jc = statistics.median(cpu["journalctl"])
            result = {
                "kata_lines_in_window": in_window,
                "written_mib": round(total / 2**20, 1),
                "journalctl_json_s": round(jt, 2),
                "journalctl_json_cpu_s": round(jc, 2),
                "collect": {
                    c: {
                        "s": round(statistics.median(times[c]), 2),
                        "cpu_s": round(statistics.median(cpu[c]), 2),
                        "speed_ratio": round(jt / statistics.median(times[c]), 2),
                        "cpu_ratio": round(jc / statistics.median(cpu[c]), 2),
                        "peak_rss_mib": round(rss[c] / 2**20, 1),
                    }
                    for c in map(str, codes)
                },
            }
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
