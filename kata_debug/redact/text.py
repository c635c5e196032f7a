"""Redaction of text (logs, TOML/YAML configs, raw JSON): layers 2-4 over bytes.

Logs can be gigabytes, so one RE2 pass (a DFA: no backtracking, ~500 MB/s) finds the lines
any rule could touch, and only those lines go through the stdlib `re` rules, which need
lookarounds RE2 lacks. Clean text costs one RE2 scan and no copy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import re2  # google-re2: see pyproject for why

from kata_debug.redact import keys
from kata_debug.redact.counts import MASK_B, RuleCounts, looks_secret
from kata_debug.redact.credentials import CREDENTIAL_RULES, redact_headers, redact_otlp_attributes
from kata_debug.redact.tokens import ASSIGNMENT_RULE, SECRET_NAME, TOKEN_RULES, LineRule

if TYPE_CHECKING:
    from kata_debug.redact.user_rules import UserRedaction

HEADER_RULE = "auth-header"
# Order matters: headers keep their scheme word, so they run before assignments could
# take that word for the value; token shapes before assignments count by their own name.
LINE_RULES: list[LineRule] = [*TOKEN_RULES, *CREDENTIAL_RULES, ASSIGNMENT_RULE]
_HEADER_TRIGGER = (
    rb"\"key\"|(?i:authorization|cookie|x-amz-security-token|x-api-key|x-auth-token|private-token|x-vault-token)"
)
_SPECIAL = b"|".join([*keys.MARKERS, b"'''", b'"""'])
#: The prefilter's source: group 1 is a multi-line marker. Operator rules extend it
#: (`UserRedaction.trigger`), so their lines are found in the same single pass.
TRIGGER_SOURCE = b"(" + _SPECIAL + b")|" + b"|".join([_HEADER_TRIGGER, *(t for r in LINE_RULES for t in r.triggers)])
_TRIGGER = re2.compile(TRIGGER_SOURCE)

# TOML multi-line strings: `password = '''...'''` / `"""..."""` may span lines.
_MULTILINE = re.compile(rb"(" + SECRET_NAME + rb")([ \t]*=[ \t]*)('''|\"\"\")(.*?)(\3)", re.S)
_OPEN_MULTILINE = re.compile(rb"(" + SECRET_NAME + rb")([ \t]*=[ \t]*)('''|\"\"\")((?:(?!\3).)*)\Z", re.S)


def _multiline(data: bytes, counts: RuleCounts) -> bytes:
    n = 0

    def repl(m: re.Match[bytes]) -> bytes:
        nonlocal n
        if m.group(4) == MASK_B:
            return m.group(0)
        n += 1
        return m.group(1) + m.group(2) + m.group(3) + MASK_B + m.group(5)

    data = _MULTILINE.sub(repl, data)
    counts.add("secret-value", n)
    return data


def redact_line(line: bytes, counts: RuleCounts, user: UserRedaction | None = None) -> bytes:
    """Every line rule over one line (no newline inside), each counted under its name; the
    operator's rules first, so a value they name is counted under their rule."""
    if user is not None:
        line = user.line(line, counts)
    line, n = redact_headers(line)
    counts.add(HEADER_RULE, n)
    if b'"key"' in line:
        line, n = redact_otlp_attributes(line, looks_secret)
        counts.add("otlp-attribute", n)
    for rule in LINE_RULES:
        hits = 0

        def repl(m: re.Match[bytes], rule: LineRule = rule) -> bytes:
            nonlocal hits
            out = rule.replace(m)
            if out is None:
                return m.group(0)
            hits += 1
            return out

        line = rule.pattern.sub(repl, line)
        counts.add(rule.name, hits)
    return line


@dataclass
class TextState:
    """What one stream carries from chunk to chunk: key-block state, and the closing quote of
    a TOML multi-line secret (`password = '''`) that the previous chunk left open."""

    blocks: keys.KeyBlocks = field(default_factory=keys.KeyBlocks)
    open_quote: bytes = b""


def _open_multiline(data: bytes, state: TextState, counts: RuleCounts) -> bytes:
    if state.open_quote:
        end = data.find(state.open_quote)
        if end < 0:
            return b""
        data, state.open_quote = data[end:], b""
    if b"'''" in data or b'"""' in data:
        data = _multiline(data, counts)
        m = _OPEN_MULTILINE.search(data)
        if m and m.group(4) != MASK_B:
            state.open_quote = m.group(3)
            counts.add("secret-value")
            data = data[: m.start(4)] + MASK_B + b"\n"
    return data


def _line_rules(
    data: bytes, hits: list[tuple[int, int]], counts: RuleCounts, user: UserRedaction | None = None
) -> bytes:
    parts: list[bytes] = []
    pos = 0
    for hit_start, hit_end in hits:
        if hit_start < pos:
            continue  # this line is done
        start = data.rfind(b"\n", 0, hit_start) + 1
        end = data.find(b"\n", hit_end)
        end = len(data) if end < 0 else end
        parts.append(data[pos:start])
        parts.append(redact_line(data[start:end], counts, user))
        pos = end
    if not parts:
        return data
    parts.append(data[pos:])
    return b"".join(parts)


def redact_text(
    data: bytes, counts: RuleCounts, state: TextState | None = None, *, user: UserRedaction | None = None
) -> bytes:
    """Redact text; `state` carries what spans chunks when `data` is one chunk of a stream.

    One RE2 pass finds both the lines the line rules must see and the rare markers of
    multi-line secrets (key blocks, TOML triple quotes); only when those occur, or a stream
    is inside one, does the text get a second look. The operator's rules (`user`) extend that
    pass (`user.trigger`) and run first on each line it flags.
    """
    state = state if state is not None else TextState()
    trigger = _TRIGGER if user is None else user.trigger
    hits: list[tuple[int, int]] = []
    special = False
    for m in trigger.finditer(data):
        if m.start(1) >= 0:  # group 1: a multi-line marker
            special = True
        hits.append(m.span())
    blocks = state.blocks
    if special or blocks.in_block or blocks.at_head or state.open_quote:
        before = blocks.count
        changed = blocks.feed(data, markers=special and any(mk in data for mk in keys.MARKERS))
        counts.add(keys.RULE, blocks.count - before)
        if state.open_quote or (special and (b"'''" in changed or b'"""' in changed)):
            changed = _open_multiline(changed, state, counts)
        if changed is not data:
            data = changed
            hits = [m.span() for m in trigger.finditer(data)]
    return _line_rules(data, hits, counts, user)
