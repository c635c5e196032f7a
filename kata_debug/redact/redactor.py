"""Keep secrets out of bundles: the entry points collectors call.

Bundles get handed to vendors, so redaction is on by default and errs toward removing too
much, but not harmless data a maintainer needs. The rules live one layer per module:
`structured` (parsed JSON with schema knowledge), `tokens` (credential shapes and `name=value`
assignments), `credentials` (headers, URLs, DSNs, argv) and `keys` (private-key blocks), all
counted per rule in `counts` so the manifest can say what was removed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from kata_debug.redact.counts import MASK, MASK_B, RuleCounts, looks_secret
from kata_debug.redact.obfuscate import Obfuscator
from kata_debug.redact.structured import JsonRedactor
from kata_debug.redact.text import TRIGGER_SOURCE, TextState, redact_text
from kata_debug.redact.user_rules import UserRedaction, UserRules

__all__ = ["MASK", "Redactor", "StreamRedactor", "looks_secret"]

# An OCI `process.env` entry as raw JSON text: "NAME=value" (for specs that do not parse);
# a spec cut by a size cap may end inside one, with no closing quote.
_ENV_STRING = re.compile(rb'"([A-Za-z_][A-Za-z0-9_.-]*)=((?:[^"\\]|\\.)*)("|\\?$)')


_Bytes = bytes  # `Redactor.bytes` shadows the type inside the class

#: `StreamRedactor.cut`: the most carried over to the next chunk, the separators a cut may
#: fall on, how many it tries, and how far either side of one a secret is looked for (longer
#: than a `--redact-config` literal, MAX_LITERAL).
CUT_MAX_CARRY = 64 << 10
_CUT_AT = re.compile(rb"[ \t,;&]")
_CUT_TRIES = 32
_CUT_WINDOW = 8 << 10


class Redactor:
    """Applies the rules and counts, per rule, what was removed. Thread-safe counts.

    `rules`: the operator's `--redact-config` rules, applied on top of the defaults to every
    text and JSON value this redactor sees (pass them on wherever another Redactor is made).
    `hosts` (`--obfuscate-hosts`) pseudonymises hostnames and addresses after redaction, in
    every entry point, whether redaction is on or not; None (the default) costs nothing.
    """

    def __init__(self, enabled: bool = True, rules: UserRules | None = None, hosts: Obfuscator | None = None) -> None:
        self.enabled = enabled
        self.rules = rules
        self.hosts = hosts
        self._user = UserRedaction(rules, TRIGGER_SOURCE) if rules is not None and enabled else None
        self._counts = RuleCounts()
        self._json = JsonRedactor(self._redact_str, self._counts, self._user.key_counter if self._user else None)

    @property
    def counts(self) -> dict[str, int]:
        """Masked values per rule; every user rule is listed, 0 included, so the manifest shows it ran."""
        counts = self._counts.snapshot()
        if self._user is None:
            return counts
        return dict(sorted({**{r.counter: 0 for r in self._user.rules.rules}, **counts}.items()))

    def add_counts(self, counts: Mapping[str, int]) -> None:
        """Fold in what another Redactor removed (a scanner process's), so the manifest counts it."""
        self._counts.update(counts)

    def add_pseudonyms(self, pseudonyms: Mapping[str, str], not_recorded: int = 0, kept: Iterable[str] = ()) -> None:
        """Fold in the pseudonyms another process recorded (a scanner's, a node's) for the map."""
        if self.hosts is not None:
            self.hosts.merge(pseudonyms, not_recorded, kept)

    def _count(self, rule: str, n: int = 1) -> None:
        self._counts.add(rule, n)

    # -- text -------------------------------------------------------------------------
    def bytes(self, data: _Bytes) -> _Bytes:
        """Redact a complete text (a key block cut at its end is masked to the end)."""
        if self.enabled:
            data = redact_text(data, self._counts, user=self._user)
        return data if self.hosts is None else self.hosts.bytes(data)

    def text(self, data: str) -> str:
        if not self.enabled and self.hosts is None:
            return data
        return self.bytes(data.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")

    def _redact_str(self, data: str) -> str:
        """Redaction only: the JSON walk pseudonymises once, after it (see `json_value`)."""
        if not self.enabled:
            return data
        raw = data.encode("utf-8", "surrogateescape")
        return redact_text(raw, self._counts, user=self._user).decode("utf-8", "surrogateescape")

    def pseudonymise(self, data: _Bytes) -> _Bytes:
        """Content kept unredacted on purpose (already redacted, or ours) still gets pseudonyms."""
        return data if self.hosts is None else self.hosts.bytes(data)

    def pseudonymise_json(self, value: Any) -> Any:
        return value if self.hosts is None else self.hosts.json(value)

    def oci_text(self, data: _Bytes) -> _Bytes:
        """Redact an OCI spec that does not parse as JSON (kept raw for the maintainer).

        Every JSON string shaped like an env entry loses its value (`"DB_PASSWORD=***"`),
        including one cut open at the end of a truncated file; then the text rules run.
        """
        if not self.enabled:
            return self.pseudonymise(data)
        n = 0

        def mask(m: re.Match[_Bytes]) -> _Bytes:
            nonlocal n
            if m.group(2) in (b"", MASK_B):
                return m.group(0)
            n += 1
            return b'"' + m.group(1) + b"=" + MASK_B + m.group(3)

        data = _ENV_STRING.sub(mask, data)
        self._count("oci-env", n)
        return self.bytes(data)

    def stream(self) -> StreamRedactor:
        return StreamRedactor(self)

    # -- JSON -------------------------------------------------------------------------
    def json_value(self, value: Any, *, oci: bool = False) -> Any:
        """Redact parsed JSON (`oci` is kept for callers: env lists are masked everywhere)."""
        if self.enabled:
            value = self._json.walk(value)
        return self.pseudonymise_json(value)


class StreamRedactor:
    """Redacts a byte stream fed in chunks that end on line boundaries.

    Private-key state (inside a block, or at the head of a stream that may start inside
    one) carries from chunk to chunk, so a block split anywhere is masked whole.
    """

    def __init__(self, redactor: Redactor) -> None:
        self._r = redactor
        self._state = TextState()

    def cut(self, chunk: _Bytes) -> tuple[_Bytes, _Bytes]:
        """Where to cut a chunk that ends inside a line (a line longer than the reader's chunk).

        Chunks normally end on line boundaries, so no rule sees a secret cut in two; a line of
        megabytes has to be cut somewhere. Returns (what to `feed` now, what to put in front of
        the next chunk): the cut is at a separator (space, tab, `,`, `;`, `&`: no address, host
        name or token shape holds one) between `_CUT_WINDOW` and `CUT_MAX_CARRY` bytes from the
        end, at the last one where redacting the two sides apart removes exactly what redacting
        them together does, so `password: X`, a literal with spaces or `Bearer X` is not split
        either; only a secret longer than `_CUT_WINDOW` could still be. With no separator in
        that range, the chunk is fed whole.
        """
        # At least a window before the end, so a secret that starts before the cut and goes on
        # past the chunk's end (into text not read yet) is one longer than the window.
        tail_start = max(0, len(chunk) - CUT_MAX_CARRY)
        candidates = [m.start() for m in _CUT_AT.finditer(chunk, tail_start, max(0, len(chunk) - _CUT_WINDOW))]
        if not candidates:
            return chunk, b""
        for cut in reversed(candidates[-_CUT_TRIES:]):
            if cut > 0 and self._seam_keeps(chunk, cut):
                return chunk[:cut], chunk[cut:]
        cut = candidates[-1]
        return chunk[:cut], chunk[cut:]

    def _seam_keeps(self, data: _Bytes, cut: int) -> bool:
        """Redacting `data` cut at `cut` masks the same as redacting it whole (near the cut)."""
        if not self._r.enabled:
            return True  # pseudonyms only: their shapes hold no separator
        before, after = data[max(0, cut - _CUT_WINDOW) : cut], data[cut : cut + _CUT_WINDOW]
        scratch = RuleCounts()
        user = self._r._user
        apart = redact_text(before, scratch, user=user) + redact_text(after, scratch, user=user)
        return apart == redact_text(before + after, scratch, user=user)

    def feed(self, chunk: _Bytes) -> _Bytes:
        if self._r.enabled:
            chunk = redact_text(chunk, self._r._counts, self._state, user=self._r._user)
        hosts = self._r.hosts
        return chunk if hosts is None else hosts.bytes(chunk)
