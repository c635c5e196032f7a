"""`--redact-config FILE` for `collect`, `diagnose` and `node-agent`: the operator's own rules.

Kept in one place so every command reads, checks and refuses a rules file the same way, before
any collection starts (kata_debug/redact/user_rules.py defines the file). `collect --cluster`
hands the checked rules to every node as one JSON line on the collect command's stdin
(`RULES_STDIN`), not in its arguments: a literal secret in an argument would be in the API server's audit log (exec
requests log their command) and in the node's process list. The same line carries the run's
`--obfuscate-hosts` key and node names (an `obfuscate` member, `OBFUSCATE_STDIN`), for the
same reason: whoever holds the key can check a guessed address against its pseudonym.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from kata_debug.errors import UsageError

if TYPE_CHECKING:
    from kata_debug.redact.user_rules import UserRules

#: kata_debug.redact.user_rules.RULES_STDIN, spelled out: importing the rules (RE2, the
#: redaction rules) here would cost every command ~20 ms at start (tests check they agree).
RULES_STDIN = "--redact-rules-stdin"
#: kata_debug.redact.options.OBFUSCATE_STDIN, spelled out for the same reason.
OBFUSCATE_STDIN = "--obfuscate-stdin"
#: The node's stdin line: a rules file (1 MiB at most) plus the cluster's node names.
MAX_STDIN_LINE = 4 << 20

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


def obfuscate_stdin_option() -> bool:
    value: bool = typer.Option(False, OBFUSCATE_STDIN, hidden=True)
    return value


def read_node_input(rules: bool, obfuscate: bool) -> dict[str, Any] | None:
    """The one JSON line `collect --cluster` writes to a node's stdin, read once for both flags.

    It is the rules document (`version`, `rules`) with `RULES_STDIN`, plus an `obfuscate`
    member with `OBFUSCATE_STDIN`; None when neither flag is given (stdin is not read).
    """
    if not rules and not obfuscate:
        return None
    flags = " and ".join(f for f, on in ((RULES_STDIN, rules), (OBFUSCATE_STDIN, obfuscate)) if on)
    line = sys.stdin.buffer.readline(MAX_STDIN_LINE + 1)
    if not line.endswith(b"\n"):
        raise UsageError(f"{flags}: expected one JSON line (at most {MAX_STDIN_LINE >> 20} MiB) on stdin")
    try:
        doc = json.loads(line)
    except ValueError:
        raise UsageError(f"{flags}: stdin is not a JSON line") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{flags}: stdin's line is not a JSON object")
    if obfuscate and "obfuscate" not in doc:
        raise UsageError(f"{OBFUSCATE_STDIN}: stdin's line has no `obfuscate` member")
    if not obfuscate and "obfuscate" in doc:
        raise UsageError(f"{RULES_STDIN}: stdin's line has an `obfuscate` member but {OBFUSCATE_STDIN} was not given")
    if not rules and set(doc) != {"obfuscate"}:
        raise UsageError(f"{OBFUSCATE_STDIN}: stdin's line has rules but {RULES_STDIN} was not given")
    return doc


def load(path: Path | None, *, redact: bool = True, node_input: dict[str, Any] | None = None) -> UserRules | None:
    """The checked rules, or None without `--redact-config`; UsageError (exit 2) on any problem.

    `node_input`: the stdin line (`read_node_input`) when `RULES_STDIN` was given.
    """
    if path is not None and node_input is not None:
        raise UsageError(f"--redact-config: not valid with {RULES_STDIN}")
    if path is None and node_input is None:
        return None
    if not redact:
        raise UsageError("--redact-config: has no effect with --no-redact (nothing is redacted)")
    from kata_debug.redact.user_rules import UserRules, load_user_rules

    if path is not None:
        return load_user_rules(path)
    assert node_input is not None
    return UserRules.from_json({k: v for k, v in node_input.items() if k != "obfuscate"}, RULES_STDIN)
