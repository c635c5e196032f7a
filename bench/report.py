"""Benchmark `kata-debug report`: generation time, peak RSS and page size for a big bundle, and
the page's time to first render in headless Chromium.

Builds a synthetic Kata node with N sandboxes (OCI task bundles) and M MiB of containerd log
(`/var/log/containerd.log`, k3s style: Kata shim lines with `sandbox=<id>`, guest console
lines, warnings and errors, round-robin over the sandboxes, plus lines about no sandbox),
collects it with the real `kata-debug collect` (zstd, log cap above the input), then:
  * `kata-debug report BUNDLE -o page.html` as a user runs it: wall time, CPU seconds,
    peak RSS (sampled every 10 ms), page size;
  * Chromium (headless, fresh profile, no network) opens the page: time from navigation to
    the load event, and to the first frame painted after it (two animation frames).
Targets (issue 14): page < 10 MB, first render < 5 s.

`--without-findings` repacks the bundle without `analysis/findings.json` (a bundle from an
older version, or collected with analysis off): the report then runs diagnose's analyzers
over the same read. `--compare-with DIR` also runs the report of another kata-debug source
tree (e.g. `git archive` of an older commit) on the same bundle, for old/new figures from
one session.

    python bench/report.py                       # 200 sandboxes, 1024 MiB of logs
    python bench/report.py --sandboxes 50 --log-mib 100
    python bench/report.py --without-findings --compare-with /tmp/kata-debug-old
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.chromium import chromium  # noqa: E402
from tests.hostroots import add_task, oci_spec  # noqa: E402

_TEMPLATES = (
    'level=debug msg="reading guest console" sandbox={sid} source=virtcontainers subsystem=sandbox vmconsole="[ {n:>6}.000123] virtio_net virtio1: eth0 link up seq={n}"',
    'level=info msg="sandbox resources updated" sandbox={sid} source=virtcontainers subsystem=sandbox name=containerd-shim-v2 vcpus=2 memory=2048 seq={n}',
    'level=debug msg="agent request" sandbox={sid} source=virtcontainers subsystem=kata_agent name=containerd-shim-v2 request=/grpc.AgentService/StatsContainer seq={n}',
    'level=info msg="container started" sandbox={sid} container={cid} source=virtcontainers subsystem=container name=containerd-shim-v2 seq={n}',
    'level=info msg="StartContainer for {cid} returns successfully" seq={n}',
    'level=warning msg="hot-plug memory took longer than expected" sandbox={sid} source=virtcontainers name=containerd-shim-v2 ms={n}',
)
_ERROR = 'level=error msg="failed to create shim task: hypervisor start: connection refused" sandbox={sid} source=virtcontainers name=containerd-shim-v2 seq={n}'


def sandbox_id(i: int) -> str:
    return f"{i:08x}" + "5a" * 28


def build_node(root: Path, sandboxes: int, log_mib: int) -> int:
    """A host root with `sandboxes` Kata sandboxes and `log_mib` MiB of containerd log."""
    for i in range(sandboxes):
        sid = sandbox_id(i)
        add_task(
            root,
            "k8s.io",
            sid,
            oci_spec(ctype="sandbox", sandbox_id=sid, quota=100000, memory=512 * 2**20, pod=f"app-{i}", uid=f"u-{i}"),
        )
    (root / "etc/kata-containers").mkdir(parents=True, exist_ok=True)
    (root / "etc/hostname").write_text("bench-node\n")
    log = root / "var/log/containerd.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    target = log_mib << 20
    start = datetime.now(UTC) - timedelta(hours=6)
    written = lines = 0
    with open(log, "w") as fh:
        n = 0
        while written < target:
            chunk = []
            for _ in range(5000):
                n += 1
                sid = sandbox_id(n % sandboxes)
                ts = (start + timedelta(microseconds=n * 3)).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
                if n % 997 == 0:
                    body = _ERROR.format(sid=sid, n=n)
                elif n % 50 == 0:
                    body = f'level=info msg="no sandbox on this line" seq={n}'
                else:
                    body = _TEMPLATES[n % len(_TEMPLATES)].format(sid=sid, cid=f"{n:064x}", n=n)
                chunk.append(f'time="{ts}" {body}\n')
            text = "".join(chunk)
            fh.write(text)
            written += len(text)
            lines += len(chunk)
    return lines


def without_findings(bundle: Path, out: Path) -> Path:
    """The bundle repacked (zstd, streamed) without `analysis/findings.json`."""
    import tarfile

    import zstandard

    with open(bundle, "rb") as raw, open(out, "wb") as sink:
        src_stream = zstandard.ZstdDecompressor().stream_reader(raw)
        dst_stream = zstandard.ZstdCompressor(level=3).stream_writer(sink)
        with tarfile.open(fileobj=src_stream, mode="r|") as src, tarfile.open(fileobj=dst_stream, mode="w|") as dst:
            for info in src:
                if info.name.endswith("/analysis/findings.json"):
                    continue
                dst.addfile(info, src.extractfile(info) if info.isreg() else None)
        dst_stream.close()
    return out


def run_measured(
    argv: list[str], env: dict[str, str] | None = None
) -> tuple[float, float, int, subprocess.CompletedProcess[bytes]]:
    """Wall seconds, CPU seconds (rusage, children included) and peak RSS (bytes, sampled)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        # Not in the repository: `python -m` puts the working directory first on sys.path,
        # which would run this tree's code whatever PYTHONPATH says (`--compare-with`).
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=tempfile.gettempdir())
        ps = psutil.Process(proc.pid)
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                try:
                    peak = max(peak, sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)]))
                except psutil.Error:
                    pass
                time.sleep(0.01)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        t.join()
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(argv, proc.returncode, out.read(), err.read())
    return wall, usage.ru_utime + usage.ru_stime, peak, result


