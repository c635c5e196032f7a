"""Exec probe for the node agent: `python3 -m kata_debug.agent.health STATE [--max-age S] [--ready]`.

The agent opens no network port, so the kubelet cannot probe it over HTTP. Instead the agent
rewrites a small state file from its event loop every few seconds; this check passes while
that file is fresh (the loop is alive) and, with `--ready`, while the agent reports its
listeners are up. It imports nothing heavy: it runs every 30 s on every Kata node.
"""

from __future__ import annotations

import json
import sys
import time


def check(path: str, max_age: float, need_ready: bool, now: float | None = None) -> str | None:
    """None when healthy, else the reason (one line)."""
    try:
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
    except FileNotFoundError:
        return f"{path}: no state file yet (agent not started)"
    except (OSError, ValueError) as exc:
        return f"{path}: unreadable: {exc}"
    if not isinstance(state, dict):
        return f"{path}: not a JSON object"
    updated = state.get("updated_at")
    if not isinstance(updated, (int, float)):
        return f"{path}: no updated_at"
    age = (time.time() if now is None else now) - updated
    if age > max_age:
        return f"{path}: last update {age:.0f}s ago (more than {max_age:g}s): agent loop stuck"
    if need_ready and not state.get("ready"):
        return f"{path}: agent not ready: {state.get('reason') or 'listeners not up'}"
    return None


def main(argv: list[str]) -> int:
    args = list(argv)
    need_ready = "--ready" in args
    if need_ready:
        args.remove("--ready")
    max_age = 60.0
    if "--max-age" in args:
        i = args.index("--max-age")
        try:
            max_age = float(args[i + 1])
        except (IndexError, ValueError):
            print("node_agent_health: --max-age needs a number of seconds", file=sys.stderr)
            return 2
        del args[i : i + 2]
    if len(args) != 1:
        print("usage: python3 -m kata_debug.agent.health STATE_FILE [--max-age S] [--ready]", file=sys.stderr)
        return 2
    problem = check(args[0], max_age, need_ready)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
