"""Review of issue 9's trust features, as an attacker and a careful operator would try them:
each test is one way a secret or an address could reach a bundle, or a run could hang."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

from kata_debug.errors import UsageError
from kata_debug.logs.scan import BATCH, LINE_TAIL_MAX, SandboxIndex, SourceStats, copy_log
from kata_debug.redact import user_rules
from kata_debug.redact.obfuscate import Obfuscator
from kata_debug.redact.redactor import Redactor
from kata_debug.redact.user_rules import UserRules
from tests.conftest import kata_debug
from tests.hostroots import kata_node

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


# -- a line longer than the log scanner's chunk ----------------------------------------------

LAB_LITERAL = "Winter 2026 lab!"
LONG_LINE_SECRETS = [
    "password=Sup3rS3cretValue",
    "password: Sup3rS3cretValue",
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlc2lnbmF0dXJl",
    "AKIAIOSFODNN7EXAMPLE",
    LAB_LITERAL,
]


@pytest.mark.parametrize("secret", LONG_LINE_SECRETS)
@pytest.mark.parametrize("back", [1, 5, 9, 14])
def test_a_secret_where_an_overlong_line_is_cut_is_masked_as_if_the_line_were_whole(
    tmp_path: Path, secret: str, back: int
) -> None:
    """The scanner reads 1 MiB plus the rest of the line, at most 1 MiB more: a longer line is
    cut. A secret across that cut must be masked (and nothing lost or doubled) exactly as the
    whole line would be, with the built-in rules and a `--redact-config` literal alike."""
    rules = UserRules.from_json({"rules": [{"name": "lab", "literals": [LAB_LITERAL]}]})
    boundary = BATCH + LINE_TAIL_MAX
    start = boundary - back
    head = (b"x " * start)[: start - 1] + b" "
    line = head + secret.encode() + b" tail " + b"y" * 5000 + b"\n"
    data = b"first line\n" + line + b"last line with " + secret.encode() + b"\n"
    log = tmp_path / "big.log"
    log.write_bytes(line + b"last line with " + secret.encode() + b"\n")
    out = io.BytesIO()
    with open(log, "rb") as src:
        copy_log(src, 1 << 30, out, SandboxIndex(set()), "m", Redactor(rules=rules).stream(), SourceStats("m"))
    expected = Redactor(rules=rules).bytes(data[len(b"first line\n") :])
    got = out.getvalue()
    assert len(got) == len(expected) and got == expected
    assert secret.encode()[-6:] not in got.replace(b"***", b"")


def test_an_address_where_an_overlong_line_is_cut_still_gets_its_pseudonym(tmp_path: Path) -> None:
    ob = Obfuscator(b"k" * 32, ["kata-node-1"])
    boundary = BATCH + LINE_TAIL_MAX
    for value in (IP, "kata-node-1", "52:54:00:ab:34:56"):
        for back in (2, 6):
            line = (b"x " * boundary)[: boundary - back] + value.encode() + b" end\n"
            log = tmp_path / "big.log"
            log.write_bytes(line)
            out = io.BytesIO()
            with open(log, "rb") as src:
                copy_log(src, 1 << 30, out, SandboxIndex(set()), "m", Redactor(hosts=ob).stream(), SourceStats("m"))
            assert value.encode() not in out.getvalue(), (value, back)


# -- --redact-config that is not a plain file -----------------------------------------------


def test_a_rules_file_that_is_a_fifo_nobody_writes_is_an_error_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """open() on a writer-less FIFO blocks for ever, and no signal handler of ours can end it."""
    monkeypatch.setattr(user_rules, "READ_TIMEOUT", 0.3)
    fifo = tmp_path / "rules.fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(UsageError, match=r"rules\.fifo: nothing more to read within 0\.3s"):
        user_rules.load_user_rules(fifo)
    assert time.monotonic() - started < 5


def test_a_rules_pipe_is_read_when_written_and_refused_when_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--redact-config <(vault read ...)` is a pipe: fine when written; a silent one times out."""
    monkeypatch.setattr(user_rules, "READ_TIMEOUT", 0.3)
    r, w = os.pipe()
    try:
        os.write(w, b"rules:\n  - name: lab\n    literals: ['Winter2026!lab']\n")
        os.close(w)
        w = -1
        rules = user_rules.load_user_rules(f"/proc/self/fd/{r}")
        assert rules.rules[0].values == ("Winter2026!lab",)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    r, w = os.pipe()
    try:
        with pytest.raises(UsageError, match="nothing more to read"):
            user_rules.load_user_rules(f"/proc/self/fd/{r}")
    finally:
        os.close(r)
        os.close(w)


def test_a_rules_file_that_is_an_endless_device_is_refused_by_size() -> None:
    with pytest.raises(UsageError, match="larger than 1 MiB"):
        user_rules.load_user_rules("/dev/zero")


