"""`kata-debug report`: a bundle as one HTML page, checked the way a maintainer reads it: in a
real headless Chromium, offline, from a bundle `collect` wrote from a synthetic Kata node.

Screenshots are written under the test's tmp dir (pytest keeps the last runs' dirs) and
copied to `$KATA_DEBUG_ARTIFACTS` when it is set, for a person to look at.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import uuid
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from kata_debug.collect.runner import CollectOptions, run_collection
from kata_debug.collectors.base import CollectorOptions
from kata_debug.forwarder.file_sink import FileSink
from kata_debug.forwarder.spans import Origin
from kata_debug.report import gather, write_report
from tests.agent_wire import sample_span
from tests.bundles import read_bundle
from tests.chromium import chromium
from tests.conftest import kata_debug
from tests.hostroots import add_task, kata_node, oci_spec

SB1 = "sb0123456789"
SB2 = "sb9876543210"
#: A log line written by whoever controls a process's output: must stay text on the page.
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"><a href="https://example.com/x">x</a>'
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def _ts(second: float) -> str:
    t = datetime(2026, 12, 5, 10, 0, 0, tzinfo=UTC) + timedelta(seconds=second)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def _containerd_log(extra: list[str] | None = None) -> list[str]:
    """containerd's own log as k3s writes it, Kata shim lines included."""
    return [
        f'time="{_ts(0)}" level=info msg="RunPodSandbox for &PodSandboxMetadata{{Name:web-0,Uid:u1,Namespace:default,Attempt:0,}}" sandbox id "{SB1}"',
        f'time="{_ts(0.1)}" level=info msg="starting sandbox" sandbox={SB1} source=virtcontainers subsystem=sandbox name=containerd-shim-v2',
        f'time="{_ts(0.4)}" level=debug msg="reading guest console" sandbox={SB1} source=virtcontainers subsystem=sandbox vmconsole="[    0.000000] Linux version 6.1.62"',
        f'time="{_ts(0.5)}" level=debug msg="reading guest console" sandbox={SB1} source=virtcontainers subsystem=sandbox vmconsole="[    0.912000] kata-agent started"',
        f'time="{_ts(1.0)}" level=warning msg="hot-plug memory took 800ms" sandbox={SB1} source=virtcontainers name=containerd-shim-v2',
        f'time="{_ts(2.0)}" level=error msg="{HOSTILE.replace(chr(34), chr(92) + chr(34))}" sandbox={SB1} source=virtcontainers name=containerd-shim-v2',
        f'time="{_ts(3.0)}" level=info msg="starting sandbox" sandbox={SB2} source=virtcontainers name=containerd-shim-v2',
        f'time="{_ts(3.5)}" level=error msg="failed to create shim task: hypervisor start: no such file or directory" sandbox={SB2} source=virtcontainers name=containerd-shim-v2',
        f'time="{_ts(4.0)}" level=info msg="a line about no sandbox at all"',
        *(extra or []),
    ]


def _spool(root: Path, sandbox: str, spans: int) -> None:
    """Agent spans, spooled exactly as the forwarder's file sink writes them."""
    origin = Origin.make(sandbox, "test", (("service.name", "kata-agent"),), (("kata.sandbox.id", sandbox),))
    sink = FileSink(root / "var/lib/kata-debug/traces/spans.jsonl", max_bytes=8 << 20, backups=1)
    for i in range(spans):
        assert sink.export([(sample_span(i), origin)])
    sink.shutdown()


def _node(root: Path, extra_log: list[str] | None = None) -> Path:
    kata_node(root, SB1)
    add_task(root, "k8s.io", SB2, oci_spec(ctype="sandbox", sandbox_id=SB2, quota=100000, memory=256 * 2**20))
    (root / "var/log").mkdir(parents=True, exist_ok=True)
    (root / "var/log/containerd.log").write_text("\n".join(_containerd_log(extra_log)) + "\n")
    _spool(root, SB1, 4)
    return root


