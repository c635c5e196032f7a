"""`kata-debug report` on what a plain node bundle does not show: captures the node agent
wrote (each its own section, nested in its node, inside a cluster bundle too), bundles
without `analysis/findings.json` (diagnosed from the same single read), and thousands of
sandboxes (a bounded number of sections, the rest listed by id).

Bundles come from the real `collect` over a synthetic Kata node (the `captures` collector
copies the capture tarballs), except the 3000-sandbox one, written member by member.
Screenshots go to the test's tmp dir and to `$KATA_DEBUG_ARTIFACTS` when set.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import shutil
import tarfile
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import IO

import pytest

import kata_debug.bundle.reader as reader
from kata_debug.analyze.diagnose import diagnose
from kata_debug.report import gather, write_report
from kata_debug.report.gather import ANALYZED_HERE, MAX_SANDBOX_SECTIONS
from tests.chromium import chromium
from tests.conftest import kata_debug
from tests.test_report import SB1, SB2, _cluster, _collect, _node, _ts

CAPTURE = "20261205T100003Z-sb98765432.tar.gz"
KVM_LINE = (
    f'time="{_ts(3.2)}" level=error msg="qemu-system-x86_64: Could not access KVM kernel module: '
    f'No such file or directory" sandbox={SB2} source=virtcontainers name=containerd-shim-v2'
)
ARTIFACTS = Path(os.environ["KATA_DEBUG_ARTIFACTS"]) if os.environ.get("KATA_DEBUG_ARTIFACTS") else None


def _tar(out: Path, top: str, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(out, mode) as tar:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def _capture(spool: Path, unredacted_secret: str | None = None) -> None:
    """A capture as the node agent lays it out (`logs/`, `agent-traces/`, manifest with its
    trigger, sidecar record), in the spool the `captures` collector copies from. With
    `unredacted_secret`, an agent running with redaction off wrote it: the failure line
    carries `password=<secret>` and the manifest says `redacted: false`."""
    line = KVM_LINE if unredacted_secret is None else f"{KVM_LINE} password={unredacted_secret}"
    journal = "\n".join(
        [
            f"{_ts(3.0)[:26]}+00:00 kata-node-1 kata[77]: "
            f'time="{_ts(3.0)}" level=info msg="starting sandbox" sandbox={SB2} source=virtcontainers',
            f"{_ts(3.2)[:26]}+00:00 kata-node-1 kata[77]: {line}",
        ]
    )
    trigger = {
        "reason": "error-line",
        "time": _ts(3.2),
        "sandbox": SB2,
        "line": line,
        "pod": "default/db-0",
        "from_copy": [],
        "vanished_during_capture": [],
    }
    manifest = {
        "schema_version": 1,
        "node": "kata-node-1",
        "started_at": _ts(3.3),
        "finished_at": _ts(4.0),
        "redacted": unredacted_secret is None,
        "interrupted": None,
        "trigger": trigger,
        "collectors": [{"name": "logs", "status": "ok"}],
        "files": [],
    }
    directory = spool / "captures"
    directory.mkdir(parents=True, exist_ok=True)
    _tar(
        directory / CAPTURE,
        "kata-debug-kata-node-1-20261205T100003Z",
        {
            "logs/journal.log": journal.encode() + b"\n",
            "logs/files/var_log_containerd.log": (line + "\n").encode(),
            "manifest.json": json.dumps(manifest).encode(),
        },
    )
    record = {k: trigger[k] for k in ("time", "sandbox", "reason", "line", "pod")}
    (directory / CAPTURE.replace(".tar.gz", ".json")).write_text(json.dumps(record))


@pytest.fixture(scope="module")
def capture_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("report-capture")
    root = _node(base / "host")
    _capture(root / "var/lib/kata-debug/traces")
    return asyncio.run(_collect(root, base / "node.tar.gz"))


class _Tree(HTMLParser):
    """Which capture and node each sandbox section, finding and entry sits in."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, dict[str, str | None]]] = []
        self.sandboxes: list[tuple[str | None, str | None, str]] = []  # (node, capture, id)
        self.findings: list[tuple[str | None, str]] = []  # (capture, id)
        self.entries: list[tuple[str | None, str | None]] = []  # (capture, sandbox)
        self.triggers: list[dict[str, str | None]] = []

    def _inside(self, cls: str, attr: str) -> str | None:
        for tag, a in reversed(self.stack):
            if tag == "section" and a.get("class") == cls:
                return a.get(attr)
        return None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.stack.append((tag, a))
            if a.get("class") == "sandbox":
                sid = str(a.get("data-sandbox"))
                self.sandboxes.append((self._inside("node", "data-node"), self._inside("capture", "data-capture"), sid))
        elif tag == "article" and a.get("class") == "finding":
            self.findings.append((self._inside("capture", "data-capture"), str(a.get("data-id"))))
        elif tag == "li" and "data-kind" in a:
            self.entries.append((self._inside("capture", "data-capture"), self._inside("sandbox", "data-sandbox")))
        elif tag == "p" and a.get("class") == "trigger":
            self.triggers.append({**a, "capture": self._inside("capture", "data-capture")})

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.stack.pop()


