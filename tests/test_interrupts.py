"""A command that has finished its work exits, even when a worker thread is stuck in a read."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO

_SCRIPT = textwrap.dedent("""
    import asyncio, os
    from kata_debug.collect.interrupts import exit_process, run_leaving_stuck_threads

    async def main() -> str:
        r, _w = os.pipe()  # nobody ever writes: a read blocks like one on a hung mount
        try:
            await asyncio.wait_for(asyncio.to_thread(os.read, r, 1), 0.5)
        except asyncio.TimeoutError:
            return "timed out, bundle written"
        return "read returned"

    print(run_leaving_stuck_threads(main()), flush=True)
    exit_process(3)
""")


def test_a_stuck_worker_thread_does_not_keep_the_process_alive() -> None:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO, capture_output=True, timeout=30)
    assert proc.stdout.decode().strip() == "timed out, bundle written"
    assert proc.returncode == 3, proc.stderr.decode()


def test_without_the_guard_plain_asyncio_run_would_hang() -> None:
    """The behaviour the guard exists for (so the test above cannot pass by accident)."""
    plain = _SCRIPT.replace("run_leaving_stuck_threads(main())", "asyncio.run(main())")
    try:
        subprocess.run([sys.executable, "-c", plain], cwd=REPO, capture_output=True, timeout=5)
    except subprocess.TimeoutExpired:
        return
    raise AssertionError("asyncio.run returned although a worker thread was blocked")
