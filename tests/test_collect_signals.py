"""`collect` under real signals, at every moment of its life: a valid bundle, or (third signal) nothing but a `.partial`."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bundles import read_bundle
from tests.conftest import REPO
from tests.hostroots import kata_node
from tests.test_collect_synthetic_node import bind_unix


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process `pid` has a handler for `sig` (the kernel's SigCgt mask)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def _start(root: Path, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "kata_debug", "collect", "--host-root", str(root), "-o", str(out)]
        + ["-c", "sandboxes", "-c", "oci-specs", "--format", "json"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _signal_at(proc: subprocess.Popen[bytes], delay: float, sigs: list[signal.Signals], gap: float) -> None:
    """Send `sigs` `gap` seconds apart, `delay` seconds after the process can catch them."""
    deadline = time.monotonic() + 30
    while not _catches(proc.pid, signal.SIGTERM):
        assert proc.poll() is None and time.monotonic() < deadline, "collect never installed its handlers"
        time.sleep(0.001)
    time.sleep(delay)
    for i, sig in enumerate(sigs):
        if i:
            time.sleep(gap)
        proc.send_signal(sig)


@pytest.fixture
def busy_node(tmp_path: Path):
    """A Kata node whose shim monitor accepts and never answers: `sandboxes` runs for seconds."""
    root = kata_node(tmp_path / "host")
    hang: socket.socket = bind_unix(root / "run/vc/sbs/sb0123456789/shim-monitor.sock")
    yield root
    hang.close()


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.3, 1.5])
@pytest.mark.parametrize(
    "sigs",
    [[signal.SIGTERM], [signal.SIGINT, signal.SIGINT], [signal.SIGTERM, signal.SIGINT]],
    ids=lambda s: "+".join(x.name for x in s),
)
def test_one_or_two_signals_at_any_moment_end_in_a_valid_bundle_and_exit_3(
    busy_node: Path, tmp_path: Path, delay: float, sigs: list[signal.Signals]
) -> None:
    out = tmp_path / "b.tar.gz"
    proc = _start(busy_node, out)
    _signal_at(proc, delay, sigs, gap=0.03)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3, stderr.decode()
    bundle = read_bundle(out)
    # Two signals pending at once are handled in signal-number order (SIGINT before SIGTERM),
    # whatever order they were sent in: under load either may be the first seen.
    assert bundle.manifest["interrupted"] in {f"interrupted by {s.name}" for s in sigs}
    assert bundle.collector("sandboxes")["status"] == "timeout"
    assert not Path(f"{out}.partial").exists()
    assert "Traceback" not in stderr.decode()


def test_a_third_signal_aborts_even_while_the_bundle_is_being_written(busy_node: Path, tmp_path: Path) -> None:
    """Two signals finish the bundle; a third is "stop now", even with the writer stuck on its output.

    The output is a FIFO whose reader does not read (and whose buffer is one page), so after
    the first signal the bundle's last writes block: the second and third land then.
    """
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kata_debug", "collect", "--host-root", str(busy_node), "-o", str(fifo)]
        + ["-c", "sandboxes", "-c", "oci-specs", "--compression", "none", "--format", "json"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        _signal_at(proc, 1.0, [signal.SIGINT, signal.SIGTERM, signal.SIGINT], gap=0.3)
        time.sleep(0.3)
    finally:
        os.close(reader)  # the consumer goes away: the blocked writer gets EPIPE and ends
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()
    assert stderr.decode().strip().splitlines()[-1] == "kata-debug: interrupted"
    assert "Traceback" not in stderr.decode()


def test_one_signal_stops_an_upload_after_the_bundle_is_written(tmp_path: Path) -> None:
    """The bundle is safe on disk: Ctrl-C during `--upload` stops at once, it is not just recorded."""
    root = kata_node(tmp_path / "host")
    silent = socket.socket()  # accepts connections (the kernel does) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    out = tmp_path / "b.tar.gz"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kata_debug", "collect", "--host-root", str(root), "-o", str(out), "-c", "oci-specs"]
        + ["--upload", f"http://127.0.0.1:{silent.getsockname()[1]}/b.tar.gz", "--upload-timeout", "120"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 60
        while not out.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stderr.read().decode() if proc.stderr else ""
            )
            time.sleep(0.01)
        time.sleep(0.5)  # the upload is waiting for an answer
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)
    finally:
        silent.close()
    assert proc.returncode == 130, stderr.decode()
    assert read_bundle(out).collector("oci-specs")["status"] == "ok"
