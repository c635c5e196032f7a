"""The node agent's exec probe: fresh state file = alive; `ready` flag = ready."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from kata_debug.agent.health import check

REPO = Path(__file__).resolve().parents[1]


def write_state(path: Path, **state: object) -> Path:
    path.write_text(json.dumps(state))
    return path


def test_fresh_ready_state_passes_both_probes(tmp_path: Path) -> None:
    state = write_state(tmp_path / "s.json", updated_at=time.time(), ready=True)
    assert check(str(state), 60, need_ready=False) is None
    assert check(str(state), 60, need_ready=True) is None


def test_stale_state_means_the_agent_loop_is_stuck(tmp_path: Path) -> None:
    state = write_state(tmp_path / "s.json", updated_at=time.time() - 120, ready=True)
    assert "stuck" in (check(str(state), 60, need_ready=False) or "")


def test_not_ready_fails_readiness_but_not_liveness(tmp_path: Path) -> None:
    state = write_state(tmp_path / "s.json", updated_at=time.time(), ready=False, reason="no listener could be opened")
    assert check(str(state), 60, need_ready=False) is None
    assert "no listener could be opened" in (check(str(state), 60, need_ready=True) or "")


def test_missing_or_garbage_state_fails(tmp_path: Path) -> None:
    assert "no state file" in (check(str(tmp_path / "absent.json"), 60, False) or "")
    (tmp_path / "bad.json").write_text("{not json")
    assert "unreadable" in (check(str(tmp_path / "bad.json"), 60, False) or "")


def test_probe_command_exit_codes(tmp_path: Path) -> None:
    state = write_state(tmp_path / "s.json", updated_at=time.time(), ready=False)
    argv = [sys.executable, "-m", "kata_debug.agent.health", str(state), "--max-age", "60"]
    assert subprocess.run(argv, cwd=REPO, capture_output=True).returncode == 0
    ready = subprocess.run([*argv, "--ready"], cwd=REPO, capture_output=True)
    assert ready.returncode == 1 and b"not ready" in ready.stderr
