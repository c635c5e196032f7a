"""Shared test fixtures: real services (containerd, journald) and bundle helpers.

`scripts/test` installs and starts the services; the fixtures here start them too when a
developer runs pytest directly, and fail loudly (never skip) when they cannot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import services
from tests.bundles import read_bundle  # noqa: F401  (re-exported for tests)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def containerd() -> str:
    """A running containerd; returns the `ctr` path."""
    try:
        return services.ensure_containerd()
    except services.ServiceError as e:
        pytest.fail(f"{e}; run scripts/test")


@pytest.fixture(scope="session")
def journald() -> None:
    """A running systemd-journald that accepts `systemd-cat` entries."""
    try:
        services.ensure_journald()
    except services.ServiceError as e:
        pytest.fail(f"{e}; run scripts/test")


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


def kata_debug(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run the real CLI as a user would (a separate process)."""
    return subprocess.run(
        [sys.executable, "-m", "kata_debug", *args],
        capture_output=True,
        timeout=timeout,
        cwd=cwd or REPO,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(REPO)},
    )
