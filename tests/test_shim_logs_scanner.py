"""shim-logs on large logs: the scanner process gives exactly what scanning in process gives.

Large log files are redacted and split per sandbox in a separate process (so the bundle's
compressor threads keep their core); these tests hold it to the in-process result byte for
byte, including redaction counts, truncation accounting and the per-sandbox limit.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kata_debug.bundle.deflate_ahead import DeflateAhead, Deflated
from kata_debug.bundle.writer import Spool
from kata_debug.collect.runner import CollectOptions, run_collection
from kata_debug.collectors import shim_logs
from kata_debug.logs import scan_client as logscan_client
from kata_debug.logs.logfmt import parse_line, sandbox_of
from kata_debug.logs.scan import MAX_SANDBOXES, SandboxIndex, sandbox_lines
from kata_debug.logs.scan_client import ScannerGone, ScannerProcess
from kata_debug.redact.redactor import Redactor
from tests.bundles import Bundle, read_bundle
from tests.conftest import REPO
from tests.hostroots import kata_node

PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    + "".join(f"MIIEpAIBAAKCAQEA{i:04d}secretkeymaterial\n" for i in range(40))
    + "-----END RSA PRIVATE KEY-----\n"
)


# -- the per-sandbox index ----------------------------------------------------------------

SANDBOX_FIELD = re.compile(rb'sandbox="?([A-Za-z0-9][A-Za-z0-9_.-]*)')  # `sandbox=<id>` or `sandbox="<id>"`


def reference_index(chunk: bytes) -> dict[str, tuple[int, int, int]]:
    """The rule, one line at a time: (lines, first, last line index) per sandbox id.

    A line naming `sandbox=<id>` (first occurrence) belongs to that sandbox. Then, only if
    the chunk mentions kata-runtime or a JSON "sandbox" key, lines without `sandbox=` are
    parsed (after a journal `ident[pid]: ` prefix) and count for the sandbox they name.
    """
    found: dict[str, list[int]] = {}
    lines = chunk.split(b"\n")
    for i, line in enumerate(lines):
        m = SANDBOX_FIELD.search(line)
        if m:
            found.setdefault(m.group(1).decode(), []).append(i)
    if b"kata-runtime" in chunk or b'"sandbox"' in chunk:
        for i, line in enumerate(lines):
            if b"sandbox=" not in line and (b"kata-runtime" in line or b'"sandbox"' in line):
                # A journal `ident[pid]: ` prefix is what comes before the line's first `{`
                # (a `]: {` further on, after a logfmt line and a bare CR, is not a prefix).
                brace = line.find(b"{")
                text = line[brace:] if brace > 0 and line[:brace].rstrip().endswith(b"]:") else line
                sid = sandbox_of(parse_line(text.decode("utf-8", "replace")))
                if sid:
                    found.setdefault(sid, []).append(i)
    return {sid: (len(at), min(at), max(at)) for sid, at in found.items()}


LINE_SHAPES = [
    b'time="t" level=info msg="up" sandbox=sb-a source=virtcontainers',
    b'level=debug sandbox="sb-b" vmconsole="x"',
    b"sandbox=sb-a and again sandbox=sb-b",
    b'{"msg":"json","sandbox":"sb-json"}',
    b'2026-12-06T00:00:00.000001+0000 node kata[7]: {"msg":"rs","sandbox":"sb-rs"}',
    b"level=info name=kata-runtime source=rs-box msg=hi",
    b"name=kata-runtime source=virtcontainers msg=not-a-sandbox",
    b"nosandbox=sb-c kata-runtime",
    b"sandbox= empty",
    b"plain line",
    b"",
    b"mixed\rsandbox=sb-a\r",
]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(LINE_SHAPES), st.sampled_from([b"\n", b"\n", b"\r\n", b"\r"])), max_size=12),
    st.booleans(),
)
def test_sandbox_lines_are_indexed_exactly_as_read_line_by_line(
    lines: list[tuple[bytes, bytes]], open_end: bool
) -> None:
    chunk = b"".join(text + end for text, end in lines)
    if open_end and lines:
        chunk = chunk.rstrip(b"\r\n")  # the last chunk of a file without a final newline
    newlines, found = sandbox_lines(chunk)
    assert newlines == chunk.count(b"\n")
    assert found == reference_index(chunk)


def test_the_sandbox_limit_counts_what_one_index_would_when_a_scanner_indexed_part() -> None:
    adds = [(f"sb{i % 700}", f"m{i % 3}", i) for i in range(2000)]
    whole = SandboxIndex()
    for sid, member, line in adds:
        whole.add(sid, member, 1, line, line)
    first = SandboxIndex()
    for sid, member, line in adds[:300]:
        first.add(sid, member, 1, line, line)
    rest = SandboxIndex(set(first.known))  # a scanner process, told what the collector indexed
    for sid, member, line in adds[300:]:
        rest.add(sid, member, 1, line, line)
    first.merge(SandboxIndex.from_json(rest.to_json(), rest.overflow, rest.rejected))
    assert len(whole.sandboxes) == MAX_SANDBOXES and whole.overflow > 0
    assert first.to_json() == whole.to_json()


@pytest.mark.parametrize(
    "sid", ["../../etc/passwd", "a/../b", "..", "a..b", "/abs", "x" * 129, "sb-a\x00", "sb a", "."]
)
def test_what_is_not_a_sandbox_id_is_counted_never_indexed(sid: str) -> None:
    index = SandboxIndex()
    index.add(sid, "shim-logs/journal/journal.log", 3, 1, 9)
    assert (index.sandboxes, index.rejected) == ({}, 3)


def test_real_sandbox_ids_are_indexed() -> None:
    index = SandboxIndex()
    for sid in ("a" * 64, "sb-0", "pod_1.test", "x" * 128):
        index.add(sid, "m", 1, 1, 1)
    assert sorted(index.sandboxes) == sorted(["a" * 64, "sb-0", "pod_1.test", "x" * 128]) and index.rejected == 0


# -- small public pieces ------------------------------------------------------------------


def test_an_adopted_file_is_a_spool_with_the_same_newest_lines_cap(tmp_path: Path) -> None:
    path = tmp_path / "out"
    path.write_bytes(b"".join(f"line {i}\n".encode() for i in range(1000)))
    spool = Spool.adopt(open(path, "rb"), max_bytes=100)
    reader, size, dropped = spool.tail()
    kept = reader.read(size)
    assert size <= 100 and kept.endswith(b"line 999\n") and kept.startswith(b"line ")
    assert dropped == path.stat().st_size - size
    spool.close()
    assert reader.closed


def test_counts_from_another_redactor_add_up_in_the_manifest_counts() -> None:
    main = Redactor()
    main.bytes(b"password=a\n")
    other = Redactor()
    other.bytes(b"password=b token=c\nuser https://me:pw@host/ x\n")
    assert (main.counts, other.counts) == ({"secret-value": 1}, {"secret-value": 2, "url-credentials": 1})
    main.add_counts(other.counts)
    assert main.counts == {"secret-value": 3, "url-credentials": 1}


# -- whole collections: in process vs scanner process ---------------------------------------


def _shim_line(rng: random.Random, sids: list[str], n: int) -> str:
    sid = rng.choice(sids)
    kind = n % 9
    if kind == 0:
        return f'time="2026-11-28T10:00:{n % 60:02d}Z" level=error msg="pull failed: Authorization: Bearer tok{n}xyz" sandbox={sid}\n'
    if kind == 1:
        return f'time="2026-11-28T10:00:00Z" level=info msg="registry https://user:pw{n}@registry.example/v2" sandbox={sid}\n'
    if kind == 2:
        return f'{{"msg":"agent","level":"info","sandbox":"{sid}","password":"pw-json-{n}"}}\n'
    if kind == 3:
        return f'level=info name=kata-runtime source={sid} msg="runtime-rs line {n}"\n'
    if kind == 4:
        return f'time="t" level=info msg="container started" id={n:032x} namespace=k8s.io\n'
    return f'time="t" level=debug msg="reading guest console" pid={n} sandbox={sid} vmconsole="[ {n}.0] virtio_blk"\n'


def _write_logs(root: Path, sids: list[str], sizes: list[int], seed: int = 7) -> list[Path]:
    rng = random.Random(seed)
    paths = []
    for i, (rel, size) in enumerate(zip(shim_logs.LOG_FILES, sizes)):
        path = root / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        with path.open("w") as fh:
            written = 0
            while written < size:
                line = _shim_line(rng, sids, n)
                if n % 5000 == 4999:  # a private key, sometimes across a 1 MiB read boundary
                    line += PEM
                fh.write(line)
                written += len(line)
                n += 1
            if i == 1:
                fh.write(f"last line without newline sandbox={sids[0]} token=tail-secret")
        paths.append(path)
    return paths


async def _collect(
    root: Path, out: Path, scanner: bool, monkeypatch: pytest.MonkeyPatch, **kw: Any
) -> tuple[Bundle, list[str]]:
    """Collect shim-logs in process or with the scanner; says what went through the scanner and
    which members were deflated ahead ("scanner", then "file:<i>" / "sandbox:<id>")."""
    started: list[str] = []
    real_start = ScannerProcess.start.__func__  # type: ignore[attr-defined]
    real_finish = DeflateAhead.finish

    async def spy_start(cls: type[ScannerProcess]) -> ScannerProcess | None:
        proc = await real_start(cls)
        started.append("scanner" if proc else "none")
        return proc

    async def spy_finish(self: DeflateAhead, key: Any, path: str, size: int) -> Deflated:
        deflated = await real_finish(self, key, path, size)
        started.append(f"{key[0]}:{key[1]}")
        return deflated

    with monkeypatch.context() as m:
        m.setattr(shim_logs, "SCANNER_MIN_BYTES", 0 if scanner else 1 << 62)
        m.setattr(logscan_client, "PROGRESS_EVERY", 1)  # say how far it got after every chunk
        m.setattr(ScannerProcess, "start", classmethod(spy_start))
        m.setattr(DeflateAhead, "finish", spy_finish)
        kw.setdefault("since", timedelta(days=36500))  # the fixture lines' fixed dates are always in the window
        await run_collection(CollectOptions(host_root=root, output=str(out), collectors=["shim-logs"], **kw))
    return read_bundle(out), started


def _comparable(bundle: Bundle) -> dict[str, Any]:
    members = {k: v for k, v in bundle.members.items() if k not in ("manifest.json", "shim-logs/summary.json")}
    summary = bundle.json("shim-logs/summary.json")
    summary.pop("since")
    shim = bundle.collector("shim-logs")
    shim.pop("duration_s")
    files = [f for f in bundle.manifest["files"] if f["path"] != "shim-logs/summary.json"]
    return {
        "members": members,
        "summary": summary,
        "collector": shim,
        "redactions": bundle.manifest["redactions"],
        "files": files,
    }


async def test_large_logs_scanned_out_of_process_give_the_same_bundle_as_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = kata_node(tmp_path / "host")
    sids = [f"{i:08x}{'ab' * 28}" for i in range(40)]
    _write_logs(root, sids, [3 << 20, (3 << 20) + 12345, 1 << 20])
    here, none = await _collect(root, tmp_path / "in.tgz", False, monkeypatch, max_log_bytes=5 << 20)
    there, started = await _collect(root, tmp_path / "out.tgz", True, monkeypatch, max_log_bytes=5 << 20)
    assert none == [] and started == ["scanner", "file:0", "file:1", "file:2"]
    assert _comparable(there) == _comparable(here)
    raw = b"".join(there.members.values())
    for secret in (b"secretkeymaterial", b"tok4999xyz", b":pw10@", b"pw-json-2", b"tail-secret"):
        assert secret not in raw
    counts = there.manifest["redactions"]
    assert counts["pem-private-key"] >= 2 and counts["auth-header"] > 100 and counts["url-credentials"] > 100
    assert there.json("shim-logs/summary.json")["sandboxes"] == sorted(sids)
    # the index points at every sandbox's lines; the unterminated last line of a file counts
    member = f"shim-logs/files{shim_logs.LOG_FILES[1]}"
    at = there.json("shim-logs/sandboxes.json")["sandboxes"][sids[0]][member]
    lines = there.members[member].split(b"\n")
    assert lines[at["last_line"] - 1] == f"last line without newline sandbox={sids[0]} token=***".encode()
    assert sids[0].encode() in lines[at["first_line"] - 1]
    assert at["lines"] == sum(1 for ln in lines if sids[0].encode() in ln), "as `grep -c -F <id>` counts"


async def test_capped_logs_out_of_process_keep_the_same_newest_lines_and_truncation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = kata_node(tmp_path / "host")
    sids = ["sb-0"]
    paths = _write_logs(root, sids, [2 << 20, 2 << 20])
    here, _ = await _collect(root, tmp_path / "in.tgz", False, monkeypatch, max_log_bytes=700_000)
    there, started = await _collect(root, tmp_path / "out.tgz", True, monkeypatch, max_log_bytes=700_000)
    assert started == ["scanner", "file:0", "file:1"]
    assert _comparable(there) == _comparable(here)
    truncated = there.collector("shim-logs")["truncated"]
    name = f"shim-logs/files{shim_logs.LOG_FILES[0]}"
    source = paths[0].read_bytes()
    skipped = truncated[name]
    assert source[skipped - 1 : skipped] == b"\n" and len(source) - skipped <= 700_000 < len(source) - skipped + 300
    assert Redactor().stream().feed(source[skipped:]) == there.members[name]


async def test_more_sandboxes_than_the_limit_are_counted_the_same_out_of_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = kata_node(tmp_path / "host")
    sids = [f"sb-{i:04d}" for i in range(MAX_SANDBOXES + 90)]
    _write_logs(root, sids, [600_000, 600_000])
    here, _ = await _collect(root, tmp_path / "in.tgz", False, monkeypatch)
    there, started = await _collect(root, tmp_path / "out.tgz", True, monkeypatch)
    assert started == ["scanner", "file:0", "file:1"]
    assert _comparable(there) == _comparable(here)
    summary = there.json("shim-logs/summary.json")
    assert len(summary["sandboxes"]) == MAX_SANDBOXES and summary["sandboxes_not_indexed_lines"] > 0


# -- the scanner process itself -------------------------------------------------------------


def _scanner_pid() -> int:
    (child,) = [c for c in psutil.Process().children() if "kata_debug.logs.scan_worker" in " ".join(c.cmdline())]
    return child.pid


async def test_a_log_that_cannot_be_read_fails_alone_with_the_reason_in_process_reading_gives(tmp_path: Path) -> None:
    good = tmp_path / "good.log"
    good.write_bytes(b"level=info sandbox=sb-a msg=x\n")
    unreadable = open(tmp_path / "write-only.log", "wb")  # a descriptor that cannot be read
    unreadable.write(b"level=info sandbox=sb-b msg=y\n")
    unreadable.flush()
    with pytest.raises(OSError) as in_process:
        os.read(unreadable.fileno(), 1)
    scanner = await ScannerProcess.start()
    assert scanner is not None
    try:
        with unreadable, good.open("rb") as fh:
            await scanner.send([(unreadable, 1 << 20, "gone"), (fh, 1 << 20, "good")], known=[], redact=True)
        gone, ok = await scanner.next_file(), await scanner.next_file()
        await scanner.finish()
        assert (gone.error, gone.output, gone.lines) == (in_process.value.strerror, None, 0)
        assert ok.error is None and ok.output is not None and ok.lines == 1
        assert Path(ok.output).read_bytes() == good.read_bytes()
        assert ok.index.to_json() == {"sb-a": {"good": {"lines": 1, "first_line": 1, "last_line": 1}}}
    finally:
        await scanner.close()


async def test_a_scanner_that_dies_is_reported_not_waited_for(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"level=info sandbox=sb-a msg=x\n" * 1000)
    scanner = await ScannerProcess.start()
    assert scanner is not None
    try:
        os.kill(_scanner_pid(), signal.SIGKILL)
        with pytest.raises(ScannerGone, match="exited with code -9"), log.open("rb") as fh:
            await scanner.send([(fh, 1 << 30, "a")], known=[], redact=True)
            await scanner.next_file()
    finally:
        await scanner.close()
    assert not Path(scanner.workdir).exists()


async def test_ctrl_c_in_the_terminal_leaves_the_decision_to_the_collector(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"level=info sandbox=sb-a msg=x token=t0p\n" * 1000)
    scanner = await ScannerProcess.start()
    assert scanner is not None
    try:
        pid = _scanner_pid()
        for _ in range(200):  # until it has started up and ignores SIGINT (bit 2 of SigIgn)
            sig_ign = next(
                ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("SigIgn:")
            )
            if int(sig_ign.split()[1], 16) & (1 << (signal.SIGINT - 1)):
                break
            await asyncio.sleep(0.05)
        os.kill(pid, signal.SIGINT)
        with log.open("rb") as fh:
            await scanner.send([(fh, 1 << 30, "a")], known=[], redact=True)
        result = await scanner.next_file()
        await scanner.finish()
        assert (result.lines, result.error, result.redactions) == (1000, None, {"secret-value": 1000})
        assert result.output is not None
        spool = await scanner.adopt(result.output)
        reader, size, _ = spool.tail()
        assert reader.read(size) == b"level=info sandbox=sb-a msg=x token=***\n" * 1000
        spool.close()
        assert not Path(result.output).exists()  # adopted: the spool owns it now
    finally:
        await scanner.close()


def test_a_scanner_whose_collector_died_removes_its_files(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"level=info sandbox=sb-a msg=x\n" * 100_000)
    workdir = tmp_path / "scan"
    workdir.mkdir()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen(
        [sys.executable, "-S", "-P", "-m", "kata_debug.logs.scan_worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + logscan_client._RE2_ROOT},
        pass_fds=(theirs.fileno(),),
    )
    assert proc.stdin and proc.stdout
    proc.stdout.close()  # the reading end is gone, as when the collector is SIGKILLed
    job = {
        "redact": True,
        "dir": str(workdir),
        "known": [],
        "progress_every": 1 << 20,
        "fds": theirs.fileno(),
        "files": [{"cap": 1 << 30, "member": "a"}],
    }
    proc.stdin.write(json.dumps(job).encode() + b"\n")
    proc.stdin.close()
    with ours, theirs, log.open("rb") as fh:
        socket.send_fds(ours, [b"f"], [fh.fileno()])
    assert proc.wait(timeout=60) == 1
    assert proc.stderr is not None and proc.stderr.read() == b""
    assert not workdir.exists()


def test_the_scanner_runs_without_site_packages() -> None:
    """It starts with -S: everything it imports must be this package, the standard library or
    RE2 (redaction's prefilter), which the client puts on its path by itself."""
    code = "import sys, kata_debug.logs.scan_worker; print(sorted(m.split('.')[0] for m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + logscan_client._RE2_ROOT},
    ).stdout.decode()
    stdlib = set(sys.stdlib_module_names) | {"kata_debug", "__main__", "re2", "_re2"}
    assert set(eval(out)) <= stdlib, set(eval(out)) - stdlib
    assert logscan_client._IMPORT_ROOT == str(REPO)


