"""Review of issue 9's trust features, as an attacker and a careful operator would try them:
each test is one way a secret or an address could reach a bundle, or a run could hang."""

from __future__ import annotations

import pytest

from kata_debug.redact.obfuscate import Obfuscator

IP = "10.20.30.40"


@pytest.mark.parametrize(
    "before",
    ["nameserver ", "dns server ", "--server=", '"server":"', "resolver: ", "driver=", "dev ", "recv ", "prev "],
)
def test_a_word_that_merely_ends_like_version_does_not_keep_the_address(before: str) -> None:
    """`ver`/`v`/`rev` before a dotted quad mark a version only as whole words: resolv.conf's
    `nameserver 10.x`, kubelet's `--server=`, `ip route ... dev` lines hold real addresses."""
    ob = Obfuscator(b"k" * 32)
    out = ob.text(f"{before}{IP} end")
    assert IP not in out, out
    assert ob.map.pseudonyms, "the address got a pseudonym"


@pytest.mark.parametrize(
    "text", ["version 10.2.3.4", "ver=10.2.3.4", "kata-runtime 3.2.0.1", "v10.2.3.4", "rev 1.2.3.4"]
)
def test_version_words_still_keep_their_dotted_numbers(text: str) -> None:
    assert Obfuscator(b"k" * 32).text(text) == text
