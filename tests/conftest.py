"""Shared test fixtures: real services (containerd, journald) and bundle helpers.

`scripts/test` installs and starts the services; the fixtures here start them too when a
developer runs pytest directly, and fail loudly (never skip) when they cannot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bundles import read_bundle  # noqa: F401  (re-exported for tests)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _ok(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _wait(argv: list[str], what: str, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _ok(argv):
            return
        time.sleep(0.2)
    pytest.fail(f"{what} is not running; run scripts/test (it installs and starts it)")


@pytest.fixture(scope="session")
def containerd() -> str:
    """A running containerd; returns the `ctr` path."""
    ctr = shutil.which("ctr")
    if ctr is None:
        pytest.fail("ctr not installed; run scripts/test (installs containerd and runc)")
    if not _ok([ctr, "version"]):
        subprocess.Popen(["containerd"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _wait([ctr, "version"], "containerd")
    return ctr


@pytest.fixture(scope="session")
def journald() -> None:
    """A running systemd-journald that accepts `systemd-cat` entries."""
    if not Path("/run/systemd/journal/socket").exists():
        os.makedirs("/run/systemd/journal", exist_ok=True)
        subprocess.Popen(["/lib/systemd/systemd-journald"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        while not Path("/run/systemd/journal/socket").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    if not Path("/run/systemd/journal/socket").exists():
        pytest.fail("systemd-journald is not running; run scripts/test")


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minimal container rootfs (static busybox) for `ctr run --rootfs`."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox not installed; run scripts/test (installs busybox-static)")
    root = tmp_path_factory.mktemp("rootfs")
    (root / "bin").mkdir()
    shutil.copy(busybox, root / "bin" / "busybox")
    for applet in ("sh", "sleep", "true"):
        (root / "bin" / applet).symlink_to("busybox")
    for d in ("proc", "sys", "dev", "tmp", "etc"):
        (root / d).mkdir()
    return root


def kata_debug(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
               cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the real CLI as a user would (a separate process)."""
    return subprocess.run(
        [sys.executable, "-m", "kata_debug", *args],
        capture_output=True, timeout=timeout, cwd=cwd or REPO,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(REPO)},
    )