async def test_a_sandbox_in_the_journal_and_in_a_scanned_file_is_indexed_in_both(
    journald: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = uuid.uuid4().hex
    subprocess.run(
        ["systemd-cat", "-t", "kata"],
        input=f"msg=from-journal sandbox={sid} password=jpw\n".encode(),
        check=True,
        timeout=10,
    )
    subprocess.run(["journalctl", "--sync"], capture_output=True, timeout=30)
    root = kata_node(tmp_path / "host")
    journal_src = next(d for d in (Path("/run/log/journal"), Path("/var/log/journal")) if any(d.glob("*/*.journal")))
    for f in journal_src.glob("*/*.journal"):
        dest = root / "var/log/journal" / f.parent.name / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(f.read_bytes())
    log = root / shim_logs.LOG_FILES[0].lstrip("/")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(f"msg=from-file-{i} sandbox={sid} token=fpw\n" for i in range(20000)))
    # Both collections start their window at the same instant: they run seconds apart, and a
    # window relative to each one's own "now" let other tests' journal lines age out in between.
    edge = datetime.now(UTC) - timedelta(minutes=10)
    here, _ = await _collect(root, tmp_path / "in.tgz", False, monkeypatch, since=datetime.now(UTC) - edge)
    there, started = await _collect(root, tmp_path / "out.tgz", True, monkeypatch, since=datetime.now(UTC) - edge)
    assert started[:2] == ["scanner", "file:0"]
    assert there.json("shim-logs/sandboxes.json") == here.json("shim-logs/sandboxes.json")
    members = there.json("shim-logs/sandboxes.json")["sandboxes"][sid]
    journal, file = "shim-logs/journal/journal.log", f"shim-logs/files{shim_logs.LOG_FILES[0]}"
    assert list(members) == [journal, file], "journal first, then the files, as they are read"
    assert members[file] == {"lines": 20000, "first_line": 1, "last_line": 20000}
    line = there.members[journal].split(b"\n")[members[journal]["first_line"] - 1].decode()
    assert line.endswith(f"msg=from-journal sandbox={sid} password=***")