def _tree(path: Path) -> _Tree:
    t = _Tree()
    t.feed(path.read_text())
    return t


def _without_findings(bundle: Path, out: Path) -> Path:
    """The same bundle as an older version (or `collect` with analysis off) wrote it."""
    with tarfile.open(bundle) as src, tarfile.open(out, "w:gz") as dst:
        for info in src:
            if info.name.endswith("/analysis/findings.json"):
                continue
            dst.addfile(info, src.extractfile(info) if info.isreg() else None)
    return out


# -- captures ----------------------------------------------------------------------------------


def test_a_capture_gets_its_own_section_with_trigger_findings_and_sandbox(capture_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    write_report(capture_bundle, out)
    t = _tree(out)
    # The live sandboxes, outside any capture, and the capture's sandbox inside it: same id.
    assert sorted(s for s in t.sandboxes if s[1] is None) == [("kata-node-1", None, SB1), ("kata-node-1", None, SB2)]
    assert [s for s in t.sandboxes if s[1] is not None] == [("kata-node-1", CAPTURE, SB2)]
    assert [(tr["capture"], tr["data-reason"], tr["data-ts"]) for tr in t.triggers] == [
        (CAPTURE, "error-line", _ts(3.2))
    ]
    html = out.read_text()
    assert "Could not access KVM kernel module" in html and "pod default/db-0" in html
    # Its findings come from the analyzers over the capture's own logs (it has no findings.json).
    assert [f for c, f in t.findings if c == CAPTURE] == ["kvm-unavailable"]
    assert "Could not access KVM kernel module" in html.split(f'data-capture="{CAPTURE}"')[1].split("</article>")[0]
    # Its timeline: the capture's journal and containerd lines about the sandbox.
    assert t.entries.count((CAPTURE, SB2)) == 3
    assert f"captures/{CAPTURE}!/logs/journal.log:2" in html
    assert f'href="#cap-{CAPTURE}-sb-{SB2}"' in html and f'id="cap-{CAPTURE}-sb-{SB2}"' in html
    r = kata_debug("report", str(capture_bundle), "-o", str(tmp_path / "cli.html"), "--format", "json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert (summary["sandboxes"], summary["sandbox_sections"], summary["captures"]) == (2, 2, 1)


def test_a_cluster_bundle_shows_each_node_and_the_captures_in_it(capture_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    write_report(_cluster(tmp_path, capture_bundle), out)
    t = _tree(out)
    assert sorted(t.sandboxes, key=str) == sorted(
        [("kata-node-1", None, SB1), ("kata-node-1", None, SB2), ("kata-node-1", CAPTURE, SB2)], key=str
    )
    html = out.read_text()
    assert html.count('<section class="node"') == 2, "the cluster's own section and kata-node-1's"
    assert f"nodes/kata-node-1/bundle.tar.gz!/captures/{CAPTURE}!/logs/journal.log:2" in html


# -- one pass for bundles without findings.json -------------------------------------------------


class _Counting(io.RawIOBase):
    def __init__(self, inner: IO[bytes], counter: dict[str, int]) -> None:
        self._inner = inner
        self._counter = counter

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buf))
        buf[: len(data)] = data
        self._counter["bytes"] += len(data)
        return len(data)

    def close(self) -> None:
        self._inner.close()
        super().close()


def test_a_bundle_without_findings_is_diagnosed_from_the_one_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _node(tmp_path / "host", [KVM_LINE])
    old = _without_findings(asyncio.run(_collect(root, tmp_path / "b.tar.gz")), tmp_path / "old.tar.gz")
    expected = [f.id for f in diagnose(str(old)).findings]
    assert "kvm-unavailable" in expected, "the KVM line is a finding for diagnose"

    counter = {"opens": 0, "bytes": 0}
    real_open = reader._open_stream

    def counting_open(path: Path) -> IO[bytes]:
        counter["opens"] += 1
        return _Counting(real_open(path), counter)  # type: ignore[return-value]

    def no_second_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("the report read the bundle a second time for diagnose")

    monkeypatch.setattr(reader, "_open_stream", counting_open)
    monkeypatch.setattr("kata_debug.analyze.evidence.read_bundle_evidence", no_second_read)
    monkeypatch.setattr("kata_debug.analyze.diagnose.read_bundle_evidence", no_second_read)
    report = gather(old)
    tar_bytes = len(gzip.decompress(old.read_bytes()))
    assert counter["opens"] == 1, "one decompression pass"
    assert counter["bytes"] <= tar_bytes, "no byte of the tar stream is read twice"
    assert [f.id for f in report.findings] == expected
    assert report.findings_source == ANALYZED_HERE
    out = tmp_path / "r.html"
    write_report(old, out)
    assert f"from {ANALYZED_HERE}" in out.read_text()


def test_findings_json_wins_over_the_analyzers(tmp_path: Path) -> None:
    """A bundle that carries its findings shows those (what collect saw on the node)."""
    root = _node(tmp_path / "host", [KVM_LINE])
    bundle = asyncio.run(_collect(root, tmp_path / "b.tar.gz"))
    report = gather(bundle)
    assert report.findings_source == "analysis/findings.json"
    with tarfile.open(bundle) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/analysis/findings.json"))
        data = tar.extractfile(member)
        assert data is not None
        doc = json.loads(data.read())
    assert sorted(f.id for f in report.findings) == sorted(f["id"] for f in doc["findings"])


# -- thousands of sandboxes ---------------------------------------------------------------------


def _sid(i: int) -> str:
    return f"{i:06d}" + "c3" * 29


def _many(tmp_path: Path, n: int, troubled: set[int], per: int = 20) -> Path:
    """A node bundle with `n` Kata sandboxes, each named by `per` containerd lines (few enough
    that no per-sandbox cap cuts them: only the section cap keeps the page small); the
    `troubled` ones log an error; sandbox i was last active at minute i."""
    start = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
    lines = []
    for i in range(n):
        sid = _sid(i)
        for k in range(per):
            ts = (start + timedelta(minutes=i, seconds=k)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            level = "error" if k == per - 1 and i in troubled else "info"
            lines.append(
                f'time="{ts}" level={level} msg="sandbox step {k} of pod app-{i}" sandbox={sid} '
                "source=virtcontainers name=containerd-shim-v2"
            )
    index = {
        "kata_sandboxes": [_sid(i) for i in range(n)],
        "entries": [
            {"type": "sandbox", "sandbox_id": _sid(i), "pod_namespace": "load", "pod_name": f"app-{i}"}
            for i in range(n)
        ],
    }
    manifest = {"schema_version": 1, "node": "big-node", "collectors": [], "files": []}
    return _tar(
        tmp_path / "many.tar.gz",
        "kata-debug-big-node-20261205T100000Z",
        {
            "oci-specs/index.json": json.dumps(index).encode(),
            "shim-logs/files/var/log/containerd.log": ("\n".join(lines) + "\n").encode(),
            "analysis/findings.json": json.dumps({"findings": []}).encode(),
            "manifest.json": json.dumps(manifest).encode(),
        },
    )


async def test_3000_sandboxes_stay_under_10_mb_and_load_cleanly(tmp_path: Path) -> None:
    n = 3000
    troubled = {7, 1500, 2999} | set(range(100, 150))
    bundle = _many(tmp_path, n, troubled)
    out = tmp_path / "r.html"
    done = await asyncio.to_thread(write_report, bundle, out)
    assert done.bytes == out.stat().st_size < 10_000_000
    assert (done.sandboxes, done.sandbox_sections) == (n, MAX_SANDBOX_SECTIONS)
    t = _tree(out)
    shown = {int(sid[:6]) for _, _, sid in t.sandboxes}
    assert len(shown) == MAX_SANDBOX_SECTIONS
    # Those in trouble first, then the most recently active.
    recent = set(range(n - 1, -1, -1)) - troubled
    expected = troubled | set(sorted(recent, reverse=True)[: MAX_SANDBOX_SECTIONS - len(troubled)])
    assert shown == expected
    # The rest: counted, each id listed with the members that name it.
    html = out.read_text()
    assert f'data-count="{n - MAX_SANDBOX_SECTIONS}"' in html
    hidden = _sid(0)
    item = html[html.index(f'<li data-sandbox="{hidden}">') :]
    item = item[: item.index("</li>")]
    assert "oci-specs/index.json" in item and "shim-logs/files/var/log/containerd.log" in item
    assert f"{n} sandbox(es)" in html
    async with chromium(tmp_path / "profile") as browser:
        page = await browser.new_page()
        load = await page.open(out.as_uri(), timeout=120)
        assert page.console_errors() == []
        assert page.requests() == [out.as_uri()]
        assert await page.evaluate("document.querySelectorAll('section.sandbox').length") == MAX_SANDBOX_SECTIONS
        assert await page.evaluate("document.querySelectorAll('.omitted-sandboxes li').length") == n - 200
        assert load < 30


# -- in a browser: the capture section as a person sees it --------------------------------------


async def test_in_chromium_the_capture_section_reads_right(capture_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    write_report(capture_bundle, out)
    async with chromium(tmp_path / "profile") as browser:
        page = await browser.new_page()
        await page.open(out.as_uri())
        assert page.console_errors() == [] and page.requests() == [out.as_uri()]
        sel = f'section.capture[data-capture="{CAPTURE}"]'
        assert await page.evaluate(f"document.querySelectorAll('{sel} section.sandbox').length") == 1
        assert await page.evaluate(f"document.querySelectorAll('{sel} article.finding').length") >= 1
        # Search reaches into the capture: only the KVM lines stay visible, the capture's among them.
        await page.evaluate("document.getElementById('q').focus()")
        await page.send("Input.insertText", {"text": "KVM kernel module"})
        await page.evaluate("new Promise(r => setTimeout(r, 400))")
        assert await page.evaluate(f"document.querySelectorAll('{sel} li.e:not([hidden])').length") == 2
        await page.evaluate(
            "document.getElementById('q').value = ''; document.getElementById('q').dispatchEvent(new Event('input'))"
        )
        await page.evaluate("new Promise(r => setTimeout(r, 400))")
        await page.evaluate(f"document.querySelector('{sel}').scrollIntoView()")
        await page.evaluate("window.scrollBy(0, -110)")
        shot = await page.screenshot(tmp_path / "report-capture.png")
        assert page.console_errors() == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if ARTIFACTS:
        shutil.copy(shot, ARTIFACTS / shot.name)


def test_a_node_bundle_nested_in_a_nested_node_bundle_is_not_opened(capture_bundle: Path, tmp_path: Path) -> None:
    """Only the depths kata-debug writes are read: each level would stack another decompressor."""
    manifest = json.dumps({"schema_version": 1, "node": None, "collectors": [], "nodes": [], "files": []}).encode()
    inner = _tar(
        tmp_path / "inner.tar.gz",
        "kata-debug-a-1",
        {"nodes/b/bundle.tar.gz": capture_bundle.read_bytes(), "manifest.json": manifest},
    )
    outer = _tar(
        tmp_path / "outer.tar.gz",
        "kata-debug-cluster-1",
        {"nodes/a/bundle.tar.gz": inner.read_bytes(), "manifest.json": manifest},
    )
    out = tmp_path / "r.html"
    write_report(outer, out)
    assert _tree(out).sandboxes == []
    assert "nodes/a/bundle.tar.gz!/nodes/b/bundle.tar.gz: not read (a node bundle nested this deep" in out.read_text()


def test_an_unredacted_capture_in_a_redacted_node_bundle_is_redacted_on_the_page(tmp_path: Path) -> None:
    """The node agent may run with redaction off while `collect` redacts: the capture's own
    manifest decides, and its trigger line, log lines and findings are masked on the page."""
    secret = "s3cr3t-from-the-guest-42"
    root = _node(tmp_path / "host")
    _capture(root / "var/lib/kata-debug/traces", unredacted_secret=secret)
    bundle = asyncio.run(_collect(root, tmp_path / "node.tar.gz"))
    out = tmp_path / "r.html"
    write_report(bundle, out)
    html = out.read_text()
    assert f'data-capture="{CAPTURE}"' in html, "the capture is on the page"
    assert secret not in html
    assert "password=***" in html


def test_findings_quoting_an_unredacted_capture_past_the_sections_shown_are_redacted(tmp_path: Path) -> None:
    """`collect` analyses up to 50 captures, the page shows 20: a capture without a section is
    not known to be redacted, so the bundle findings that quote it are redacted on the page."""
    secret = "s3cr3t-beyond-the-sections"
    root = _node(tmp_path / "host")
    _capture(root / "var/lib/kata-debug/traces", unredacted_secret=secret)
    bundle = asyncio.run(_collect(root, tmp_path / "node.tar.gz"))
    report = gather(bundle, max_captures=0)
    quoted = [e.text for f in report.findings for e in f.evidence if f"captures/{CAPTURE}!/" in e.path]
    assert quoted, "the bundle's findings quote the capture"
    assert not any(secret in t for t in quoted) and any("password=***" in t for t in quoted)