def test_a_rules_file_of_many_literals_is_refused_not_left_to_crawl() -> None:
    """Beyond ~64 KiB of literals RE2 fell back to a ~1000x slower matcher (0.01 MB/s at 25,000
    literals: hours for a node's logs), and 800 KB of them crashed the run with a raw RE2 error."""
    many = [f"literal-{i:06d}-padding" for i in range(5000)]
    with pytest.raises(UsageError, match="bytes of literals; at most 64 KiB"):
        UserRules.from_json({"rules": [{"name": "many", "literals": many}]})
    with pytest.raises(UsageError, match="key names; at most 1024"):
        UserRules.from_json({"rules": [{"name": "k", "keys": [f"key{i}" for i in range(2000)]}]})


def test_a_rules_file_at_the_literal_limit_still_redacts_fast() -> None:
    lits = [f"lit{i:05d}-{'x' * 50}" for i in range(1000)]  # 60 KB
    r = Redactor(rules=UserRules.from_json({"rules": [{"name": "lits", "literals": lits}]}))
    line = b'time="2026-12-06T04:14:22Z" level=info msg="starting the sandbox shim" sandbox=sb0123456789\n'
    data = line * 20000
    started = time.process_time()
    out = r.bytes(data + lits[500].encode() + b"\n")
    took = time.process_time() - started
    assert lits[500].encode() not in out
    assert len(data) / took > 20e6, f"{len(data) / took / 1e6:.1f} MB/s"


def test_a_default_map_path_already_taken_leaves_no_partial_bundle_behind(tmp_path: Path) -> None:
    """`<bundle>.map.json` is only known once the output is opened: refusing it then must not
    leave the empty `.partial` we had just created."""
    root = kata_node(tmp_path / "host")
    out = tmp_path / "b.tar.gz"
    (tmp_path / "elsewhere.json").write_text("keep")
    Path(str(out) + ".map.json").symlink_to(tmp_path / "elsewhere.json")
    res = kata_debug("collect", "--host-root", str(root), "-o", str(out), "-c", "host", "--obfuscate-hosts")
    assert res.returncode == 2 and "already exists" in res.stderr.decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tar.gz.map.json", "elsewhere.json", "host"]
    assert (tmp_path / "elsewhere.json").read_text() == "keep"


# -- a host file with a line longer than a chunk -------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("back", [3, 9])
async def test_a_host_file_with_an_overlong_line_is_read_in_bounded_pieces_and_a_secret_at_the_cut_is_masked(
    tmp_path: Path, back: int
) -> None:
    """Collectors copy host files a chunk plus the rest of its last line at a time; a file that
    is one endless line was read whole into memory. Now the line is cut (at most 1 MiB past the
    chunk) where no secret straddles the cut, as the log scanner does."""
    from datetime import timedelta

    from kata_debug.collect.runner import CollectOptions, run_collection
    from tests.bundles import read_bundle

    root = kata_node(tmp_path / "node")
    config = next((root / "etc/kata-containers").rglob("configuration.toml"))
    head = config.read_bytes() + b"# "
    cut = (1 << 20) + (1 << 20)  # one chunk and the longest line tail read with it
    pad = cut - back - len(head)
    secret = b'password="hunter2hunter2hunter2"'
    filler = b" " * (pad % 2) + b"x " * (pad // 2)  # ends in a space: `password` is a word of its own
    config.write_bytes(head + filler + secret + b" " + b"tail " * 300_000 + b"\n")
    out = tmp_path / "b.tar.gz"
    await run_collection(
        CollectOptions(host_root=root, output=str(out), collectors=["kata-config"], since=timedelta(days=1))
    )
    member = next(v for k, v in read_bundle(out).members.items() if k.endswith("configuration.toml"))
    assert b"hunter2" not in member and b'password="***"' in member
    assert member.count(b"tail ") == 300_000 and member.count(b"x ") == pad // 2, "nothing lost or doubled at the cut"


@pytest.mark.parametrize("text", ["kata-node-1_log", "log_kata-node-1", "/var/log/pods/kata-node-1_x/"])
def test_a_known_host_next_to_an_underscore_still_gets_its_pseudonym(text: str) -> None:
    """`_` is not a hostname character, so it does not make a host name part of a longer word."""
    ob = Obfuscator(b"k" * 32, ["kata-node-1"])
    assert b"kata-node-1" not in ob.bytes(text.encode())


@pytest.mark.parametrize("text", ["kata-node-10", "xkata-node-1", "kata-node-1x", "my-kata-node-1"])
def test_a_longer_name_that_contains_a_known_host_is_not_that_host(text: str) -> None:
    ob = Obfuscator(b"k" * 32, ["kata-node-1"])
    assert ob.bytes(text.encode()) == text.encode()