async def test_a_zstd_bundle_gets_the_same_logs_from_the_scanner_without_deflating_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = kata_node(tmp_path / "host")
    _write_logs(root, [f"sb-{i}" for i in range(5)], [1 << 20, 1 << 20])
    here, _ = await _collect(root, tmp_path / "in.tgz", False, monkeypatch)
    there, started = await _collect(root, tmp_path / "out.tar.zst", True, monkeypatch, compression="zstd")
    assert started == ["scanner"]  # nothing deflated ahead: zstd compresses on its own
    assert _comparable(there) == _comparable(here)


def _dated_log(tmp_path: Path) -> tuple[Path, Path, Callable[[int, str], str]]:
    """A node root, its first containerd log file's path (directory made), and a maker of log
    entries stamped `hours` before now (naming sandbox `sb-<hours>`)."""
    root = kata_node(tmp_path / "host")
    log = root / shim_logs.LOG_FILES[0].lstrip("/")
    log.parent.mkdir(parents=True)
    now = datetime.now(UTC)

    def entry(hours: int, what: str) -> str:
        stamp = (now - timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return f'time="{stamp}" level=info msg="{what}" sandbox=sb-{hours}\n'

    return root, log, entry


@pytest.mark.parametrize("scanner", [False, True], ids=["in process", "scanner process"])
async def test_log_files_are_bounded_by_since_and_that_is_not_truncation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scanner: bool
) -> None:
    root, log, entry = _dated_log(tmp_path)
    lines = [
        entry(hours, what)
        for hours, what in ((72, "three days ago"), (30, "yesterday morning"), (1, "an hour ago"), (0, "just now"))
    ]
    log.write_text("".join(lines) + "  panic: continuation of just now\n")
    bundle, _ = await _collect(root, tmp_path / "b.tgz", scanner, monkeypatch, since=timedelta(hours=24))
    name = f"shim-logs/files{shim_logs.LOG_FILES[0]}"
    assert bundle.members[name] == ("".join(lines[2:]) + "  panic: continuation of just now\n").encode()
    assert name not in bundle.collector("shim-logs")["truncated"], "not asked for is not cut"
    assert bundle.json("shim-logs/summary.json")["sandboxes"] == ["sb-0", "sb-1"]


