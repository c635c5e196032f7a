"""`kata-debug forward --queue-bytes`: the per-exporter byte cap, as a user sets it (real processes)."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

from tests.agent_wire import frames
from tests.conftest import kata_debug
from tests.otlp_receiver import free_port
from tests.test_forwarder import _big_payload, send_unix, short_tmp  # noqa: F401  (fixture)
from tests.test_trace_cli import _start_forward, _stderr_until, _wait_for_socket


def test_bad_queue_bytes_values_are_one_line_errors() -> None:
    for value, problem in [
        ("lots", "--queue-bytes 'lots': not a size (use e.g. 50M, 1G)"),
        ("nan", "--queue-bytes 'nan': not a size (use e.g. 50M, 1G)"),
        ("0", "--queue-bytes '0': must be positive"),
        ("0.1", "--queue-bytes '0.1': must be at least 1 byte"),
        # A span from a maximum-size frame could never be queued: refused, not silently dropped.
        ("512K", "--queue-bytes 512K: below --max-frame-bytes (1.0 MiB)"),
    ]:
        res = kata_debug("forward", "--export", "stdout", "--queue-bytes", value)
        err = res.stderr.decode()
        assert res.returncode == 2 and err.startswith(f"kata-debug: error: {problem}") and err.count("\n") == 1, err
    res = kata_debug("forward", "--help")
    assert res.returncode == 0 and b"--queue-bytes" in res.stdout


async def test_big_frames_with_the_backend_down_hold_at_most_queue_bytes(short_tmp: Path) -> None:  # noqa: F811
    """20 frames of 0.9 MB, backend down, --queue-bytes 3M: at most 3 spans queued (plus
    one batch in flight, itself taken from that queue), where the span cap alone keeps 20."""
    port = free_port()  # nobody listens: the backend is down throughout
    sock = short_tmp / "agent.sock"
    proc = await _start_forward(
        "--listen",
        f"unix://{sock}?sandbox=sbQ",
        "--export",
        f"otlp+grpc://127.0.0.1:{port}?timeout=1",
        "--queue-bytes",
        "3M",
        "--host-root",
        str(short_tmp),
        "--stats-interval",
        "0",
        "--shutdown-timeout",
        "1s",
    )
    try:
        await _wait_for_socket(sock, proc)
        await send_unix(sock, frames(_big_payload(i) for i in range(20)))
        seen = await _stderr_until(proc, "trace stream closed (20 frames")
        proc.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(proc.communicate(), 30)
        text = (seen + rest).decode()
        assert proc.returncode == 0, text
        assert "frames=20 spans=20 decode_errors=0" in text
        held = re.search(r"shutdown timeout \(1\.0s\) passed; (\d+) spans not delivered", text)
        assert held is not None and 1 <= int(held.group(1)) <= 6, text
        assert "exported=0 dropped=20 " in text  # dropped while running plus those held at the deadline
    finally:
        if proc.returncode is None:
            proc.kill()
