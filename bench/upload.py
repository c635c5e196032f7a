"""Benchmark `kata-debug upload`: throughput and peak RSS sending a large bundle over loopback.

Writes a file of incompressible bytes (a gzip bundle is), starts the tests' loopback
support endpoint (tests/upload_server.py, streaming, discarding) in its own process, and
runs the real CLI against it. Prints MiB/s and the uploader's peak RSS (from wait4, its
own process only). Also prints `curl -T` on the same file when curl is installed, the
baseline an operator would otherwise use. Prints numbers, asserts nothing.

    python bench/upload.py              # 1 GiB
    python bench/upload.py --mib 256
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _serve(port_file: str) -> None:
    from tests.upload_server import UploadServer

    async def main() -> None:
        srv = await UploadServer().start()
        Path(port_file).write_text(str(srv.port))
        while True:
            await asyncio.sleep(3600)

    asyncio.run(main())


def _timed(argv: list[str]) -> tuple[float, float, int]:
    """(seconds, peak RSS MiB, exit code) of one child process."""
    t = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t
    return elapsed, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("_serve", nargs="?")
    ap.add_argument("port_file", nargs="?")
    args = ap.parse_args()
    if args._serve == "_serve":
        _serve(args.port_file)
        return
    tmp = Path(tempfile.mkdtemp(prefix="kd-upload-bench-"))
    server = None
    try:
        bundle = tmp / "kata-debug-bench.tar.gz"
        with open(bundle, "wb") as fh:
            block = os.urandom(1 << 20)
            for i in range(args.mib):
                fh.write(block[i % 256 :] + block[: i % 256])
        port_file = tmp / "port"
        server = subprocess.Popen(
            [sys.executable, __file__, "_serve", str(port_file)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
        )
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text()):
            if time.monotonic() > deadline:
                raise SystemExit("upload server did not start")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text()}/bundles/bench.tar.gz"
        size = args.mib
        secs, rss, code = _timed([sys.executable, "-m", "kata_debug", "upload", str(bundle), url])
        print(
            f"kata-debug upload: {size} MiB in {secs:.2f}s = {size / secs:,.0f} MiB/s (digest pass included), "
            f"peak RSS {rss:.0f} MiB, exit {code}"
        )
        if shutil.which("curl"):
            secs, rss, code = _timed(["curl", "-sS", "-o", "/dev/null", "-T", str(bundle), url])
            print(
                f"curl -T          : {size} MiB in {secs:.2f}s = {size / secs:,.0f} MiB/s, peak RSS {rss:.0f} MiB, exit {code}"
            )
    finally:
        if server is not None:
            server.kill()
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