@pytest.mark.parametrize("scanner", [False, True], ids=["in process", "scanner process"])
async def test_rotated_log_files_within_since_come_too_oldest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scanner: bool
) -> None:
    root, log, entry = _dated_log(tmp_path)
    Path(f"{log}.3").write_text(entry(80, "long gone"))
    Path(f"{log}.2").write_text(entry(30, "before the window") + entry(5, "rotated twice"))
    Path(f"{log}.1").write_text(entry(2, "rotated once"))
    Path(f"{log}.2.gz").write_bytes(b"\x1f\x8b not read")
    log.write_text(entry(1, "live"))
    bundle, _ = await _collect(root, tmp_path / "b.tgz", scanner, monkeypatch, since=timedelta(hours=24))
    base = f"shim-logs/files{shim_logs.LOG_FILES[0]}"
    files = [m for m in bundle.members if m.startswith(base)]
    assert files == [f"{base}.2", f"{base}.1", base], "all older than --since: left out; .gz: not read"
    assert bundle.members[f"{base}.2"] == entry(5, "rotated twice").encode()
    sources = [s["source"] for s in bundle.json("shim-logs/summary.json")["sources"] if s["source"].startswith("file:")]
    assert sources == [
        f"file:{shim_logs.LOG_FILES[0]}.2",
        f"file:{shim_logs.LOG_FILES[0]}.1",
        f"file:{shim_logs.LOG_FILES[0]}",
    ]