async def _collect(root: Path, out: Path) -> Path:
    await run_collection(
        CollectOptions(
            host_root=root,
            output=str(out),
            since=timedelta(days=3650),
            options=CollectorOptions(trace_spool_dir="/var/lib/kata-debug/traces"),
        )
    )
    return out


@pytest.fixture(scope="module")
def node_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("report-node")
    return asyncio.run(_collect(_node(base / "host"), base / "node.tar.gz"))


def _expected_entries(bundle: Path) -> dict[str, int]:
    """Per sandbox: the raw log lines naming it plus its spans, counted from the bundle itself."""
    b = read_bundle(bundle)
    logs = [p for p in b.members if p.startswith("shim-logs/") and "/sandboxes/" not in p and not p.endswith(".json")]
    out: dict[str, int] = {}
    for sid in (SB1, SB2):
        lines = sum(1 for p in logs for line in b.members[p].decode().splitlines() if sid in line)
        spans = 0
        for p in b.members:
            if p.startswith("agent-traces/spans.jsonl"):
                for line in b.members[p].decode().splitlines():
                    req = json.loads(line)
                    for rs in req["resourceSpans"]:
                        attrs = {a["key"]: a["value"].get("stringValue") for a in rs["resource"]["attributes"]}
                        if attrs.get("kata.sandbox.id") == sid:
                            spans += sum(len(ss["spans"]) for ss in rs["scopeSpans"])
        out[sid] = lines + spans
    return out


class _Page(HTMLParser):
    """The page's contract elements, read without a browser."""

    def __init__(self) -> None:
        super().__init__()
        self.sandboxes: list[str] = []
        self.entries: list[dict[str, str | None]] = []
        self.findings: list[dict[str, str | None]] = []
        self.tags: list[str] = []
        self.csp: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "section" and a.get("class") == "sandbox":
            self.sandboxes.append(str(a.get("data-sandbox")))
        if tag == "li" and "data-kind" in a:
            self.entries.append({**a, "sandbox": self.sandboxes[-1] if self.sandboxes else None})
        if tag == "article" and a.get("class") == "finding":
            self.findings.append(a)
        if tag == "meta" and a.get("http-equiv") == "Content-Security-Policy":
            self.csp = a.get("content")


def _parse(path: Path) -> _Page:
    p = _Page()
    p.feed(path.read_text())
    return p


# -- the page as HTML ----------------------------------------------------------------------


