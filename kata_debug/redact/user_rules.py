"""User redaction rules (`--redact-config FILE`): what only the operator knows is secret.

The built-in rules cannot know a site's ticket numbers, internal token formats or the one
lab password that ends up in every log. The operator names them in a YAML file; each rule is
applied on top of the defaults, everywhere a bundle gets text (every collector, the log
scanner process, parsed JSON, spans, node-agent captures, every node of `collect --cluster`)
and counted in the manifest as `user:<name>`.

    version: 1                  # optional; the only version so far
    rules:
      - name: ticket-ids        # [a-z0-9][a-z0-9._-]*, unique; counted as user:ticket-ids
        regex: 'TCK-[0-9]{6}'   # whole match masked; with groups, only the groups
      - name: corp-session
        keys: [X-Corp-Session, corp_session_id]   # `name=value`, `name: value`, JSON keys
      - name: lab-password
        literals: ['Winter2026!lab']              # removed wherever they occur

The file is checked strictly before any collection starts: an unknown key, a pattern either
engine refuses, one that can match the empty string or backtrack catastrophically, an empty
or very short literal, each is one line naming the file, the rule and the problem.

Matching is per line (logs are redacted in chunks that end on line boundaries), so no rule
can span lines. Regexes run on RE2 (linear time whatever the pattern or the line) and must
also compile with Python's `re`, the engine of the built-in masking rules, so a pattern
means the same to both.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import re
import select
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import re2  # google-re2: see pyproject for why

from kata_debug.errors import UsageError
from kata_debug.redact.counts import MASK_B, RuleCounts
from kata_debug.redact.credentials import redact_otlp_attributes
from kata_debug.redact.tokens import _QUOTED_VALUE

# The stdlib's own regex parser (what `re.compile` runs), to see a pattern's structure; typeshed
# has no stubs for these private modules, and the public aliases warn as deprecated.
sre_parse: Any = importlib.import_module("re._parser")
sre_constants: Any = importlib.import_module("re._constants")

RuleKind = Literal["regex", "keys", "literals"]
KINDS: tuple[RuleKind, ...] = ("regex", "keys", "literals")
#: Prefix of a user rule's name in the manifest's redaction counts.
COUNT_PREFIX = "user:"
#: Hidden `collect` flag: the rules arrive as one JSON line (`stdin_line()`) on stdin, which is
#: how `collect --cluster` passes them to every node (kata_debug/cli/redact_config.py says why).
RULES_STDIN = "--redact-rules-stdin"
#: A rules file is a handful of lines; anything bigger is not one.
MAX_FILE_BYTES = 1 << 20
#: The longest wait for a rules file that is a pipe (`<(...)`) to be written.
READ_TIMEOUT = 10.0
MAX_RULES = 256
MAX_PATTERN = 1024
MAX_LITERAL = 4096
#: Shorter literals would mask innocent text all over a bundle.
MIN_LITERAL = 4
#: All literals of a file together, and all key names: every line of every log is matched
#: against them. Beyond ~64 KiB of literals RE2's DFA outgrows its memory and falls back to a
#: matcher ~1000x slower (0.5 MB/s: hours for a node's logs); key names are a Python regex
#: alternation tried at every position of a line that names one.
MAX_LITERAL_BYTES = 64 << 10
MAX_KEY_NAMES = 1024
#: RE2's memory budget per compiled rule set (its default, 8 MiB, is what 64 KiB of literals
#: outgrows); bounded, so a rules file cannot take the node agent's memory either.
RE2_MAX_MEM = 64 << 20
_RULE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_KEY_NAME = re.compile(r"[A-Za-z0-9_./-]{1,128}")
# Repeats above this count nesting an unbounded repeat backtrack exponentially in `re`.
_NESTED_REPEAT_LIMIT = 10


@dataclass(frozen=True)
class UserRule:
    """One named rule: `values` is the pattern (one), the key names or the literals."""

    name: str
    kind: RuleKind
    values: tuple[str, ...]

    @property
    def counter(self) -> str:
        return COUNT_PREFIX + self.name

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, self.kind: self.values[0] if self.kind == "regex" else list(self.values)}


@dataclass(frozen=True)
class UserRules:
    """A checked rules file; `source` names it in messages. Crosses processes as `to_json()`."""

    rules: tuple[UserRule, ...]
    source: str = "--redact-config"

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "rules": [r.to_json() for r in self.rules]}

    def stdin_line(self) -> bytes:
        """The rules as a node's `collect --redact-rules-stdin` reads them: one JSON line."""
        return json.dumps(self.to_json(), separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_json(cls, doc: Any, source: str = "--redact-config") -> UserRules:
        """Parse and check a document (the file's YAML, or what a parent process passed on)."""
        return parse_rules(doc, source)


# -- loading and checking ---------------------------------------------------------------


def load_user_rules(path: str | Path) -> UserRules:
    """Read and check a rules file; every problem is a UsageError naming the file (exit 2).

    Called by the CLI before anything is collected or written (a small file: read directly).
    """
    import yaml

    source = f"--redact-config {path}"
    try:
        raw = _read_bounded(str(path), MAX_FILE_BYTES + 1, READ_TIMEOUT)
    except TimeoutError:
        raise UsageError(f"{source}: nothing more to read within {READ_TIMEOUT:g}s (a pipe nobody writes?)") from None
    except OSError as exc:
        raise UsageError(f"{source}: cannot read it ({exc.strerror or exc})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise UsageError(f"{source}: larger than {MAX_FILE_BYTES >> 20} MiB; not a rules file")
    try:
        doc = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"{source}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise UsageError(f"{source}: not valid YAML{line}: {problem}") from None
    return parse_rules(doc, source)


def _read_bounded(path: str, limit: int, timeout: float) -> bytes:
    """Up to `limit` bytes of `path`, within `timeout` seconds whatever it is.

    `<(vault read ...)` makes the file a pipe, which is fine; but a FIFO nobody opens for
    writing would block `open()` forever, where no signal handler of ours could end the wait
    (Python retries the interrupted call). Opened non-blocking and read with `poll`, a pipe
    that stays silent is a clear error after `timeout`, and a writer-less FIFO reads as empty.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        parts: list[bytes] = []
        got = 0
        while got < limit:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise TimeoutError
            try:
                part = os.read(fd, min(limit - got, 1 << 16))
            except BlockingIOError:
                continue
            if not part:
                break
            parts.append(part)
            got += len(part)
        return b"".join(parts)
    finally:
        os.close(fd)


def parse_rules(doc: Any, source: str) -> UserRules:
    if not isinstance(doc, dict):
        raise UsageError(f"{source}: expected a mapping with a `rules` list, got {_kind_of(doc)}")
    unknown = sorted(str(k) for k in doc if k not in ("version", "rules"))
    if unknown:
        raise UsageError(f"{source}: unknown key {unknown[0]!r} (allowed: version, rules)")
    if doc.get("version", 1) != 1 or isinstance(doc.get("version"), bool):
        raise UsageError(f"{source}: version {doc.get('version')!r} is not supported (only 1)")
    items = doc.get("rules")
    if not isinstance(items, list) or not items:
        raise UsageError(f"{source}: `rules` must be a non-empty list")
    if len(items) > MAX_RULES:
        raise UsageError(f"{source}: {len(items)} rules; at most {MAX_RULES}")
    rules: list[UserRule] = []
    seen: set[str] = set()
    for i, item in enumerate(items, 1):
        rule = _parse_rule(item, f"{source}: rule {i}")
        if rule.name in seen:
            raise UsageError(f"{source}: rule {rule.name!r}: the name is used twice")
        seen.add(rule.name)
        rules.append(rule)
    literal_bytes = sum(len(v.encode("utf-8")) for r in rules if r.kind == "literals" for v in r.values)
    if literal_bytes > MAX_LITERAL_BYTES:
        raise UsageError(
            f"{source}: {literal_bytes} bytes of literals; at most {MAX_LITERAL_BYTES >> 10} KiB in all "
            "(every log line is matched against them)"
        )
    key_names = sum(len(r.values) for r in rules if r.kind == "keys")
    if key_names > MAX_KEY_NAMES:
        raise UsageError(f"{source}: {key_names} key names; at most {MAX_KEY_NAMES} in all")
    checked = UserRules(tuple(rules), source)
    try:
        UserRedaction(checked, b"\x00")  # what every redactor compiles: refused here, not mid-run
    except re2.error as exc:
        problem = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise UsageError(
            f"{source}: the rules together are too large for RE2 ({problem}); use fewer or shorter ones"
        ) from None
    return checked


def _parse_rule(item: Any, where: str) -> UserRule:
    if not isinstance(item, dict):
        raise UsageError(f"{where}: expected a mapping (name, and one of regex/keys/literals), got {_kind_of(item)}")
    name = item.get("name")
    if not isinstance(name, str) or not _RULE_NAME.fullmatch(name):
        raise UsageError(f"{where}: `name` must be lower-case letters, digits, '.', '_' or '-' (got {name!r})")
    where = f"{where.rsplit(': rule ', 1)[0]}: rule {name!r}"
    unknown = sorted(str(k) for k in item if k not in ("name", "description", *KINDS))
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r} (allowed: name, description, regex, keys, literals)")
    kinds = [k for k in KINDS if k in item]
    if len(kinds) != 1:
        raise UsageError(f"{where}: give exactly one of regex, keys, literals (got {', '.join(kinds) or 'none'})")
    kind = kinds[0]
    value = item[kind]
    if kind == "regex":
        if not isinstance(value, str) or not value:
            raise UsageError(f"{where}: `regex` must be a non-empty string")
        check_pattern(value, where)
        return UserRule(name, kind, (value,))
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{where}: `{kind}` must be a non-empty list of strings")
    for v in value:
        if kind == "keys" and not _KEY_NAME.fullmatch(v):
            raise UsageError(f"{where}: key {v!r} is not a key name (letters, digits, '_', '.', '/', '-'; 1-128)")
        if kind == "literals":
            if len(v) < MIN_LITERAL:
                raise UsageError(
                    f"{where}: literal {v!r} is shorter than {MIN_LITERAL} characters (it would mask innocent text)"
                )
            if "\n" in v or "\r" in v:
                raise UsageError(f"{where}: a literal cannot span lines (text is redacted line by line)")
            if len(v) > MAX_LITERAL:
                raise UsageError(f"{where}: a literal is longer than {MAX_LITERAL} characters")
    return UserRule(name, kind, tuple(dict.fromkeys(value)))


def check_pattern(pattern: str, where: str) -> None:
    """Refuse a pattern RE2 or `re` cannot compile, one that can match nothing at all (it
    would match everywhere), or one that backtracks catastrophically in `re`."""
    if len(pattern) > MAX_PATTERN:
        raise UsageError(f"{where}: the regex is longer than {MAX_PATTERN} characters")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"{where}: bad regex: {exc}") from None
    try:
        re2_compile(pattern)
    except re2.error as exc:
        problem = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise UsageError(f"{where}: RE2 (the redactor's engine) refuses the regex: {problem}") from None
    for sample in ("", "x", " a1_-.", "x\tY"):
        if any(m.end() == m.start() for m in compiled.finditer(sample)):
            raise UsageError(f"{where}: the regex can match the empty string (it would match everywhere)")
    nested = _nested_repeat(sre_parse.parse(pattern))
    if nested:
        raise UsageError(f"{where}: catastrophic regex: {nested} (backtracks exponentially; use one quantifier)")


def _nested_repeat(parsed: Any, outer: str | None = None) -> str | None:
    """An unbounded repeat inside a repeat (`(a+)+`, `(\\w*x)*`), or None."""
    for op, av in parsed:
        if op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, sre_constants.POSSESSIVE_REPEAT):
            lo, hi, sub = av
            unbounded = hi == sre_constants.MAXREPEAT
            if unbounded and outer is not None:
                return f"an unbounded repeat nested in {outer}"
            many = unbounded or hi >= _NESTED_REPEAT_LIMIT
            found = _nested_repeat(sub, "an unbounded repeat" if unbounded else f"{{{lo},{hi}}}" if many else outer)
            if found:
                return found
        elif op == sre_constants.SUBPATTERN:
            found = _nested_repeat(av[-1], outer)
            if found:
                return found
        elif op == sre_constants.BRANCH:
            for branch in av[1]:
                found = _nested_repeat(branch, outer)
                if found:
                    return found
        elif op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
            found = _nested_repeat(av[1], outer)
            if found:
                return found
    return None


def re2_compile(pattern: str | bytes) -> Any:
    """RE2 as every large generated pattern here needs it: errors ours to report, memory for
    a DFA over tens of kilobytes of alternatives (the 8 MiB default runs out and RE2 falls
    back to a matcher ~50x slower), one line at a time."""
    options = re2.Options()
    options.log_errors = False  # its errors are ours to report, in one line
    options.max_mem = RE2_MAX_MEM
    options.never_nl = True  # rules match within one line, as chunks end on line boundaries
    return re2.compile(pattern.encode("utf-8") if isinstance(pattern, str) else pattern, options=options)


def _kind_of(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


# -- applying ---------------------------------------------------------------------------


class UserRedaction:
    """The compiled rules. `trigger` is the built-in prefilter (`base_trigger`, text.py) with
    every rule added, so the one RE2 pass over the text finds their lines too; `line` masks
    one flagged line, counting under `user:<name>`."""

    def __init__(self, rules: UserRules, base_trigger: bytes) -> None:
        self.rules = rules
        self._literals: list[tuple[str, Any]] = []
        self._regexes: list[tuple[str, Any]] = []
        self._keys: list[tuple[str, re.Pattern[bytes], frozenset[str]]] = []
        #: Lower-case key name -> the counter of its rule (JSON keys, argv flags, span attributes).
        self.key_names: dict[str, str] = {}
        triggers: list[bytes] = []
        for rule in rules.rules:
            if rule.kind == "literals":
                # One RE2 alternation per rule (longest first wins at a position): linear in
                # the line however many literals the file lists.
                lits = sorted((v.encode("utf-8") for v in rule.values), key=len, reverse=True)
                alternation = b"|".join(re2.escape(v) for v in lits)
                self._literals.append((rule.counter, re2_compile(alternation)))
                triggers.append(alternation)
            elif rule.kind == "regex":
                pattern = rule.values[0].encode("utf-8")
                self._regexes.append((rule.counter, re2_compile(pattern)))
                # (?m): `^`/`$` anchor at each line of a chunk, as they do on the one line masked.
                triggers.append(b"(?m:" + pattern + b")")
            else:
                names = [v.encode("utf-8") for v in rule.values]
                alternation = b"|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
                self._keys.append((rule.counter, _key_pattern(alternation), frozenset(v.lower() for v in rule.values)))
                for v in rule.values:
                    self.key_names.setdefault(v.lower(), rule.counter)
                triggers.append(b"(?i:" + b"|".join(re2.escape(n) for n in names) + b")")
        options = re2.Options()
        options.log_errors = False
        options.max_mem = RE2_MAX_MEM
        self.trigger: Any = re2.compile(base_trigger + b"|" + b"|".join(triggers), options=options)

    def key_counter(self, name: str) -> str | None:
        """The counter of the rule naming this key (case-insensitive), if one does."""
        return self.key_names.get(name.lower()) if self.key_names else None

    def line(self, line: bytes, counts: RuleCounts) -> bytes:
        for counter, rx in [*self._literals, *self._regexes]:
            line, n = _mask_regex(rx, line)
            counts.add(counter, n)
        for counter, pattern, names in self._keys:
            hits = 0

            def repl(m: re.Match[bytes]) -> bytes:
                nonlocal hits
                val = m.group("val")
                q = val[:1] if val[:1] in (b'"', b"'") else b""
                if val.strip(b"\"'") in (b"", MASK_B) or (not m.group("sep").strip() and val.startswith(b"-")):
                    return m.group(0)  # nothing to mask, or `--name --next-flag`
                hits += 1
                return (
                    (m.group("dash") or b"")
                    + m.group("name")
                    + m.group("sep")
                    + q
                    + MASK_B
                    + (q if len(val) > 1 and val.endswith(q) else b"")
                )

            line = pattern.sub(repl, line)
            if b'"key"' in line:
                line, n = redact_otlp_attributes(line, lambda k, names=names: k.lower() in names)
                hits += n
            counts.add(counter, hits)
        return line


def _key_pattern(alternation: bytes) -> re.Pattern[bytes]:
    """`name=value`, `name: value`, `"name": "value"` and a flag's `--name value`; the value
    grammar is the built-in assignments'."""
    return re.compile(
        rb"(?i)(?<![A-Za-z0-9_.-])(?P<dash>--?)?(?P<name>" + alternation + rb")"
        rb"(?P<sep>\\?[\"']?[ \t]*[:=][ \t]*|(?(dash)[ \t]+|(?!)))(?!\*\*\*)"
        rb"(?P<val>" + _QUOTED_VALUE + rb"|(?:[^\s\"',;&}\]\\)])+)"
    )


def _mask_regex(rx: Any, line: bytes) -> tuple[bytes, int]:
    """Mask every match: its groups that took part (merged when nested), else the whole match."""
    spans: list[tuple[int, int]] = []
    n = 0
    for m in rx.finditer(line):
        groups = [m.span(g) for g in range(1, rx.groups + 1) if m.span(g)[0] >= 0 and m.span(g)[1] > m.span(g)[0]]
        found = groups if rx.groups else [m.span()]
        if found:
            n += 1
            spans += found
    if not spans:
        return line, 0
    out: list[bytes] = []
    pos = 0
    for start, end in _merge(spans):
        out += [line[pos:start], MASK_B]
        pos = end
    out.append(line[pos:])
    return b"".join(out), n


def _merge(spans: Sequence[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    cur: tuple[int, int] | None = None
    for s, e in sorted(spans):
        if cur is not None and s <= cur[1]:
            cur = (cur[0], max(cur[1], e))
            continue
        if cur is not None:
            yield cur
        cur = (s, e)
    if cur is not None:
        yield cur
