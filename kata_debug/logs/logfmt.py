"""Split Kata log lines into fields.

The Go shim logs logfmt (`time=".." level=debug msg="..." sandbox=<sid>`), runtime-rs and
the agent log JSON objects, and guest console output arrives wrapped in a shim line
(`msg="reading guest console" vmconsole="{...agent json...}"`). One parser for all three
gives every line a sandbox id, so a bundle can hold one log per sandbox.
"""

from __future__ import annotations

import json
import re
from typing import Any

_PAIR = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|[^\s]*)')
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}
_ESC_RE = re.compile(r"\\(.)")
# Sandbox ids are container ids: 64 hex chars from containerd/CRI-O, but tests and some
# tools use shorter names, so accept any id-like token that is not a known source name.
_NOT_SANDBOX = frozenset({"agent", "virtcontainers", "containerd-kata-shim-v2", "kata-runtime", "runtime", ""})


def _unquote(v: str) -> str:
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return _ESC_RE.sub(lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), v[1:-1])
    return v


def parse_logfmt(line: str) -> dict[str, str]:
    """key=value pairs of a logfmt line; values unquoted. Text that is not a pair is ignored."""
    return {m.group(1): _unquote(m.group(2)) for m in _PAIR.finditer(line)}


def parse_line(line: str) -> dict[str, Any]:
    """Fields of one shim/agent log line (JSON object or logfmt), with agent console JSON nested."""
    text = line.strip()
    fields: dict[str, Any] = {}
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError:
            fields.update(parse_logfmt(text))
        else:
            if isinstance(parsed, dict):
                fields = parsed
    else:
        fields.update(parse_logfmt(text))
    console = fields.get("vmconsole")
    if isinstance(console, str) and console.lstrip().startswith("{"):
        try:
            agent = json.loads(console)
            if isinstance(agent, dict):
                fields["agent"] = agent
        except ValueError:
            pass
    return fields


def sandbox_of(fields: dict[str, Any]) -> str | None:
    """The sandbox a line is about: Go shim `sandbox=`, runtime-rs `source=<sid>`."""
    sid = fields.get("sandbox") or fields.get("sid") or fields.get("sandbox_id")
    if isinstance(sid, str) and sid:
        return sid
    if fields.get("name") == "kata-runtime":
        src = fields.get("source")
        if isinstance(src, str) and src not in _NOT_SANDBOX and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{2,127}", src):
            return src
    return None
