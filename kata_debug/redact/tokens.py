"""Layer 2: credentials recognisable by their shape alone, and `name = value` assignments.

Token shapes are ours (prefixes vendors document for their keys); they run with stdlib `re`
on the few lines the prefilter in `text.py` flagged, so lookarounds are allowed here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from kata_debug.redact.counts import _SECRET_LAST_WORDS, MASK_B


@dataclass(frozen=True)
class LineRule:
    """A named rule over one line of bytes: `pattern` finds it, `replace` builds the masked text."""

    name: str
    pattern: re.Pattern[bytes]
    replace: Callable[[re.Match[bytes]], bytes | None]
    # Literals (lower-case) or RE2 fragments of which every match contains one: the prefilter.
    triggers: tuple[bytes, ...]


def _whole(m: re.Match[bytes]) -> bytes:
    return MASK_B


def _keep_group1(m: re.Match[bytes]) -> bytes:
    return m.group(1) + MASK_B


# (rule name, pattern, RE2 trigger fragment). Each pattern matches the secret itself.
_SHAPES: list[tuple[str, bytes, bytes]] = [
    (
        "aws-access-key-id",
        rb"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA|ABIA|ACCA)[A-Z0-9]{16}\b",
        rb"A[KSGIRNBC][IPDNC]A",
    ),
    ("jwt", rb"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*", rb"eyJ"),
    ("github-token", rb"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})", rb"gh[pousr]_|github_pat_"),
    (
        "gitlab-token",
        rb"\bgl(?:pat|dt|rt|ptt|cbt|oas|imt|soat|ft|agent)-[A-Za-z0-9_-]{20,}",
        rb"gl(?:pat|dt|rt|ptt|cbt|oas|imt|soat|ft|agent)-",
    ),
    ("slack-token", rb"\bxox[abposre]-[A-Za-z0-9-]{10,}", rb"xox[abposre]-"),
    ("slack-webhook", rb"hooks\.slack\.com/services/[A-Za-z0-9/]+", rb"hooks\.slack\.com"),
    ("stripe-key", rb"\b(?:[srp]k|whsec)_(?:live|test)?_?[A-Za-z0-9]{16,}", rb"k_live_|k_test_|whsec_"),
    ("pypi-token", rb"\bpypi-[A-Za-z0-9_-]{40,}", rb"pypi-"),
    ("openai-anthropic-key", rb"\bsk-(?:proj-|ant-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}", rb"\bsk-"),
    ("google-api-key", rb"\bAIza[0-9A-Za-z_-]{35}", rb"AIza"),
    (
        "google-oauth",
        rb"\b(?:ya29\.[0-9A-Za-z_-]{20,}|GOCSPX-[A-Za-z0-9_-]{20,}|1//0[A-Za-z0-9_-]{30,})",
        rb"ya29\.|GOCSPX-|1//0",
    ),
    ("npm-token", rb"\bnpm_[A-Za-z0-9]{36}", rb"npm_"),
    ("huggingface-token", rb"\bhf_[A-Za-z0-9]{30,}", rb"\bhf_"),
    ("digitalocean-token", rb"\bdo[opr]_v1_[a-f0-9]{64}", rb"do[opr]_v1_"),
    ("sendgrid-key", rb"\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}", rb"SG\."),
    ("docker-pat", rb"\bdckr_(?:pat|oat)_[A-Za-z0-9_-]{20,}", rb"dckr_"),
    ("vault-token", rb"\bhv[sbr]\.[A-Za-z0-9_-]{20,}", rb"hv[sbr]\."),
    ("age-secret-key", rb"AGE-SECRET-KEY-1[0-9A-Z]{58}", rb"AGE-SECRET-KEY-"),
    ("shopify-token", rb"\bshp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}", rb"shp(?:at|ss|ca|pa)_"),
    ("kube-bootstrap-token", rb"(?<![\w.-])[a-z0-9]{6}\.[a-z0-9]{16}(?![\w.-])", rb"[a-z0-9]{6}\.[a-z0-9]{16}"),
]

TOKEN_RULES: list[LineRule] = [
    LineRule(name, re.compile(pattern), _whole, (trigger,)) for name, pattern, trigger in _SHAPES
]

# A bare AWS secret access key: exactly 40 base64 characters with upper, lower and digits
# (a hex digest has no upper case; container ids are 64 characters).
_AWS_SECRET = re.compile(rb"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")


def _aws_secret(m: re.Match[bytes]) -> bytes | None:
    s = m.group(0)
    if s.lower() != s and s.upper() != s and any(48 <= c <= 57 for c in s):
        return MASK_B
    return None


TOKEN_RULES.append(
    LineRule(
        "aws-secret-key", _AWS_SECRET, _aws_secret, (rb"(?:^|[^A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?:$|[^A-Za-z0-9/+=])",)
    )
)

# -- assignments ------------------------------------------------------------------------
_WORDS = b"|".join(w.encode() for w in sorted(_SECRET_LAST_WORDS, key=lambda w: (-len(w), w)))
# A secret-looking name: its last word (after `_ . -` or a camelCase hump) is a secret word,
# or it ends in `<word>_key` / `<word>Key`.
SECRET_NAME = (
    rb"(?<![A-Za-z0-9_.-])(?:[A-Za-z0-9_.-]*(?<=[_.-]))?(?i:" + _WORDS + rb"|[a-z0-9]+[_.-]key|key[_-]data)"
    rb"|(?<![A-Za-z0-9_.-])[A-Za-z0-9_.-]*[a-z0-9](?:Token|Password|Passwd|Secret|Key|Pass|Pwd|Auth|Credentials?|Signature)"
)
_QUOTED_VALUE = (
    rb"'''[^\n]*?'''|\"\"\"[^\n]*?\"\"\""  # TOML literal on one line (multi-line: text.py)
    rb"|\\\"(?:[^\"\\]|\\[^\"])*?\\\""  # \"...\" inside a logfmt msg
    rb"|\"(?:[^\"\\\n]|\\.)*\"?"  # "..." (open at the end of a cut line: still masked)
    rb"|'(?:[^'\n])*'?"
)
_ASSIGN = re.compile(
    rb"(?P<name>" + SECRET_NAME + rb")(?P<sep>\\?[\"']?[ \t]*[:=][ \t]*)(?!\*\*\*)"
    rb"(?P<val>" + _QUOTED_VALUE + rb"|(?:[^\s\"',;&}\]\\)]|,(?!\s|[A-Za-z_][\w.-]*=))+)"
)
# Header names whose values credentials.py masks whole (scheme kept): not assignments.
_HEADER_NAMES = frozenset(
    b"authorization proxy-authorization cookie set-cookie x-amz-security-token x-api-key x-auth-token private-token x-vault-token".split()
)
_NON_SECRET_VALUES = frozenset(b"true false null none nil yes no required optional".split())
_TOKENISH = re.compile(rb"[A-Za-z0-9+/=_\-.~:!@#$%^*]{8,}")


def _assignment(m: re.Match[bytes]) -> bytes | None:
    name, sep, val = m.group("name"), m.group("sep"), m.group("val")
    if name.lower() in _HEADER_NAMES or val == MASK_B:
        return None
    bare = val.strip(b"\"'\\")
    if not bare or bare == MASK_B or bare.lower() in _NON_SECRET_VALUES:
        return None
    if b"=" not in sep and not sep.startswith((b'"', b"'", b'\\"')):
        # `name: value` in prose ("failed to get token: connection refused") unless the line
        # is a YAML-ish `name: value` or the value is shaped like a credential.
        start = m.string.rfind(b"\n", 0, m.start()) + 1
        prefix = m.string[start : m.start()].strip(b" \t-")
        if prefix and not (_TOKENISH.fullmatch(bare) and any(c in b"0123456789" for c in bare)):
            return None
    q = val[:3] if val[:3] in (b"'''", b'"""') else val[:2] if val.startswith(b'\\"') else val[:1]
    if q in (b'"', b"'", b"'''", b'"""', b'\\"'):
        return name + sep + q + MASK_B + (q if val.endswith(q) and len(val) > len(q) else b"")
    return name + sep + MASK_B


ASSIGNMENT_RULE = LineRule(
    "secret-value",
    _ASSIGN,
    _assignment,
    (
        rb"(?i:(?:tokens?|passw(?:or)?ds?|passphrase|pass|pwd|secrets?|credentials?|auth|cookies?|jwt|signature|sig|key|key-data)\\?[\"']?[ \t]*[:=])",
    ),
)
