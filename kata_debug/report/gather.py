"""One streaming pass over a bundle, keeping what the report shows and nothing more.

A bundle is a gzip/zstd tarball read front to back exactly once (`kata_debug.bundle.reader`):
small structured members (manifest, facts, OCI index, sizing, findings) are kept and parsed,
log members go past `LogScanner` (bounded buckets per sandbox and member), span spools are
read line by line into bounded per-sandbox lists, and node bundles nested in a cluster bundle
and capture bundles (`captures/*.tar.gz` of a node bundle) are read from the same stream into
their own `NodeReport` / `CaptureReport`. Nothing waits for the manifest, which is the last
member.

The same pass feeds diagnose's analyzers (`kata_debug.analyze`): the members they declare are
kept as `NodeEvidence` and every log block the report scans is also pushed through their
`LineScanner`. Whether a bundle carries `analysis/findings.json` is only known near its end,
so the evidence is always gathered; the analyzers run only for a bundle (or nested bundle,
or capture) that has no findings of its own: one decompression of the bundle either way.

Blocking: callers on an event loop run `gather` in a worker thread.
"""

from __future__ import annotations

import fnmatch
import json
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

import zstandard

from kata_debug.analyze.analyzer import Analyzer
from kata_debug.analyze.diagnose import AnalyzerStatus, all_signatures, load_analyzers, run_analyzers
from kata_debug.analyze.evidence import (
    BASE_READS,
    MAX_STRUCTURED_TOTAL,
    EvidenceView,
    LineScanner,
    NodeEvidence,
    is_capture_member,
)
from kata_debug.analyze.evidence import is_log_member as is_analyzed_log
from kata_debug.analyze.ranking import rank
from kata_debug.bundle.reader import BundleError, Member, iter_members
from kata_debug.redact.redactor import Redactor
from kata_debug.report.lines import LogScanner, entry_from_line, parse_ts
from kata_debug.report.model import (
    CaptureReport,
    CollectorStatus,
    Entry,
    Finding,
    Level,
    NodeReport,
    Omission,
    Report,
    SandboxRef,
    SandboxReport,
    Sizing,
    Span,
    Trigger,
)

FINDINGS_MEMBER = "analysis/findings.json"
#: Spans kept per sandbox while reading (the page trims further).
MAX_SPANS = 2000
#: Structured members parsed whole; anything larger is named as not read.
MAX_JSON = 16 << 20
_STRUCTURED = (
    "manifest.json",
    FINDINGS_MEMBER,
    "host/facts.json",
    "kata-config/summary.json",
    "kata-config/kata-env.json",
    "oci-specs/index.json",
    "sandboxes/sandboxes.json",
    "resource-limits/sizing.json",
    "shim-logs/summary.json",
    "shim-logs/sandboxes.json",
    "cluster/pods.json",
)
_NOT_LOG_SUFFIXES = (".json", ".jsonl", ".gz", ".zst", ".idx", ".index", ".tsv", ".txt")
#: Where a capture bundle keeps the sandbox's log lines (`journal.log`, `files/<node path>`).
CAPTURE_LOGS = "logs/"
#: Label of findings the analyzers made from this read (no `analysis/findings.json`).
ANALYZED_HERE = "analyzers run by report"

PassKind = Literal["node", "capture"]


def is_log_member(path: str, kind: PassKind = "node") -> bool:
    """Raw log text; per-sandbox copies (older bundles) are left out so no line counts twice."""
    if kind == "capture" and path.startswith(CAPTURE_LOGS):
        return not path.endswith(_NOT_LOG_SUFFIXES)
    return path.startswith("shim-logs/") and not path.endswith(_NOT_LOG_SUFFIXES) and "/sandboxes/" not in path


@dataclass
class _Analysis:
    """diagnose's analyzers and one `LineScanner` over all their signatures, for the whole read."""

    analyzers: list[Analyzer]
    scanner: LineScanner
    keep: tuple[str, ...]

    @classmethod
    def load(cls) -> _Analysis:
        analyzers = load_analyzers()
        keep = (*BASE_READS, *(r for a in analyzers for r in a.reads))
        return cls(analyzers, LineScanner(all_signatures(analyzers)), keep)

    def wants(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in self.keep)


class _Tee:
    """A member's stream that hands every block it gives the report's scanner to the analyzers' too."""

    def __init__(self, stream: IO[bytes], feed: Callable[[bytes], None]) -> None:
        self._stream = stream
        self._feed = feed

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if data:
            self._feed(data)
        return data


