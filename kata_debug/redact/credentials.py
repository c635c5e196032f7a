"""Layer 3: credentials carried by protocols: headers, URL user info, signed query
parameters, connection strings, DSNs and command-line flags.

These rules know where a protocol puts the secret, so they mask exactly the credential and
keep what a maintainer needs (scheme, host, path, flag name, auth scheme word).
"""

from __future__ import annotations

import re

from kata_debug.redact.counts import MASK_B
from kata_debug.redact.tokens import LineRule

_SCHEMES = frozenset(
    b"basic bearer digest negotiate ntlm token oauth kerberos apikey sharedkey aws4-hmac-sha256 googlelogin".split()
)
_HEADER = re.compile(
    rb"(?i)(?<![\w-])(?P<name>(?:proxy-)?authorization|set-cookie|cookie|x-amz-security-token|x-api-key|x-auth-token"
    rb"|private-token|x-vault-token)(?P<sep>\\?[\"']?[ \t]*[:=][ \t]*\[?[ \t]*)(?P<q>\\\"|[\"'])?"
)


_DIGEST_PARAMS = re.compile(rb'(?:[ \t]*,?[ \t]*[\w-]+=(?:\\?"[^"\\]*\\?"|[^\s,"\\]+))+')


def _header_end(line: bytes, pos: int, quote: bytes | None) -> int:
    """Where a header value that starts at `pos` ends: its closing quote; unquoted, the first
    quote (the value sits inside a logfmt or JSON string), `]` of a Go map print, or the end
    of the line; Digest parameters, quoted as they are, all belong to the value."""
    if quote == b'\\"':
        end = line.find(b'\\"', pos)
        return len(line) if end < 0 else end
    if quote:
        i = pos
        while True:
            end = line.find(quote, i)
            if end < 0:
                return len(line)
            if line[end - 1 : end] != b"\\":
                return end
            i = end + 1
    if line[pos : pos + 7].lower() == b"digest ":
        m = _DIGEST_PARAMS.match(line, pos + 7)
        if m:
            return m.end()
    ends = [i for i in (line.find(c, pos) for c in (b'"', b"]")) if i >= 0]
    end = min(ends, default=len(line))
    return end - 1 if end > pos and line[end - 1 : end] == b"\\" else end


def redact_headers(line: bytes) -> tuple[bytes, int]:
    """`Authorization: Basic X` -> `Authorization: Basic ***` (every scheme: the whole
    credential after the scheme word goes, Digest parameters and AWS4 `Signature=` included)."""
    out: list[bytes] = []
    pos = n = 0
    for m in _HEADER.finditer(line):
        if m.start() < pos:
            continue
        start = m.end()
        end = _header_end(line, start, m.group("q"))
        value = line[start:end]
        first, _, rest = value.partition(b" ")
        keep = first + b" " if rest.strip() and first.lower() in _SCHEMES else b""
        if value.strip() in (b"", MASK_B) or value[len(keep) :].strip() == MASK_B:
            continue
        out += [line[pos:start], keep, MASK_B]
        pos = end
        n += 1
    if not n:
        return line, 0
    out.append(line[pos:])
    return b"".join(out), n


def _replace_group(group: str) -> object:
    def repl(m: re.Match[bytes]) -> bytes | None:
        if m.group(group) in (MASK_B, b""):
            return None
        return m.string[m.start() : m.start(group)] + MASK_B + m.string[m.end(group) : m.end()]

    return repl


def _rule(name: str, pattern: bytes, group: str, trigger: bytes) -> LineRule:
    return LineRule(name, re.compile(pattern), _replace_group(group), (trigger,))  # type: ignore[arg-type]


