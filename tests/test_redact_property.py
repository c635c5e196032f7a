"""Property: secrets embedded at random offsets of a random log stream, fed to the stream
redactor in random chunks (on line boundaries, as collectors and the scanner feed it), never
reach the output, however the chunks fall, including inside a private-key block."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from kata_debug.redact.redactor import Redactor

_ALNUM = string.ascii_letters + string.digits
_UPPER = string.ascii_uppercase + string.digits


def _body(alphabet: str, lo: int, hi: int) -> st.SearchStrategy[str]:
    # a digit and an upper-case letter make each value credential-shaped and unlike filler words
    return st.text(alphabet, min_size=lo, max_size=hi).map(lambda s: "Q7" + s)


@st.composite
def secret(draw: st.DrawFn) -> tuple[list[str], str]:
    """(lines to embed, the value that must not appear)."""
    kind = draw(st.sampled_from(["ghp", "akia", "assign", "basic", "url", "pem", "jwt", "argv", "openssh"]))
    if kind == "ghp":
        v = "ghp_" + draw(_body(_ALNUM, 34, 34))
        return [f'level=info msg="push with {v}"'], v
    if kind == "akia":
        v = "AKIA" + draw(_body(_UPPER, 14, 14))
        return [f"aws id {v} used"], v
    if kind == "assign":
        v = draw(_body(_ALNUM + "!@#%^*", 8, 30))
        name = draw(st.sampled_from(["password", "db_password", "api_token", "clientSecret", "pwd", "secret_key"]))
        return [f"level=debug {name}={v} pid=4"], v
    if kind == "basic":
        v = draw(_body(_ALNUM + "+/", 12, 40))
        return [f'msg="GET /v2/ Authorization: Basic {v}"'], v
    if kind == "url":
        v = draw(_body(_ALNUM + "@!", 8, 20))
        return [f"pulling https://robot:{v}@registry.example/v2/x"], v
    if kind == "jwt":
        v = (
            "eyJ"
            + draw(_body(_ALNUM, 10, 20))
            + ".eyJ"
            + draw(_body(_ALNUM, 10, 20))
            + "."
            + draw(_body(_ALNUM, 10, 20))
        )
        return [f"token {v} expired"], v
    if kind == "argv":
        v = draw(_body(_ALNUM, 8, 20))
        return [f"exec /bin/agent --token {v} --verbose"], v
    kind_name = (
        "OPENSSH PRIVATE KEY"
        if kind == "openssh"
        else draw(st.sampled_from(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY"]))
    )
    body = [draw(_body(_ALNUM + "+/", 30, 62)) for _ in range(draw(st.integers(1, 6)))]
    return [f"-----BEGIN {kind_name}-----", *body, f"-----END {kind_name}-----"], body[0]


_filler = st.builds(
    lambda n, w: f'time="2026-12-01T10:00:{n % 60:02d}Z" level=info msg="{w}" sandbox=ab{n:06x} source=virtcontainers',
    st.integers(0, 10**6),
    st.sampled_from(["reading guest console", "container started", "failed to get token: timeout", "vcpu hotplug"]),
)


@settings(max_examples=300, deadline=None)
@given(
    filler=st.lists(_filler, min_size=1, max_size=30),
    secrets=st.lists(st.tuples(st.integers(0, 30), secret()), min_size=1, max_size=5),
    cuts=st.lists(st.integers(1, 8), min_size=1, max_size=40),
)
def test_no_secret_survives_any_chunking(
    filler: list[str], secrets: list[tuple[int, tuple[list[str], str]]], cuts: list[int]
) -> None:
    # each secret goes in whole before a filler line (a secret is one unit, not split by another)
    lines: list[str] = []
    for i, line in enumerate([*filler, None]):
        for at, (embed, _) in secrets:
            if min(at, len(filler)) == i:
                lines.extend(embed)
        if line is not None:
            lines.append(line)
    data = [ln + "\n" for ln in lines]
    chunks: list[bytes] = []
    i = 0
    for n in cuts * (len(data) // max(1, sum(cuts)) + 1):
        if i >= len(data):
            break
        chunks.append("".join(data[i : i + n]).encode())
        i += n
    stream = Redactor().stream()
    out = b"".join(stream.feed(c) for c in chunks).decode()
    for _, (_, value) in secrets:
        assert value not in out
    assert "failed to get token: timeout" in out or "failed to get token" not in "".join(filler)