@dataclass
class _NodePass:
    """What one node bundle's pass kept, before it becomes a `NodeReport`."""

    label: str
    kind: PassKind = "node"
    #: 0 the bundle, 1 a node bundle in a cluster bundle or a capture in a node bundle, 2 a
    #: capture in a nested node bundle. Nothing deeper is opened: each level stacks a
    #: decompressor (zstd's long window is 128 MiB) and no collector writes deeper.
    depth: int = 0
    ev: NodeEvidence = field(default_factory=NodeEvidence)
    captures: list[_NodePass] = field(default_factory=list)
    json: dict[str, Any] = field(default_factory=dict)
    pods: dict[str, Any] = field(default_factory=dict)
    scanner: LogScanner = field(default_factory=LogScanner)
    spans: dict[str, list[Span]] = field(default_factory=dict)
    span_counts: dict[str, int] = field(default_factory=dict)
    span_paths: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    nested: list[_NodePass] = field(default_factory=list)
    members: int = 0


#: Bytes of timeline (log lines, spans, events) on the whole page; shared out among sandboxes.
PAGE_BYTES = 7_000_000
#: Bytes of timeline a sandbox keeps however many sandboxes share the page.
MIN_PER_SANDBOX = 24_000
#: What the markup around one entry's text costs on the page (time, offset, source, pointer).
ENTRY_MARKUP = 230


#: Sandbox sections on one page. Each keeps at least `MIN_PER_SANDBOX` bytes of timeline plus
#: its heading and sizing table, so thousands of sandboxes would pass the 10 MB page before
#: any per-sandbox cap applied; the rest are listed by id with the members that name them.
MAX_SANDBOX_SECTIONS = 200
#: Capture sections per node (newest first); the rest are named by file.
MAX_CAPTURE_SECTIONS = 20