CREDENTIAL_RULES: list[LineRule] = [
    _rule(
        "bearer-token",
        rb"(?i)\bbearer\s+(?P<v>(?!\*\*\*)[A-Za-z0-9\-._~+/]+=*)",
        "v",
        rb"(?i:bearer)",
    ),
    # scheme://user:pass@host: greedy up to the last `@` of the authority (passwords hold `@`).
    _rule(
        "url-credentials",
        rb"\b[a-zA-Z][a-zA-Z0-9+.-]*://(?P<v>[^\s/?#\"'<>\[\]{}]*)@",
        "v",
        rb"://",
    ),
    # Go MySQL DSN: user:pass@tcp(host:3306)/db
    _rule(
        "go-dsn",
        rb"(?<![\w/:@])(?P<v>[\w.%+-]*:[^\s@\"']*)@(?:tcp6?|udp|unix)\(",
        "v",
        rb"@(?:tcp|udp|unix)",
    ),
    _rule(
        "connection-string",
        rb"(?i)(?<![\w])(?:AccountKey|SharedAccessKey|SharedAccessSignature|SharedSecret)=(?P<v>[^;\"'\s]+)",
        "v",
        rb"(?i:accountkey|sharedaccess|sharedsecret)",
    ),
    # Signed URLs: Azure SAS `sig=`, S3 `X-Amz-Signature=`, GCS `X-Goog-Signature=`, tokens in queries.
    _rule(
        "signed-url",
        rb"(?i)[?&;](?:sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature"
        rb"|x-goog-credential|x-goog-security-token|token|access_token|id_token|refresh_token|api_key|apikey|key"
        rb"|client_secret|password|passwd|pwd|secret|code|auth)=(?P<v>[^&\s\"'#<>\\]+)",
        "v",
        rb"(?i:[?&;](?:sig|signature|x-amz-|x-goog-|token|access_token|id_token|refresh_token|api_key|apikey|key|client_secret|password|passwd|pwd|secret|code|auth)=)",
    ),
    # Command lines in text (ps output, hooks, `sh -c` strings, span attributes).
    _rule(
        "argv-secret",
        rb"(?i)(?<![^\s\"'\[,=])--?[\w-]*(?:token|password|passwd|secret|pass|api-key|apikey|credentials?|auth|client-key-data)"
        rb"(?:[ \t]+|=|\\?\"[ \t]*,[ \t]*\\?\")(?P<v>(?!-)\"[^\"]*\"|(?!-)'[^']*'|(?!-)[^\s\"'\\]+)",
        "v",
        rb"(?i:-(?:[\w-]*)(?:token|password|passwd|secret|pass|api-key|apikey|credentials?|auth|client-key-data)(?:[ \t=]|\\?\"[ \t]*,))",
    ),
    _rule(
        "argv-secret",
        rb"(?i)\b(?:curl|wget|http)\b[^\n]*?\s(?:-u|--user|--proxy-user)(?:[ \t]+|=)?(?P<v>\"[^\"]*\"|'[^']*'|[^\s\"']+)",
        "v",
        rb"(?i:curl|wget)",
    ),
    _rule(
        "argv-secret",
        rb"(?i)\b(?:login|mysql\w*|mariadb\w*|sshpass|redis-cli|htpasswd)\b[^\n]*?\s-[pa](?:[ \t]+)?(?P<v>(?!-)[^\s\"']+)",
        "v",
        rb"(?i:login|mysql|mariadb|sshpass|redis-cli)",
    ),
    # XML error replies (S3 SignatureDoesNotMatch echoes what was signed) and XML configs;
    # a reply cut at a size limit may end inside the element.
    _rule(
        "xml-secret",
        rb"(?i)<(?:(?:AWS)?AccessKeyId|SignatureProvided|StringToSign(?:Bytes)?|CanonicalRequest(?:Bytes)?"
        rb"|[A-Za-z]*(?:Signature|Token|Secret|Password|Passwd|SecretKey|PrivateKey|AccountKey))>(?P<v>[^<]+)",
        "v",
        rb"(?i:accesskeyid>|signatureprovided>|stringtosign|canonicalrequest|signature>|token>|secret>|password>|passwd>|key>)",
    ),
    _rule(
        "sql-password",
        rb"(?i)\b(?:identified\s+by(?:\s+password)?|password)\s+(?P<v>'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.)*\")",
        "v",
        rb"(?i:identified|password\s+['\"])",
    ),
]


# -- OTLP/JSON span attributes in text: {"key":"db.password","value":{...any value type...}}
_OTLP_KEY = re.compile(rb'"key"\s*:\s*"(?P<name>[^"\\]{1,200})"\s*,\s*"value"\s*:\s*\{')
_OTLP_SCALAR = re.compile(
    rb'("(?:stringValue|bytesValue|intValue|doubleValue)"\s*:\s*)("(?:[^"\\]|\\.)*"?|[-0-9.eE+]+)'
)


def _object_end(line: bytes, start: int) -> int:
    """Index after the JSON object that opens at `start - 1` (or the line's end if cut)."""
    depth, i, n = 1, start, len(line)
    while i < n and depth:
        c = line[i]
        if c == 0x22:  # skip a string
            i += 1
            while i < n and line[i] != 0x22:
                i += 2 if line[i] == 0x5C else 1
        elif c == 0x7B:
            depth += 1
        elif c == 0x7D:
            depth -= 1
        i += 1
    return i


def redact_otlp_attributes(line: bytes, looks_secret: object) -> tuple[bytes, int]:
    """Every scalar inside the value of an attribute whose key names a secret, any value type."""
    out: list[bytes] = []
    pos = n = 0
    for m in _OTLP_KEY.finditer(line):
        if m.start() < pos or not looks_secret(m.group("name").decode("utf-8", "replace")):  # type: ignore[operator]
            continue
        end = _object_end(line, m.end())
        value = line[m.end() : end]
        masked = _OTLP_SCALAR.sub(lambda s: s.group(1) + (b'"***"' if s.group(2).startswith(b'"') else b'"***"'), value)
        if masked != value:
            n += 1
        out += [line[pos : m.end()], masked]
        pos = end
    if not n:
        return line, 0
    out.append(line[pos:])
    return b"".join(out), n