async def first_render(page_file: Path, profile: Path) -> tuple[float, float, int]:
    """(s to the load event, s to the first frame after it, timeline entries in the DOM)."""
    async with chromium(profile) as browser:
        page = await browser.new_page()
        load = await page.open(page_file.as_uri(), timeout=120)
        painted_ms = await page.evaluate(
            "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(performance.now()))))"
        )
        entries = await page.evaluate("document.querySelectorAll('li.e').length")
        errors = page.console_errors()
        requests = page.requests()
        if errors or requests != [page_file.as_uri()]:
            raise SystemExit(f"page misbehaved: console errors {errors[:3]}, requests {requests[:3]}")
        return load, painted_ms / 1000, int(entries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sandboxes", type=int, default=200)
    ap.add_argument("--log-mib", type=int, default=1024)
    ap.add_argument("--keep", type=Path, help="Keep the host root, bundle and page in this directory.")
    ap.add_argument("--reuse", action="store_true", help="With --keep: use the host root built by an earlier run.")
    ap.add_argument(
        "--without-findings", action="store_true", help="Report on the bundle minus analysis/findings.json."
    )
    ap.add_argument("--compare-with", type=Path, metavar="DIR", help="Also run the report of this source tree.")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="kata-debug-bench-report-"))
    work.mkdir(parents=True, exist_ok=True)
    reuse = args.keep is not None and (work / "host/var/log/containerd.log").is_file() and args.reuse
    kd = [sys.executable, "-m", "kata_debug"]
    root, bundle, page = work / "host", work / "bundle.tar.zst", work / "report.html"

    t0 = time.monotonic()
    if reuse:
        print(f"node: reusing {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
        lines = build_node(root, args.sandboxes, args.log_mib)
        took = time.monotonic() - t0
        print(f"node: {args.sandboxes} sandboxes, {args.log_mib} MiB / {lines} log lines, built in {took:.1f}s")
    wall, _, _, r = run_measured(
        [*kd, "collect", "--host-root", str(root), "-o", str(bundle), "--compression", "zstd", "--since", "7d",
         "--max-log-size", f"{args.log_mib * 2}M", "--timeout", "3600", "--output-format", "json"]
    )  # fmt: skip
    if r.returncode != 0:
        raise SystemExit(f"collect did not complete (exit {r.returncode}): {(r.stdout + r.stderr).decode()[-800:]}")
    print(f"collect: {wall:.1f}s, bundle {bundle.stat().st_size / 2**20:.1f} MiB (zstd)")
    if args.without_findings:
        bundle = without_findings(bundle, work / "bundle-without-findings.tar.zst")
        print(f"without analysis/findings.json: {bundle}")

    if args.compare_with is not None:
        env = {**os.environ, "PYTHONPATH": str(args.compare_with.resolve())}
        other = work / "report-compared.html"
        wall, cpu, peak, r = run_measured([*kd, "report", str(bundle), "-o", str(other), "--force"], env=env)
        if r.returncode != 0:
            raise SystemExit(f"report of {args.compare_with} failed: {r.stderr.decode()[-500:]}")
        size = other.stat().st_size
        print(
            f"report ({args.compare_with}): {wall:.1f}s wall, {cpu:.1f}s CPU, peak RSS {peak / 2**20:.0f} MiB, "
            f"page {size / 1e6:.2f} MB\n  {r.stdout.decode().strip()}"
        )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    wall, cpu, peak, r = run_measured([*kd, "report", str(bundle), "-o", str(page), "--force"], env=env)
    if r.returncode != 0:
        raise SystemExit(f"report failed: {r.stderr.decode()[-500:]}")
    size = page.stat().st_size
    print(f"report: {wall:.1f}s wall, {cpu:.1f}s CPU, peak RSS {peak / 2**20:.0f} MiB, page {size / 1e6:.2f} MB")
    print(f"  {r.stdout.decode().strip()}")
    load, painted, entries = asyncio.run(first_render(page, work / "chromium-profile"))
    print(f"chromium: load event {load:.2f}s, first frame after load {painted:.2f}s, {entries} entries in the DOM")
    ok = size < 10e6 and painted < 5
    print(f"targets (page < 10 MB, first render < 5 s): {'met' if ok else 'NOT met'}")
    print(f"files in {work}" if args.keep else f"(work dir {work} kept for inspection; delete it when done)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(REPO))
    main()