def gather(
    source: str | Path,
    *,
    label: str | None = None,
    page_bytes: int = PAGE_BYTES,
    max_sections: int = MAX_SANDBOX_SECTIONS,
    max_captures: int = MAX_CAPTURE_SECTIONS,
) -> Report:
    """Read a bundle (file or directory) once; BundleError (exit 2) when it is not a bundle.

    `page_bytes` bounds the timeline of the whole page: each sandbox gets an equal share
    (at least `MIN_PER_SANDBOX`), turned into a number of entries by the size of its own
    lines, and what does not fit is summarised as an `Omission` (how many, which member,
    which lines) instead of being dropped silently. `max_sections` bounds the number of
    sandbox sections the same way (sandboxes with findings or errors first, then the most
    recently active), `max_captures` the capture sections of each node.
    """
    name = label or str(source)
    analysis = _Analysis.load()
    top = _read(str(source), name, "", analysis, "node")
    if "manifest.json" not in top.json:
        raise BundleError(f"{name}: not a kata-debug bundle (no manifest.json)")
    cluster = bool(top.nested) or "nodes" in top.json["manifest.json"]
    passes = [top, *top.nested]
    findings, findings_source = _findings(passes, analysis, cluster)
    nodes = [_node_report(state, analysis, max_captures) for state in passes]
    _attach_pod_events(top, nodes)
    _cap_sections(nodes, findings, max_sections)
    sandboxes = [sb for n in nodes for sb in n.sandboxes] + [
        sb for n in nodes for c in n.captures for sb in c.sandboxes
    ]
    share = max(MIN_PER_SANDBOX, page_bytes // max(1, len(sandboxes)))
    for sb in sandboxes:
        sizes = [len(e.text) + len(e.path) for e in sb.entries[:500]]
        cost = ENTRY_MARKUP + (sum(sizes) // len(sizes) if sizes else 60)
        _trim(sb, max(20, share // cost))
    findings = _redact_shown(nodes, findings)
    every = [*passes, *(c for p in passes for c in p.captures)]
    return Report(
        bundle=name,
        cluster=cluster,
        findings=findings,
        findings_source=findings_source,
        nodes=nodes,
        generated_at=datetime.now(UTC),
        lines_read=sum(p.scanner.lines for p in every),
        members_read=sum(p.members for p in every),
    )


def _redact_shown(nodes: list[NodeReport], findings: list[Finding]) -> list[Finding]:
    """Redact the text the page shows of any bundle that was not redacted; the findings too.

    A report is passed around more widely than a bundle (pasted into tickets, mailed), so it
    must not re-expose what `collect` would have masked: a bundle collected with
    `--no-redact` (or one whose manifest does not say) has its log lines, span names and
    findings' evidence redacted for the page, line by line, after the page's cap (so at most
    a few thousand short strings). A capture is judged by its own manifest (the node agent
    may have run with redaction off while `collect` did not), and an unredacted node's
    captures with it. A redacted bundle's text is shown as it is.
    """
    text = Redactor().text

    def sandboxes(sbs: list[SandboxReport]) -> None:
        for sb in sbs:
            sb.entries = [replace(e, text=text(e.text)) for e in sb.entries]
            sb.spans = [replace(sp, name=text(sp.name)) for sp in sb.spans]

    def redacted(found: list[Finding]) -> list[Finding]:
        return [
            replace(
                f,
                title=text(f.title),
                explanation=text(f.explanation),
                evidence=tuple(replace(ev, text=text(ev.text)) for ev in f.evidence),
            )
            for f in found
        ]

    redacted_captures: set[str] = set()  # evidence path parts of captures known to be redacted
    for node in nodes:
        node_clear = node.redacted is not True
        if node_clear:
            sandboxes(node.sandboxes)
        for capture in node.captures:
            if not node_clear and capture.redacted is True:
                redacted_captures.add(f"{capture.file}!/")
            else:
                sandboxes(capture.sandboxes)
                capture.findings = redacted(capture.findings)
                if capture.trigger is not None and capture.trigger.line:
                    capture.trigger = replace(capture.trigger, line=text(capture.trigger.line))
    if any(n.redacted is not True for n in nodes):
        return redacted(findings)

    # The bundle's own findings quote its captures too (`collect` reads up to 50, the page
    # shows 20): evidence from a capture not known to be redacted is redacted.
    def from_unknown_capture(path: str) -> bool:
        inside = path.split("captures/", 1)[1] if "captures/" in path else ""
        return "!/" in inside and not any(c in path for c in redacted_captures)

    return [redacted([f])[0] if any(from_unknown_capture(ev.path) for ev in f.evidence) else f for f in findings]


def _read(
    source: str | IO[bytes], label: str, prefix: str, analysis: _Analysis, kind: PassKind, depth: int = 0
) -> _NodePass:
    state = _NodePass(label=label, kind=kind, ev=NodeEvidence(path_prefix=prefix), depth=depth)
    for member in iter_members(source, label=label):
        try:
            _take(state, member, prefix, analysis)
        except (tarfile.TarError, OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
            # A member's data ends early (a truncated download, a collection killed mid-write):
            # one line naming the bundle and the member, exit 2, as `diagnose` says it.
            raise BundleError(f"{label}: damaged bundle (reading {member.path}: {exc})") from None
    return state


def _take(state: _NodePass, member: Member, prefix: str, analysis: _Analysis) -> None:
    """One member into the pass, read once: a nested node or capture bundle, a log (for the
    timeline and the analyzers' signatures), agent spans, or structured JSON (for the page
    and/or the analyzers)."""
    state.members += 1
    path = member.path
    shown = prefix + path
    state.ev.members.append(path)
    node_bundle = path.startswith("nodes/") and member.is_nested_bundle and state.kind == "node"
    capture = is_capture_member(path) and state.kind == "node"
    if node_bundle or capture:
        what: PassKind = "capture" if capture else "node"
        if (node_bundle and state.depth > 0) or state.depth > 1:
            state.problems.append(f"{shown}: not read (a {what} bundle nested this deep is not one kata-debug writes)")
            return
        try:  # the reader decompresses a nested tarball by its first bytes
            nested = _read(member.fileobj, shown, f"{shown}!/", analysis, what, state.depth + 1)
        except BundleError as exc:
            state.problems.append(f"{shown}: not read: {exc}")
            return
        if "manifest.json" not in nested.json:
            state.problems.append(f"{shown}: no manifest.json (the {what}'s collection broke off?)")
        if capture:
            state.captures.append(nested)
        else:
            state.nested.append(nested)
            state.ev.nested.append(nested.ev)
        return
    timeline_log = is_log_member(path, state.kind)
    analyzed_log = is_analyzed_log(path) or (state.kind == "capture" and timeline_log)
    if timeline_log or analyzed_log:
        _scan_log(state, member, shown, analysis, timeline_log, analyzed_log)
    elif path.startswith("agent-traces/spans.jsonl"):
        _read_spans(state, member, shown)
    else:
        _take_structured(state, member, shown, analysis)


def _scan_log(
    state: _NodePass, member: Member, shown: str, analysis: _Analysis, timeline: bool, analyzed: bool
) -> None:
    """One read of a log member, each block to the timeline's scanner and the analyzers'."""
    if analyzed:
        state.ev.log_members.append(member.path)
        feeder = analysis.scanner.feeder(shown, state.ev.hits)
        if timeline:
            state.scanner.scan(shown, _Tee(member.fileobj, feeder.feed))
        else:
            while chunk := member.fileobj.read(1 << 20):
                feeder.feed(chunk)
        state.ev.log_lines += feeder.close()
    else:
        state.scanner.scan(shown, member.fileobj)


def _take_structured(state: _NodePass, member: Member, shown: str, analysis: _Analysis) -> None:
    path = member.path
    for_page = path in _STRUCTURED or (path.startswith("cluster/pods/") and path.endswith(".json"))
    for_analyzers = analysis.wants(path)
    if not (for_page or for_analyzers):
        return
    try:
        data = member.read_bytes(MAX_JSON)
    except BundleError as exc:
        state.problems.append(f"{shown}: not read ({exc})")
        return
    if for_analyzers:
        kept = sum(len(v) for v in state.ev.structured.values())
        if kept + len(data) > MAX_STRUCTURED_TOTAL:
            state.ev.skipped.append(f"{shown}: not read, structured members past {MAX_STRUCTURED_TOTAL >> 20} MiB")
        else:
            state.ev.structured[path] = data
    if not for_page:
        return
    try:
        value = json.loads(data)
    except ValueError as exc:
        state.problems.append(f"{shown}: not valid JSON ({exc})")
        return
    if path.startswith("cluster/pods/"):
        _keep_pod_events(state, value)
    else:
        state.json[path] = value


# -- spans ------------------------------------------------------------------------------------


def _attr(attrs: Any, key: str) -> str | None:
    for a in attrs if isinstance(attrs, list) else []:
        if isinstance(a, dict) and a.get("key") == key:
            value = a.get("value") or {}
            if isinstance(value, dict):
                for v in value.values():
                    return str(v)
    return None


def _ns_time(value: Any) -> datetime | None:
    try:
        ns = int(value)
    except (TypeError, ValueError):
        return None
    if ns <= 0:
        return None
    return datetime.fromtimestamp(ns / 1e9, UTC)


def _read_spans(state: _NodePass, member: Member, shown: str) -> None:
    """OTLP/JSON export requests, one per line (the forwarder's spool), spans by sandbox."""
    for lineno, text in member.lines():
        if not text.strip():
            continue
        try:
            request = json.loads(text)
        except ValueError:
            state.problems.append(f"{shown}:{lineno}: not an OTLP/JSON line")
            continue
        for rs in request.get("resourceSpans") or [] if isinstance(request, dict) else []:
            resource = (rs or {}).get("resource") or {}
            sid = _attr(resource.get("attributes"), "kata.sandbox.id") or "unknown"
            for ss in rs.get("scopeSpans") or []:
                for raw in (ss or {}).get("spans") or []:
                    _keep_span(state, sid, raw, shown, lineno)


def _keep_span(state: _NodePass, sid: str, raw: Any, shown: str, lineno: int) -> None:
    if not isinstance(raw, dict):
        return
    start, end = _ns_time(raw.get("startTimeUnixNano")), _ns_time(raw.get("endTimeUnixNano"))
    if start is None:
        return
    state.span_counts[sid] = state.span_counts.get(sid, 0) + 1
    state.span_paths.setdefault(sid, shown)
    kept = state.spans.setdefault(sid, [])
    if len(kept) >= MAX_SPANS:
        return
    status = raw.get("status") or {}
    kept.append(
        Span(
            trace_id=str(raw.get("traceId") or ""),
            span_id=str(raw.get("spanId") or ""),
            parent_id=str(raw.get("parentSpanId") or ""),
            name=str(raw.get("name") or "?"),
            start=start,
            end=end if end is not None and end >= start else start,
            error=isinstance(status, dict) and status.get("code") == 2,
            path=shown,
            line=lineno,
        )
    )


def _nest(spans: list[Span]) -> list[Span]:
    """Spans by start time, each with its depth under its parents (the waterfall's indent)."""
    by_id = {s.span_id: s for s in spans if s.span_id}
    depth: dict[str, int] = {}

    def depth_of(s: Span, seen: int = 0) -> int:
        if s.span_id in depth:
            return depth[s.span_id]
        parent = by_id.get(s.parent_id)
        d = 0 if parent is None or seen > 32 else depth_of(parent, seen + 1) + 1
        depth[s.span_id] = d
        return d

    out = [Span(**{**s.__dict__, "depth": depth_of(s)}) for s in spans]
    return sorted(out, key=lambda s: (s.start, s.depth))


# -- cluster pod events -----------------------------------------------------------------------


def _keep_pod_events(state: _NodePass, value: Any) -> None:
    if not isinstance(value, dict):
        return
    pod = value.get("pod") or {}
    meta = pod.get("metadata") or {} if isinstance(pod, dict) else {}
    key = f"{meta.get('namespace')}/{meta.get('name')}"
    events = [e for e in value.get("events") or [] if isinstance(e, dict)]
    state.pods[key] = {"uid": meta.get("uid"), "events": events[-200:], "total": len(events)}


def _attach_pod_events(top: _NodePass, nodes: list[NodeReport]) -> None:
    """Kubernetes events of a pod (cluster bundles) go on the timeline of its sandbox."""
    if not top.pods:
        return
    for node in nodes:
        for sb in node.sandboxes:
            rec = top.pods.get(sb.pod or "")
            if rec is None:
                continue
            path = f"cluster/pods/{sb.pod_namespace}/{sb.pod_name}.json"
            for e in rec["events"]:
                when = str(e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp") or "")
                text = f"{e.get('type') or ''} {e.get('reason') or ''}: {e.get('message') or ''}".strip()
                level: Level = "warning" if e.get("type") == "Warning" else "info"
                sb.entries.append(Entry("event", parse_ts(when), "kubernetes", level, text, path, None))
            sb.entries.sort(key=_entry_key)


# -- findings ---------------------------------------------------------------------------------


def _findings(passes: list[_NodePass], analysis: _Analysis, cluster: bool) -> tuple[list[Finding], str | None]:
    """Findings of the bundle and of each nested node bundle: from its `analysis/findings.json`
    when it has one, else from the analyzers over the evidence this same read kept."""
    out: list[Finding] = []
    sources = []
    analyzed = False
    for i, state in enumerate(passes):
        if FINDINGS_MEMBER in state.json:
            sources.append(state.label if i else FINDINGS_MEMBER)
            out.extend(_findings_of_member(state))
        else:
            analyzed = True
            out.extend(_analyze(state, analysis, cluster=cluster and i == 0))
    if analyzed:
        sources.append(ANALYZED_HERE)
    order = {"error": 0, "warning": 1, "info": 2}
    out.sort(key=lambda f: order.get(f.severity, 3))
    return out, ", ".join(sources)


def _findings_of_member(state: _NodePass) -> list[Finding]:
    raw = state.json.get(FINDINGS_MEMBER)
    node = _manifest_node(state)
    items = raw.get("findings") if isinstance(raw, dict) else raw
    out = []
    for item in items if isinstance(items, list) else []:
        f = Finding.from_json(item, node)
        if f is not None:
            out.append(f)
    return out


def _analyze(state: _NodePass, analysis: _Analysis, *, cluster: bool = False) -> list[Finding]:
    """diagnose's analyzers over one pass's evidence; a broken analyzer becomes a node problem."""
    statuses: dict[str, AnalyzerStatus] = {}
    nested, state.ev.nested = state.ev.nested, []  # each nested bundle is analysed on its own
    try:
        found = rank(run_analyzers(analysis.analyzers, EvidenceView(state.ev, cluster=cluster), statuses))
    finally:
        state.ev.nested = nested
    for s in statuses.values():
        if s.status == "failed":
            state.problems.append(f"analyzer {s.id} failed: {s.error}")
    node = _manifest_node(state)
    out = []
    for f in found:
        converted = Finding.from_json(f.to_json(with_node=True), node)
        if converted is not None:
            out.append(converted)
    return out


def _manifest_node(state: _NodePass) -> str | None:
    m = state.json.get("manifest.json")
    return str(m.get("node")) if isinstance(m, dict) and m.get("node") else None


# -- node and sandboxes -----------------------------------------------------------------------


def _entry_key(e: Any) -> tuple[int, datetime, str, int]:
    ts = e.ts or datetime.min.replace(tzinfo=UTC)
    return (0 if e.ts else 1, ts, e.path, e.line or 0)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    for v in value if isinstance(value, list) else []:
        if isinstance(v, dict):
            yield v


def _node_report(state: _NodePass, analysis: _Analysis, max_captures: int) -> NodeReport:
    j = state.json
    manifest = j.get("manifest.json") if isinstance(j.get("manifest.json"), dict) else {}
    assert isinstance(manifest, dict)
    node = NodeReport(
        label=state.label,
        node=_manifest_node(state),
        started_at=_opt(manifest.get("started_at")),
        finished_at=_opt(manifest.get("finished_at")),
        redacted=manifest.get("redacted") if isinstance(manifest.get("redacted"), bool) else None,
        interrupted=_opt(manifest.get("interrupted")),
        facts=_dict(j.get("host/facts.json")),
        kata=_kata_facts(j),
        collectors=[_collector(c) for c in _dicts(manifest.get("collectors"))],
        cluster_nodes=list(_dicts(manifest.get("nodes"))),
        problems=list(state.problems),
        has_manifest="manifest.json" in j,
    )
    if state.scanner.unfollowed:
        node.problems.append(f"{state.scanner.unfollowed} log lines name more sandbox ids than the report follows")
    node.sandboxes = _sandboxes(state)
    captures = sorted(state.captures, key=_capture_time, reverse=True)
    node.captures = [_capture_report(c, analysis) for c in captures[:max_captures]]
    node.captures_omitted = [c.label for c in captures[max_captures:]]
    return node


def _trigger(state: _NodePass) -> Trigger | None:
    manifest = _dict(state.json.get("manifest.json"))
    raw = manifest.get("trigger")
    if not isinstance(raw, dict):
        return None
    return Trigger(
        reason=str(raw.get("reason") or "unknown"),
        time=_opt(raw.get("time")),
        sandbox=_opt(raw.get("sandbox")),
        line=_opt(raw.get("line")),
        pod=_opt(raw.get("pod")),
    )


def _capture_time(state: _NodePass) -> str:
    t = _trigger(state)
    return (t.time if t else None) or state.label


def _capture_report(state: _NodePass, analysis: _Analysis) -> CaptureReport:
    """A capture: its trigger, its own findings (file or analyzers), its sandboxes as they were."""
    trigger = _trigger(state)
    if FINDINGS_MEMBER in state.json:
        findings, source = _findings_of_member(state), FINDINGS_MEMBER
    else:
        findings, source = _analyze(state, analysis), ANALYZED_HERE
    if trigger is None:
        state.problems.append("no trigger in the capture's manifest.json")
    sandboxes = _sandboxes(state, trigger)
    manifest = state.json.get("manifest.json")
    redacted = manifest.get("redacted") if isinstance(manifest, dict) else None
    return CaptureReport(
        file=state.label.rsplit("/", 1)[-1],
        label=state.label,
        trigger=trigger,
        findings=findings,
        findings_source=source,
        sandboxes=sandboxes,
        problems=list(state.problems),
        redacted=redacted if isinstance(redacted, bool) else None,
    )


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def _collector(c: dict[str, Any]) -> CollectorStatus:
    failed = tuple(
        f"{i.get('item')}: {i.get('reason')}" if isinstance(i, dict) else str(i) for i in c.get("items_failed") or []
    )
    truncated = c.get("truncated") if isinstance(c.get("truncated"), dict) else {}
    assert isinstance(truncated, dict)
    duration = c.get("duration_s")
    return CollectorStatus(
        name=str(c.get("name") or "?"),
        status=str(c.get("status") or "?"),
        duration_s=float(duration) if isinstance(duration, (int, float)) else None,
        error=_opt(c.get("error")),
        items_failed=failed,
        truncated=tuple((str(k), int(v)) for k, v in truncated.items() if isinstance(v, int)),
    )


def _kata_facts(j: dict[str, Any]) -> dict[str, Any]:
    summary = j.get("kata-config/summary.json") if isinstance(j.get("kata-config/summary.json"), dict) else {}
    assert isinstance(summary, dict)
    sizing = summary.get("sizing") if isinstance(summary.get("sizing"), dict) else {}
    assert isinstance(sizing, dict)
    env = j.get("kata-config/kata-env.json")
    version = None
    if isinstance(env, dict):
        runtime = env.get("Runtime") or {}
        ver = runtime.get("Version") if isinstance(runtime, dict) else None
        version = ver.get("Semver") if isinstance(ver, dict) else None
    tools = summary.get("tools") if isinstance(summary.get("tools"), dict) else {}
    return {
        "version": version,
        "tools": tools,
        "config": summary.get("in_effect"),
        "hypervisor": sizing.get("hypervisor"),
        "handlers": list(_dicts(summary.get("handlers"))),
    }


def _sandboxes(state: _NodePass, trigger: Trigger | None = None) -> list[SandboxReport]:
    """Every sandbox the bundle knows of, from any collector; log ids only if a collector listed them.

    A capture names its sandbox in the trigger, with the pod the agent saw."""
    j = state.json
    found: dict[str, SandboxReport] = {}
    shown = state.ev.path_prefix

    def sb(sid: Any, member: str | None = None) -> SandboxReport | None:
        if not isinstance(sid, str) or not sid:
            return None
        r = found.setdefault(sid, SandboxReport(id=sid))
        if member is not None and shown + member not in r.listed_in:
            r.listed_in.append(shown + member)
        return r

    if trigger is not None and (r := sb(trigger.sandbox, "manifest.json")) is not None and trigger.pod:
        namespace, _, name = trigger.pod.partition("/")
        r.pod_namespace, r.pod_name = (namespace, name) if name else (None, namespace)
    index = j.get("oci-specs/index.json") if isinstance(j.get("oci-specs/index.json"), dict) else {}
    assert isinstance(index, dict)
    for sid in index.get("kata_sandboxes") or []:
        sb(sid, "oci-specs/index.json")
    for e in _dicts(index.get("entries")):
        if (
            e.get("type") == "sandbox"
            and (r := sb(e.get("sandbox_id") or e.get("id"), "oci-specs/index.json")) is not None
        ):
            r.pod_namespace = r.pod_namespace or _opt(e.get("pod_namespace"))
            r.pod_name = r.pod_name or _opt(e.get("pod_name"))
            r.pod_uid = r.pod_uid or _opt(e.get("pod_uid"))
            r.runtime = r.runtime or _opt(e.get("runtime"))
    state_doc = j.get("sandboxes/sandboxes.json")
    for e in _dicts(state_doc.get("sandboxes") if isinstance(state_doc, dict) else None):
        if (r := sb(e.get("id"), "sandboxes/sandboxes.json")) is not None:
            r.state = e
    sizing = j.get("resource-limits/sizing.json")
    for e in _dicts(sizing.get("sandboxes") if isinstance(sizing, dict) else None):
        if (r := sb(e.get("sandbox_id"), "resource-limits/sizing.json")) is None:
            continue
        pod = e.get("pod") if isinstance(e.get("pod"), dict) else {}
        assert isinstance(pod, dict)
        r.pod_namespace = r.pod_namespace or _opt(pod.get("namespace"))
        r.pod_name = r.pod_name or _opt(pod.get("name"))
        r.pod_uid = r.pod_uid or _opt(pod.get("uid"))
        r.runtime_handler = _opt(e.get("runtime_handler"))
        r.sizing = Sizing(
            containers=list(_dicts(e.get("containers"))),
            computed=_dict(e.get("computed")),
            observed=_dict(e.get("observed")),
            findings=[_finding_text(f) for f in e.get("findings") or []],
            config=_opt(e.get("config")),
        )
    summary = j.get("shim-logs/summary.json")
    for sid in summary.get("sandboxes") or [] if isinstance(summary, dict) else []:
        sb(sid, "shim-logs/summary.json")
    index_doc = j.get("shim-logs/sandboxes.json")
    listed = index_doc.get("sandboxes") if isinstance(index_doc, dict) else None
    for sid in listed if isinstance(listed, (dict, list)) else []:
        sb(sid, "shim-logs/sandboxes.json")
    for sid in state.spans:
        if sid != "unknown":
            sb(sid, None)
    for sid, r in found.items():
        for bucket in state.scanner.buckets.get(sid, {}).values():
            kept = bucket.kept()
            r.entries.extend(entry_from_line(raw, bucket.path, n, bucket.source) for n, raw in kept)
            if bucket.count > len(kept):
                omitted_lines = _omitted_range(kept)
                r.omitted.append(Omission(bucket.source, bucket.path, bucket.count - len(kept), *omitted_lines))
        r.entries.sort(key=_entry_key)
        r.spans = _nest(state.spans.get(sid, []))
        dropped = state.span_counts.get(sid, 0) - len(r.spans)
        if dropped > 0:
            r.omitted.append(Omission("agent-traces", state.span_paths[sid], dropped, None, None))
    # Sandboxes in trouble first: that is what the page is opened for.
    return sorted(found.values(), key=lambda r: (not any(e.level == "error" for e in r.entries), r.pod or "~", r.id))


def _last_seen(sb: SandboxReport) -> datetime:
    times = [e.ts for e in sb.entries if e.ts] + [s.end for s in sb.spans]
    return max(times, default=datetime.min.replace(tzinfo=UTC))


def _cap_sections(nodes: list[NodeReport], findings: list[Finding], limit: int) -> None:
    """Keep `limit` sandbox sections over the whole page: sandboxes a finding names or whose
    timeline has errors first, then the most recently active; the others become `SandboxRef`s
    (id, pod, the members that name them) listed under their node."""
    every = [(n, sb) for n in nodes for sb in n.sandboxes]
    if len(every) <= limit:
        return
    named = {f.sandbox for f in findings if f.sandbox}

    def rank_key(item: tuple[NodeReport, SandboxReport]) -> tuple[bool, float, str]:
        sb = item[1]
        trouble = sb.id in named or any(e.level == "error" for e in sb.entries) or any(s.error for s in sb.spans)
        return (not trouble, -_last_seen(sb).timestamp(), sb.id)

    keep = {id(sb) for _, sb in sorted(every, key=rank_key)[:limit]}
    for node in nodes:
        shown: list[SandboxReport] = []
        rest: list[SandboxReport] = []
        for sb in node.sandboxes:
            (shown if id(sb) in keep else rest).append(sb)
        node.sandboxes = shown
        node.sandboxes_omitted = [
            SandboxRef(
                id=sb.id,
                pod=sb.pod,
                members=_members_of(sb),
                errors=sum(1 for e in sb.entries if e.level == "error"),
            )
            for sb in sorted(rest, key=lambda r: r.id)
        ]


def _members_of(sb: SandboxReport) -> tuple[str, ...]:
    paths = [*sb.listed_in, *(e.path for e in sb.entries), *(s.path for s in sb.spans), *(o.path for o in sb.omitted)]
    return tuple(dict.fromkeys(paths))


def _trim(sb: SandboxReport, share: int) -> None:
    """Cut a sandbox to its share of the page: errors and warnings first, then the first
    lines (how it started) and the newest (how it ended); the rest becomes `Omission`s."""
    span_share = share // 3 if sb.spans else 0
    if len(sb.spans) > span_share:
        dropped = len(sb.spans) - span_share
        kept_spans = sorted(sb.spans, key=lambda s: (not s.error, s.depth, s.start))[:span_share]
        path = sb.spans[0].path
        sb.spans = sorted(kept_spans, key=lambda s: (s.start, s.depth))
        _add_omission(sb, Omission("agent-traces", path, dropped, None, None))
    share -= min(len(sb.spans), span_share)
    if len(sb.entries) <= share:
        return
    order = list(range(len(sb.entries)))
    loud = [i for i in order if sb.entries[i].level in ("error", "warning")][: share // 3]
    rest = share - len(loud)
    chosen = set(loud)
    quiet = [i for i in order if i not in chosen]
    head = quiet[: rest // 5]
    tail = quiet[len(quiet) - (rest - len(head)) :] if rest - len(head) > 0 else []
    chosen.update(head, tail)
    dropped_by_path: dict[tuple[str, str], list[int]] = {}
    for i in order:
        if i not in chosen:
            e = sb.entries[i]
            dropped_by_path.setdefault((e.source, e.path), []).append(e.line or 0)
    sb.entries = [sb.entries[i] for i in sorted(chosen)]
    for (source, path), lines in dropped_by_path.items():
        known = [n for n in lines if n]
        _add_omission(sb, Omission(source, path, len(lines), min(known, default=None), max(known, default=None)))


def _add_omission(sb: SandboxReport, new: Omission) -> None:
    for i, old in enumerate(sb.omitted):
        if old.path == new.path and old.source == new.source:
            lows = [n for n in (old.first_line, new.first_line) if n is not None]
            highs = [n for n in (old.last_line, new.last_line) if n is not None]
            sb.omitted[i] = Omission(
                old.source, old.path, old.count + new.count, min(lows, default=None), max(highs, default=None)
            )
            return
    sb.omitted.append(new)


def _omitted_range(kept: list[tuple[int, bytes]]) -> tuple[int | None, int | None]:
    """The line range the omitted lines sit in: the widest gap between kept line numbers."""
    best: tuple[int | None, int | None] = (None, None)
    width = 0
    for (a, _), (b, _) in zip(kept, kept[1:]):
        if b - a - 1 > width:
            width = b - a - 1
            best = (a + 1, b - 1)
    if best == (None, None) and kept:
        return (kept[-1][0] + 1, None)
    return best


def _finding_text(f: Any) -> str:
    if isinstance(f, dict):
        return str(f.get("message") or f.get("text") or json.dumps(f, sort_keys=True))
    return str(f)