# -- issue 9 regressions ---------------------------------------------------------------------


async def test_a_path_for_a_sandbox_id_in_one_line_is_counted_and_the_rest_collected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = kata_node(tmp_path / "host")
    log = root / shim_logs.LOG_FILES[0].lstrip("/")
    log.parent.mkdir(parents=True)
    log.write_text(
        'level=info sandbox=sb-good msg="fine"\n'
        '{"msg":"evil","sandbox":"../../../etc/cron.d/x"}\n'
        'level=info sandbox=sb-good msg="still fine"\n'
    )
    bundle, _ = await _collect(root, tmp_path / "b.tgz", False, monkeypatch)
    assert bundle.collector("shim-logs")["status"] == "ok"
    index = bundle.json("shim-logs/sandboxes.json")
    assert list(index["sandboxes"]) == ["sb-good"] and index["lines_with_invalid_sandbox_ids"] == 1
    assert b"../../../etc/cron.d/x" in bundle.members[f"shim-logs/files{shim_logs.LOG_FILES[0]}"], "the line is kept"


@pytest.mark.parametrize("scanner", [False, True], ids=["in process", "scanner process"])
async def test_a_log_file_that_is_there_but_cannot_be_read_makes_the_collector_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scanner: bool
) -> None:
    root = kata_node(tmp_path / "host")
    good = root / shim_logs.LOG_FILES[0].lstrip("/")
    good.parent.mkdir(parents=True)
    good.write_text("level=info sandbox=sb-a msg=x\n")
    bad = root / shim_logs.LOG_FILES[4].lstrip("/")  # /var/log/crio.log
    os.mkfifo(bad)  # tests run as root: a mode of 000 would not stop a read
    bundle, _ = await _collect(root, tmp_path / "b.tgz", scanner, monkeypatch)
    entry = bundle.collector("shim-logs")
    assert entry["status"] == "partial"
    assert entry["items_failed"] == [{"item": shim_logs.LOG_FILES[4], "reason": "not a regular file"}]
    assert f"shim-logs/files{shim_logs.LOG_FILES[0]}" in bundle.members


