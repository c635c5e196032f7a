"""Layer 4: private-key blocks (PEM, OpenSSH, PGP, SSH2, PuTTY) in text and in streams.

A block is a BEGIN marker that ends its line (or is followed by an escaped/flattened body
on the same line) and then key-body lines. Everything in the body is masked; the markers
stay so a maintainer sees a key was there. State survives chunk boundaries, and a stream
that starts inside a block (cut by a size cap or a log rotation) has its orphan body masked
up to the END marker. A marker mentioned inside a sentence, with no body after it, is not a
block, and a block with no END stops at the first line that is not key body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kata_debug.redact.counts import MASK_B

RULE = "pem-private-key"
_KIND = rb"(?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?"
_BEGIN = re.compile(rb"-----BEGIN " + _KIND + rb"-----|---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----")
_END = re.compile(rb"-----END " + _KIND + rb"-----|---- END SSH2 ENCRYPTED PRIVATE KEY ----")
_PUTTY = re.compile(rb"[ \t]*PuTTY-User-Key-File-\d+:[ \t]*\S+[ \t]*\r?\n?")
_PUTTY_MAC = re.compile(rb"([ \t]*Private-MAC:[ \t]*)\S+")
# Key body lines: base64 (optionally indented, as in YAML block scalars) or armor headers;
# a key written to the journal line by line has each line wrapped as shim-logs writes it:
# `<time> <host> <ident>[<pid>]: <line>` (journal.log) or a JSON row (journal.jsonl).
_BODY_CORE = (
    rb"(?:[A-Za-z0-9+/=]{1,200}|(?:Proc-Type|DEK-Info|Version|Comment|Hash|Charset|Encryption|Public-Lines"
    rb"|Private-Lines|Key-Derivation|Argon2-[A-Za-z]+|Subject):[^\n\"]*)"
)
_JOURNAL_TEXT = rb"(?:\S+ \S+ [^\s\[]+\[\d*\]: )"
_JOURNAL_ROW = (
    rb'\{"ts": "[^"]*", "identifier": "[^"]*", "pid": [^,]*, "priority": [^,]*, "message": "',
    rb'", "fields": \{[^\n]*\}\}',
)
_BODY = re.compile(
    rb"(?:"
    + _JOURNAL_TEXT
    + rb"?[ \t]*"
    + _BODY_CORE
    + rb"[ \t]*|"
    + _JOURNAL_ROW[0]
    + _BODY_CORE
    + _JOURNAL_ROW[1]
    + rb")\r?\n?"
)
# What may follow a BEGIN marker on its line when the block goes on below it.
_AFTER_BEGIN = re.compile(rb"\s*|" + _JOURNAL_ROW[1] + rb"\s*")
# One-line forms: "-----BEGIN ...-----\nMIIE...\n-----END ...-----" inside a JSON string, or a
# key flattened onto one line with spaces.
_INLINE = re.compile(
    rb"(?P<begin>" + _BEGIN.pattern + rb")(?P<body>(?:\\\\?[rn]|[ \t])(?:[A-Za-z0-9+/=:,.\t -]|\\\\?[rn])*?)"
    rb"(?P<end>" + _END.pattern + rb"|(?=[^A-Za-z0-9+/=:,.\t \\-])|$)"
)
_KEY_LINE = re.compile(rb"[A-Za-z0-9+/]{40,}")
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/=]{20,}")
MARKERS = (b"PRIVATE KEY", b"PuTTY-User-Key-File", b"Private-MAC:")


def _key_line(line: bytes) -> bool:
    """A line of key-length base64 in mixed case (a hex digest or a word is not)."""
    m = _KEY_LINE.search(line)
    return m is not None and m.group().lower() != m.group() and m.group().upper() != m.group()


def _body_line(line: bytes) -> bool:
    return bool(_BODY.fullmatch(line)) and bool(line.strip())


def _inline(line: bytes) -> tuple[bytes, int]:
    n = 0

    def repl(m: re.Match[bytes]) -> bytes:
        nonlocal n
        body = m.group("body")
        if not _BASE64_RUN.search(body):
            return m.group(0)
        n += 1
        sep = b"\\n" if b"\\n" in body else b" "
        return m.group("begin") + sep + MASK_B + (sep + m.group("end") if m.group("end") else b"")

    return _INLINE.sub(repl, line), n


@dataclass
class KeyBlocks:
    """Key-block state for one stream (or one complete text: feed it once)."""

    in_block: bool = False
    at_head: bool = True
    count: int = 0
    _marked: bool = False  # the `***` standing for this block's body has been written

    def feed(self, data: bytes, markers: bool | None = None) -> bytes:
        """Mask the key blocks in one chunk. `markers`: whether the caller already knows the
        chunk holds a marker (None: look for one here)."""
        if self.at_head:
            nl = data.find(b"\n")
            if not _body_line(data if nl < 0 else data[: nl + 1]):
                self.at_head = False
        if not self.in_block and not self.at_head:
            if markers is None:
                markers = any(m in data for m in MARKERS)
            if not markers:
                return data
        lines = data.splitlines(keepends=True)
        out: list[bytes] = []
        i = 0
        if self.at_head:
            j = 0
            while j < len(lines) and _body_line(lines[j]) and not _END.search(lines[j]):
                j += 1
            if j and (_END.search(lines[j]) if j < len(lines) else any(_key_line(ln) for ln in lines[:j])):
                # starts inside a block cut off before its BEGIN (a cap or a rotation): body
                # lines up to its END, or a chunk of nothing but key-length base64 lines
                out.append(MASK_B + b"\n")
                self.count += 1
                i = j
            if j < len(lines):
                self.at_head = False
        while i < len(lines):
            line = lines[i]
            i += 1
            if self.in_block:
                if _END.search(line):
                    self.in_block = False
                    out.append(line)
                    continue
                mac = _PUTTY_MAC.match(line)
                if mac:
                    self.in_block = False
                    out.append(mac.group(1) + MASK_B + b"\n")
                    continue
                if _body_line(line) or not line.strip():
                    if not self._marked:
                        out.append(MASK_B + b"\n")
                        self.count += 1
                        self._marked = True
                    continue
                self.in_block = False  # no END: the block stops at the first non-body line
            if not any(m in line for m in MARKERS):
                out.append(line)
                continue
            line, n = _inline(line)
            self.count += n
            out.append(line)
            begins = list(_BEGIN.finditer(line))
            begin = begins[-1] if begins else None
            opens = (
                begin is not None
                and _AFTER_BEGIN.fullmatch(line, begin.end()) is not None
                and not _END.search(line, begin.end())
            )
            if not opens and _PUTTY.fullmatch(line):
                opens = True
            if not opens:
                continue
            following = [ln for ln in lines[i : i + 2]]
            if following and not following[0].strip():
                following = following[1:]
            if not following or _body_line(following[0]):
                self.in_block, self._marked = True, False
        return b"".join(out)
