"""`--redact-config FILE` for `collect`, `diagnose` and `node-agent`: the operator's own rules.

Kept in one place so every command reads, checks and refuses a rules file the same way, before
any collection starts (kata_debug/redact/user_rules.py defines the file). `collect --cluster`
hands the checked rules to every node as one JSON line on the collect command's stdin
(`RULES_STDIN`), not in its arguments: a literal secret in an argument would be in the API server's audit log (exec
requests log their command) and in the node's process list.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from kata_debug.errors import UsageError

if TYPE_CHECKING:
    from kata_debug.redact.user_rules import UserRules

#: kata_debug.redact.user_rules.RULES_STDIN, spelled out: importing the rules (RE2, the
#: redaction rules) here would cost every command ~20 ms at start (tests check they agree).
RULES_STDIN = "--redact-rules-stdin"

HELP = (
    "YAML file of extra redaction rules (named regexes, secret key names, literal values), "
    "applied on top of the built-in ones; see README 'Redaction'."
)


def option() -> Path | None:
    """The typer option, declared identically by every command that takes it."""
    value: Path | None = typer.Option(None, "--redact-config", metavar="FILE", help=HELP)
    return value


def stdin_option() -> bool:
    value: bool = typer.Option(False, RULES_STDIN, hidden=True)
    return value


def load(path: Path | None, *, redact: bool = True, from_stdin: bool = False) -> UserRules | None:
    """The checked rules, or None without `--redact-config`; UsageError (exit 2) on any problem."""
    if path is not None and from_stdin:
        raise UsageError(f"--redact-config: not valid with {RULES_STDIN}")
    if path is None and not from_stdin:
        return None
    if not redact:
        raise UsageError("--redact-config: has no effect with --no-redact (nothing is redacted)")
    from kata_debug.redact.user_rules import MAX_FILE_BYTES, UserRules, load_user_rules

    if path is not None:
        return load_user_rules(path)
    line = sys.stdin.buffer.readline(MAX_FILE_BYTES + 1)
    if not line.endswith(b"\n"):
        raise UsageError(f"{RULES_STDIN}: expected one JSON line of redaction rules on stdin")
    try:
        doc = json.loads(line)
    except ValueError:
        raise UsageError(f"{RULES_STDIN}: stdin is not a JSON line") from None
    return UserRules.from_json(doc, RULES_STDIN)