async def test_the_scanner_directory_is_removed_however_the_collection_is_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    for delay in (0.0, 0.001, 0.005, 0.02, 0.05, 0.1):
        task = asyncio.ensure_future(ScannerProcess.start())
        await asyncio.sleep(delay)
        task.cancel()
        try:
            scanner = await task
        except asyncio.CancelledError:
            scanner = None
        if scanner is not None:
            close = asyncio.ensure_future(scanner.close())
            await asyncio.sleep(0)
            close.cancel()
            with pytest.raises(asyncio.CancelledError):
                await close
    assert list(scratch.glob("kata-debug-scan-*")) == []


def _journal_lines(lines: list[str], ident: str) -> None:
    subprocess.run(["systemd-cat", "-t", ident], input="".join(lines).encode(), check=True, timeout=30)
    subprocess.run(["journalctl", "--sync"], capture_output=True, timeout=30)


async def test_a_key_block_cut_by_the_cap_when_read_newest_first_is_masked_whole(
    journald: None, tmp_path: Path
) -> None:
    """journalctl --reverse stops at the cap inside a PEM block: its orphan body must not leak."""
    from kata_debug.logs.journal import forward_blocks, journalctl_argv, lead_in_forward, read_reverse

    run = uuid.uuid4().hex[:8]
    ident = f"kata-test-{run}"
    # base64 lines, as a key's are (the run's hex keeps them apart from earlier runs' lines)
    body = [f"MIIEpAIBAAKCAQEA{i:04d}secretkeymaterial{run}\n" for i in range(40)]
    _journal_lines(["-----BEGIN RSA PRIVATE KEY-----\n", *body, "-----END RSA PRIVATE KEY-----\n", "after\n"], ident)
    since = datetime.now(UTC) - timedelta(minutes=10)
    argv = journalctl_argv("/", since, [ident], kernel=False)
    # journald may still be taking in the stream after --sync: wait for all 43 lines
    deadline = time.monotonic() + 20
    while True:
        whole = await read_reverse(argv, 1 << 30, 60)
        assert whole.file is not None and not whole.capped
        text = b"".join(forward_blocks(whole.file, whole.size))
        if text.count(b"\n") >= 43 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert text.count(b"\n") == 43 and text.index(b"BEGIN") < text.index(b"END") < text.index(b"after")
    # cap in the middle of the key: the newest half of the body, END and "after" are kept
    cap = len(text) - text.index(f"{20:04d}secretkeymaterial".encode()) + 80
    cut = await read_reverse(argv, cap, 60)
    assert cut.file is not None and cut.capped and cut.cut > 0
    kept = b"".join(forward_blocks(cut.file, cut.size))
    assert b"BEGIN" not in kept and kept.endswith(b"after\n") and b"secretkeymaterial" in kept
    assert b"BEGIN" in lead_in_forward(cut) and b"after" not in lead_in_forward(cut)
    stream = Redactor().stream()
    stream.feed(lead_in_forward(cut))  # what the collector does before the kept entries
    redacted = stream.feed(kept)
    assert b"secretkeymaterial" not in redacted and redacted.endswith(b"after\n")