def test_every_sandbox_gets_a_section_and_every_line_naming_it_an_entry(node_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    done = write_report(node_bundle, out)
    page = _parse(out)
    assert sorted(page.sandboxes) == [SB1, SB2]
    expected = _expected_entries(node_bundle)
    assert expected[SB1] == 6 + 4 and expected[SB2] == 2
    for sid, n in expected.items():
        assert sum(1 for e in page.entries if e["sandbox"] == sid) == n, sid
    assert done.sandboxes == 2 and done.entries == sum(expected.values())
    kinds = {e["data-kind"] for e in page.entries if e["sandbox"] == SB1}
    assert kinds == {"log", "console", "span", "event"}
    assert all(RFC3339.match(str(e["data-ts"])) for e in page.entries)
    sb1 = [e for e in page.entries if e["sandbox"] == SB1]
    assert [e["data-ts"] for e in sb1] == sorted(str(e["data-ts"]) for e in sb1), "the timeline is merged by time"
    assert {e["data-level"] for e in sb1 if e["data-kind"] == "log"} >= {"error", "warning", "info"}


def test_the_page_is_self_contained_and_a_log_line_is_text(node_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    write_report(node_bundle, out)
    html = out.read_text()
    page = _parse(out)
    assert page.csp is not None and "default-src 'none'" in page.csp and "unsafe-inline" not in page.csp
    assert page.tags.count("script") == 1 and "img" not in page.tags and "link" not in page.tags
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    assert "https://example.com" not in re.sub(r"<code>.*?</code>", "", html), "bundle text only inside <code>"
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html)


def test_the_kata_version_row_says_what_the_tools_gave_not_their_record(node_bundle: Path, tmp_path: Path) -> None:
    """A node without kata-runtime/kata-ctl reads "kata-runtime: not installed", not the
    summary's `{'result': ..., 'ran': ...}` record printed as a Python dict."""
    out = tmp_path / "r.html"
    r = kata_debug("report", str(node_bundle), "-o", str(out))
    assert r.returncode == 0, r.stderr
    row = re.search(r"<th>Kata version</th>\s*<td>(.*?)</td>", out.read_text(), re.S)
    assert row is not None
    assert row.group(1) == "kata-runtime: not installed; kata-ctl: not installed"


def test_existing_output_is_replaced_only_with_force(node_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    out.write_text("keep me")
    r = kata_debug("report", str(node_bundle), "-o", str(out))
    assert r.returncode == 2
    assert r.stderr.decode().strip() == f"kata-debug: error: {out}: already exists (use --force to replace it)"
    assert out.read_text() == "keep me"
    r = kata_debug("report", str(node_bundle), "-o", str(out), "--force", "--format", "json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["sandboxes"] == 2 and summary["bytes"] == out.stat().st_size
    assert sorted(_parse(out).sandboxes) == [SB1, SB2]
    assert not list(tmp_path.glob(".*partial")), "no temporary file left behind"


def test_default_output_name_is_the_bundle_name_with_html(node_bundle: Path, tmp_path: Path) -> None:
    r = kata_debug("report", str(node_bundle), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "node.html").exists()
    assert "2 sandbox(es)" in r.stdout.decode()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"not a tarball at all", "not a bundle"),
        (None, "no such file or directory"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, content: bytes | None, problem: str) -> None:
    bundle = tmp_path / "in.tar.gz"
    if content is not None:
        bundle.write_bytes(content)
    r = kata_debug("report", str(bundle), "-o", str(tmp_path / "r.html"))
    assert r.returncode == 2
    err = r.stderr.decode().strip()
    assert err.startswith(f"kata-debug: error: {bundle}: ") and problem in err and "\n" not in err
    assert not (tmp_path / "r.html").exists()


def test_a_tarball_without_manifest_is_not_a_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "x.tar"
    with tarfile.open(bundle, "w") as tar:
        info = tarfile.TarInfo("top/notes.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    r = kata_debug("report", str(bundle), "-o", str(tmp_path / "r.html"))
    assert r.returncode == 2 and "no manifest.json" in r.stderr.decode()


def test_an_extracted_bundle_directory_reads_like_the_tarball(node_bundle: Path, tmp_path: Path) -> None:
    with tarfile.open(node_bundle) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    a, b = gather(node_bundle), gather(tmp_path / "x")
    assert [(s.id, len(s.entries), len(s.spans)) for n in a.nodes for s in n.sandboxes] == [
        (s.id, len(s.entries), len(s.spans)) for n in b.nodes for s in n.sandboxes
    ]


def test_past_the_cap_lines_are_counted_and_pointed_at(tmp_path: Path) -> None:
    flood = [
        f'time="{_ts(10 + i / 1000)}" level=info msg="tick {i}" sandbox={SB2} name=containerd-shim-v2'
        for i in range(5000)
    ]
    bundle = asyncio.run(_collect(_node(tmp_path / "host", flood), tmp_path / "b.tar.gz"))
    out = tmp_path / "r.html"
    write_report(bundle, out)
    page = _parse(out)
    shown = sum(1 for e in page.entries if e["sandbox"] == SB2)
    expected = _expected_entries(bundle)[SB2]
    assert expected == 5002 and shown < 1000
    html = out.read_text()
    m = re.search(r"(\d+) more (\S+) entries not shown: <code>([^<]+)</code>", html)
    assert m, "the omission is summarised"
    assert int(m.group(1)) + shown == expected
    assert m.group(3) == "shim-logs/files/var/log/containerd.log"
    sb2 = [e for e in page.entries if e["sandbox"] == SB2]
    assert any(e["data-level"] == "error" for e in sb2), "the error line survives the cap"
    assert "tick 4999" in html, "the newest lines are kept"


def test_findings_from_the_bundle_are_shown_with_evidence_and_fix(node_bundle: Path, tmp_path: Path) -> None:
    with tarfile.open(node_bundle) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    top = next((tmp_path / "x").iterdir())
    (top / "analysis").mkdir(exist_ok=True)  # collect wrote its own findings: replaced here
    finding = {
        "id": "hypervisor-binary-missing",
        "severity": "error",
        "title": "The hypervisor binary <b>is missing</b>",
        "sandbox": SB2,
        "pod": None,
        "evidence": [
            {"path": "shim-logs/files/var/log/containerd.log", "line": 8, "text": "hypervisor start: no such file"}
        ],
        "occurrences": 1,
        "explanation": "qemu is not where the configuration says.",
        "fix": "Install Kata's qemu or fix hypervisor.qemu.path.",
    }
    (top / "analysis/findings.json").write_text(json.dumps({"node": "kata-node-1", "findings": [finding]}))
    out = tmp_path / "r.html"
    write_report(tmp_path / "x", out)
    page = _parse(out)
    assert page.findings == [{"class": "finding", "data-id": "hypervisor-binary-missing", "data-severity": "error"}]
    html = out.read_text()
    assert "The hypervisor binary &lt;b&gt;is missing&lt;/b&gt;" in html
    assert f'href="#sb-{SB2}"' in html and "Install Kata&#x27;s qemu" in html
    assert "shim-logs/files/var/log/containerd.log:8" in html


def _cluster(tmp_path: Path, node_bundle: Path) -> Path:
    """A cluster bundle: the node's own bundle streamed under nodes/<node>/, a pod with events."""
    out = tmp_path / "cluster.tar.gz"
    top = "kata-debug-cluster-test-20261205T100000Z"
    pod = {
        "pod": {"metadata": {"namespace": "default", "name": "web-0", "uid": "u1"}},
        "owners": [],
        "events": [
            {
                "type": "Warning",
                "reason": "FailedCreatePodSandBox",
                "message": "kata: <hostile>",
                "lastTimestamp": _ts(0.2)[:19] + "Z",
            }
        ],
    }
    members = {
        "cluster/pods/default/web-0.json": json.dumps(pod).encode(),
        "nodes/kata-node-1/bundle.tar.gz": node_bundle.read_bytes(),
        "nodes/kata-node-2/bundle.tar.gz.partial": b"\x1f\x8b broken",
        "manifest.json": json.dumps(
            {
                "schema_version": 1,
                "node": None,
                "collectors": [],
                "nodes": [
                    {"name": "kata-node-1", "status": "ok"},
                    {"name": "kata-node-2", "status": "failed", "error": "exec refused"},
                ],
                "files": [],
            }
        ).encode(),
    }
    with tarfile.open(out, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def test_a_cluster_bundle_gives_each_node_bundle_its_own_section(node_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    write_report(_cluster(tmp_path, node_bundle), out)
    html = out.read_text()
    page = _parse(out)
    assert sorted(page.sandboxes) == [SB1, SB2]
    assert 'data-node="kata-node-1"' in html and "exec refused" in html
    assert "nodes/kata-node-1/bundle.tar.gz!/shim-logs/files/var/log/containerd.log" in html
    events = [e for e in page.entries if e["sandbox"] == SB1 and e["data-src"] == "kubernetes"]
    assert len(events) == 1 and events[0]["data-kind"] == "event" and events[0]["data-level"] == "warning"
    assert "kata: &lt;hostile&gt;" in html


# -- the page in a browser -----------------------------------------------------------------

ARTIFACTS = Path(os.environ.get("KATA_DEBUG_ARTIFACTS", "")) if os.environ.get("KATA_DEBUG_ARTIFACTS") else None


async def test_in_chromium_it_loads_offline_counts_match_and_filters_and_search_work(
    node_bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    write_report(node_bundle, out)
    expected = _expected_entries(node_bundle)
    async with chromium(tmp_path / "profile") as browser:
        page = await browser.new_page()
        await page.open(out.as_uri())
        assert page.console_errors() == []
        assert page.requests() == [out.as_uri()], "the page itself and nothing else"
        count = "(sel) => document.querySelectorAll(sel).length"
        assert await page.evaluate(f"({count})('section.sandbox')") == 2
        for sid, n in expected.items():
            assert await page.evaluate(f"({count})('section.sandbox[data-sandbox=\"{sid}\"] li.e')") == n
        total = sum(expected.values())
        visible = "document.querySelectorAll('li.e:not([hidden])').length"
        assert await page.evaluate(visible) == total

        # The hostile line is on the page as text and did nothing.
        assert await page.evaluate("window.__pwned === undefined")
        assert await page.evaluate("document.querySelectorAll('main img, main script').length") == 0
        assert await page.evaluate("document.body.textContent.includes('<script>window.__pwned=1</script>')")

        # Kind filter: console lines go, the rest stay.
        await page.evaluate("document.querySelector('input[data-filter=kind][value=console]').click()")
        assert await page.evaluate("document.querySelectorAll('li.e[data-kind=console]:not([hidden])').length") == 0
        assert await page.evaluate(visible) == total - 2
        await page.evaluate("document.querySelector('input[data-filter=kind][value=console]').click()")
        # Level filter: errors only.
        for level in ("warning", "info", "debug"):
            await page.evaluate(f"document.querySelector('input[data-filter=level][value={level}]').click()")
        assert await page.evaluate(visible) == 2
        assert await page.evaluate(
            "[...document.querySelectorAll('li.e:not([hidden])')].every(e => e.dataset.level === 'error')"
        )
        if ARTIFACTS:
            await page.screenshot(ARTIFACTS / "report-errors-only.png")
        for level in ("warning", "info", "debug"):
            await page.evaluate(f"document.querySelector('input[data-filter=level][value={level}]').click()")
        # Source filter: the agent's spans go.
        await page.evaluate("document.querySelector('input[data-filter=source][value=agent]').click()")
        assert await page.evaluate(visible) == total - 4
        await page.evaluate("document.querySelector('input[data-filter=source][value=agent]').click()")

        # Search: typed into the box, like a user; the other sandbox's section is hidden.
        await page.evaluate("document.getElementById('q').focus()")
        await page.send("Input.insertText", {"text": "hypervisor start"})
        await page.evaluate("new Promise(r => setTimeout(r, 400))")
        assert await page.evaluate(visible) == 1
        hidden = "[...document.querySelectorAll('section.sandbox')].filter(s => s.offsetParent === null).map(s => s.dataset.sandbox)"
        assert await page.evaluate(hidden) == [SB1]
        shot = await page.screenshot(tmp_path / "report-search.png")
        await page.evaluate(
            "document.getElementById('q').value = ''; document.getElementById('q').dispatchEvent(new Event('input'))"
        )
        await page.evaluate("new Promise(r => setTimeout(r, 400))")
        assert await page.evaluate(visible) == total
        top = await page.screenshot(tmp_path / "report.png")
        await page.evaluate(f"document.querySelector('section.sandbox[data-sandbox=\"{SB1}\"]').scrollIntoView()")
        timeline = await page.screenshot(tmp_path / "report-timeline.png")
        assert page.console_errors() == [] and page.requests() == [out.as_uri()]
    for png in (shot, top, timeline):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        if ARTIFACTS:
            shutil.copy(png, ARTIFACTS / png.name)


async def test_in_chromium_csp_blocks_what_escaping_would_miss(tmp_path: Path) -> None:
    """Belt and braces: the page's policy alone stops an injected script and an outside fetch."""
    from kata_debug.report.html import CSP

    page_file = tmp_path / "p.html"
    page_file.write_text(
        f'<!DOCTYPE html><meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<script>window.__ran=1</script><img src="http://127.0.0.1:9/x.png"><p>x</p>'
    )
    async with chromium(tmp_path / "profile") as browser:
        page = await browser.new_page()
        await page.open(page_file.as_uri())
        assert await page.evaluate("window.__ran === undefined")
        await page.evaluate("new Promise(r => setTimeout(r, 300))")
        assert page.blocked() == {"http://127.0.0.1:9/x.png": "csp"}, "refused before it left the browser"
        assert any("Content Security Policy" in e for e in page.console_errors())


def test_journal_lines_land_on_their_sandboxs_timeline_with_identifier_and_level(
    journald: None, tmp_path: Path
) -> None:
    """The real journald: lines `systemd-cat -t kata` wrote, collected from the journal."""
    sid = uuid.uuid4().hex
    lines = [
        f'time="2026-11-28T00:00:01Z" level=info msg="starting sandbox" sandbox={sid} source=virtcontainers',
        f'time="2026-11-28T00:00:02Z" level=debug msg="reading guest console" sandbox={sid} source=virtcontainers vmconsole="[    0.1] Linux"',
        f'time="2026-11-28T00:00:03Z" level=error msg="{sid[:6]} vm start failed" sandbox={sid} source=virtcontainers',
    ]
    subprocess.run(["systemd-cat", "-t", "kata"], input="\n".join(lines).encode() + b"\n", check=True, timeout=10)
    bundle = tmp_path / "b.tar.zst"
    for _ in range(20):  # journald indexes asynchronously
        r = kata_debug("collect", "--output", str(bundle), "-c", "shim-logs", "--since", "10m")
        assert r.returncode == 0, r.stderr
        if f"{sid[:6]} vm start failed".encode() in b"".join(read_bundle(bundle).members.values()):
            break
    out = tmp_path / "r.html"
    write_report(bundle, out)
    page = _parse(out)
    assert sid in page.sandboxes
    mine = [e for e in page.entries if e["sandbox"] == sid]
    assert [(e["data-kind"], e["data-src"], e["data-level"]) for e in mine] == [
        ("log", "kata", "info"),
        ("console", "kata", "debug"),
        ("log", "kata", "error"),
    ]
    assert all(RFC3339.match(str(e["data-ts"])) for e in mine)
    assert "shim-logs/journal/journal.log:" in out.read_text()


@pytest.mark.parametrize("suffix", [".tar.zst", ".tar.gz"])
def test_a_bundle_cut_off_inside_a_log_is_one_line_exit_2(tmp_path: Path, suffix: str) -> None:
    """A truncated download: the stream ends inside a log member's data, not between members."""
    import gzip

    import zstandard

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        log = "".join(f"{_ts(i)} node kata[1]: level=info msg={os.urandom(24).hex()}\n" for i in range(20_000))
        info = tarfile.TarInfo("kata-debug-n-1/shim-logs/journal/journal.log")
        info.size = len(log)
        tar.addfile(info, io.BytesIO(log.encode()))
    data = zstandard.compress(raw.getvalue()) if suffix == ".tar.zst" else gzip.compress(raw.getvalue())
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    r = kata_debug("report", str(cut), "-o", str(tmp_path / "r.html"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.decode().startswith(
        f"kata-debug: error: {cut}: damaged bundle (reading shim-logs/journal/journal.log: "
    ), r.stderr
    assert r.stderr.decode().count("\n") == 1
    assert not (tmp_path / "r.html").exists()
