"""Every planted secret form, in every place a collector reads, stays out of the bundle;
every harmless look-alike comes through. Each place goes through the code path that
handles it in a collection: text files and logs through the stream redactor (whole and
line by line, as chunks), parsed specs/spans through `json_value` (CollectorOutput.add_json),
unparsed specs through `oci_text`, cluster objects through `cluster.objects.redact_object`."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kata_debug.cluster.objects import redact_object
from kata_debug.redact.redactor import Redactor
from tests.redaction_corpus import CASES, LOOKALIKES, Case


def run_place(case: Case) -> list[str]:
    """The bundle text(s) the content becomes, one per way the place can be read."""
    c: Any = case.content
    if case.place in ("log", "config", "span-text"):
        data = c.encode()
        whole = Redactor().stream().feed(data)
        stream = Redactor().stream()
        by_line = b"".join(stream.feed(line) for line in data.splitlines(keepends=True))
        outs = [whole.decode(), Redactor().bytes(data).decode()]
        return [*outs, by_line.decode()] if case.by_line else outs
    if case.place == "upload":  # kata_debug.upload quotes a refusal through Redactor.text
        return [Redactor().text(c)]
    if case.place == "oci-raw":
        return [Redactor().oci_text(c.encode()).decode()]
    if case.place in ("oci", "persist", "span"):
        return [json.dumps(Redactor().json_value(c, oci=case.place == "oci"), indent=2)]
    if case.place == "k8s":
        return [json.dumps(redact_object(Redactor(), c), indent=2)]
    raise AssertionError(case.place)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_planted_secret_does_not_reach_the_bundle(case: Case) -> None:
    for out in run_place(case):
        leaked = [s for s in case.secrets if s in out]
        assert not leaked, f"leaked {leaked} in:\n{out}"
        destroyed = [k for k in case.keep if k not in out]
        assert not destroyed, f"destroyed {destroyed} in:\n{out}"


@pytest.mark.parametrize("case", LOOKALIKES, ids=[c.id for c in LOOKALIKES])
def test_harmless_lookalike_survives(case: Case) -> None:
    for out in run_place(case):
        if case.place in ("log", "config"):
            assert out == case.content
        destroyed = [k for k in case.keep if k not in out]
        assert not destroyed, f"destroyed {destroyed} in:\n{out}"


def test_the_corpus_is_broad() -> None:
    """The issue's reviewer planted 156 forms; this corpus plants more, in every place."""
    assert len(CASES) >= 156
    assert {c.place for c in CASES} >= {
        "log",
        "config",
        "oci",
        "oci-raw",
        "persist",
        "k8s",
        "span",
        "span-text",
        "upload",
    }


@pytest.mark.parametrize("kind", ["RSA PRIVATE KEY", "OPENSSH PRIVATE KEY", "PGP PRIVATE KEY BLOCK"])
def test_a_key_written_to_the_journal_line_by_line_is_masked_in_journal_log(kind: str) -> None:
    """shim-logs stores each journal entry as journalctl's prefixed text line
    (`<time> <host> kata[<pid>]: <message>`); a key logged one line per entry is still one block."""
    from kata_debug.bundle.writer import Spool
    from kata_debug.logs.scan import SandboxIndex, SourceStats, write_indexed
    from tests.redaction_corpus import PEM_BODY, pem

    messages = ["loading tls material", *pem(kind).splitlines(), "sandbox=4f2c started ok"]
    text = "".join(f"2026-12-01T10:00:00.{i:06d}+0000 n1 kata[12]: {m}\n" for i, m in enumerate(messages))
    spool = Spool()
    write_indexed(Redactor().stream().feed(text.encode()), spool, SandboxIndex(), "journal.log", SourceStats("j"))
    reader, size, _ = spool.tail()
    out = reader.read(size).decode()
    spool.close()
    assert not [b for b in PEM_BODY if b in out], out
    assert "loading tls material" in out and "started ok" in out


@pytest.mark.parametrize("cut", range(1, 4))
def test_a_key_split_by_rotation_or_cut_by_the_size_cap_is_masked_in_every_file(tmp_path: Any, cut: int) -> None:
    """The rotated `.1` ends inside a key and the live file starts inside it; with a cap the
    copy starts inside it too. Each file is copied through its own stream, as shim-logs does."""
    from kata_debug.bundle.writer import Spool
    from kata_debug.logs.scan import SandboxIndex, SourceStats, copy_log
    from tests.redaction_corpus import PEM_BODY, log, pem

    block = pem().splitlines(keepends=True)
    before = "".join(log(f"line {i}") for i in range(50))
    (tmp_path / "kata.log.1").write_text(before + "".join(block[: cut + 1]))
    (tmp_path / "kata.log").write_text("".join(block[cut + 1 :]) + log("after rotation"))
    outs = []
    body_in_rotated = len("".join(block[1 : cut + 1]))  # the cap starts the copy at the first body line
    for name, cap in (("kata.log.1", 1 << 20), ("kata.log", 1 << 20), ("kata.log.1", body_in_rotated)):
        spool = Spool()
        with open(tmp_path / name, "rb") as src:
            copy_log(src, cap, spool, SandboxIndex(), name, Redactor().stream(), SourceStats(name))
        reader, size, _ = spool.tail()
        outs.append(reader.read(size).decode())
        spool.close()
    everything = "".join(outs)
    assert not [b for b in PEM_BODY if b in everything], everything
    assert "line 49" in outs[0] and "after rotation" in outs[1] and outs[2] == "***\n"