# -- logs are read through the descriptor that was measured ---------------------------------


@pytest.mark.parametrize("scanner", [False, True], ids=["in process", "scanner process"])
async def test_a_log_swapped_for_an_outside_link_after_it_was_measured_is_read_as_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scanner: bool
) -> None:
    """Between measuring a log and copying it, every log (a runtime's, a rotation, a filtered
    syslog, the kubelet's) becomes a symlink to a file outside the host root: what is stored
    is the node's content as it was opened, never the outside file's."""
    root = kata_node(tmp_path / "host")
    outside = tmp_path / "outside-secret"
    outside.write_text("OUTSIDE level=info sandbox=sb-out msg=leak\n" * 100)
    logs = {
        shim_logs.LOG_FILES[0]: "level=info sandbox=sb-live msg=inside-live\n",
        shim_logs.LOG_FILES[0] + ".1": "level=info sandbox=sb-rot msg=inside-rotated\n",
        "/var/log/syslog": "Nov 28 10:00:00 node kernel: inside-syslog\n",
        "/var/log/kubelet.log": "I1128 10:00:00.000000    1 kubelet.go:1] inside-kubelet\n",
    }
    for node_path, text in logs.items():
        path = root / node_path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text * 50)
    real_log_files = shim_logs._log_files
    swapped: list[str] = []

    def measure_then_swap(*args: Any) -> Any:
        found = real_log_files(*args)
        for f in found[0]:
            path = root / f.path.lstrip("/")
            path.unlink()
            path.symlink_to(outside)
            swapped.append(f.path)
        return found

    monkeypatch.setattr(shim_logs, "_log_files", measure_then_swap)
    bundle, started = await _collect(root, tmp_path / "b.tgz", scanner, monkeypatch)
    assert sorted(swapped) == sorted(logs)
    assert started == (["scanner", "file:0", "file:1", "file:2", "file:3"] if scanner else [])
    raw = b"".join(bundle.members.values())
    assert b"OUTSIDE" not in raw and b"sb-out" not in raw
    for marker in ("inside-live", "inside-rotated", "inside-syslog", "inside-kubelet"):
        assert marker.encode() in raw, marker
    assert bundle.collector("shim-logs")["status"] == "ok"


async def test_rotations_past_the_newest_few_are_named_not_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every log read is held open from measuring to copying: a node with endless `.N`
    rotations gets its newest MAX_ROTATIONS read and the rest named as not read."""
    monkeypatch.setattr(shim_logs, "MAX_ROTATIONS", 3)
    root = kata_node(tmp_path / "host")
    live = root / shim_logs.LOG_FILES[0].lstrip("/")
    live.parent.mkdir(parents=True)
    live.write_text("level=info sandbox=sb-live msg=rotation-live\n")
    for n in range(1, 6):  # .5 is the oldest
        live.with_name(f"{live.name}.{n}").write_text(f"level=info sandbox=sb-{n} msg=rotation-{n}\n")
    bundle, _ = await _collect(root, tmp_path / "b.tgz", False, monkeypatch)
    stored = {name.rsplit("/", 1)[-1] for name in bundle.members if "/files/" in name}
    assert stored == {live.name, f"{live.name}.1", f"{live.name}.2", f"{live.name}.3"}
    entry = bundle.collector("shim-logs")
    assert entry["status"] == "partial"
    assert entry["items_failed"] == [
        {"item": f"{shim_logs.LOG_FILES[0]}.*", "reason": "2 older rotations not read (the newest 3 are)"}
    ]
