"""The report as one self-contained HTML page.

Everything shown comes from a bundle, i.e. from another machine, and a log line is written
by whoever can make a process log: every string goes through `escape` before it reaches the
page, in text and in attributes alike. The page makes no network request of any kind: its
CSS and script are inline, and a Content-Security-Policy allows exactly those two blocks
(by hash) and nothing else, so even a line that slipped past escaping could not run or load.

Contract the tests rely on (stable): `<section class="sandbox" data-sandbox="ID">` per
sandbox; `data-kind="log|console|span|event"` and `data-ts` (RFC 3339, UTC) on every
timeline entry; `<article class="finding" data-id="ID" data-severity="…">` per finding.
A capture (the node agent's bundle of a failure, carried in a node bundle) is
`<section class="capture" data-capture="FILE">` inside its node's section, holding its own
findings and sandbox sections: a sandbox section inside a capture is the sandbox as it was
at the failure, one outside is the live one (the same id can be in both).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from html import escape
from typing import Any

from kata_debug import __version__
from kata_debug.report.assets import CSS, JS
from kata_debug.report.model import (
    LEVELS,
    CaptureReport,
    Entry,
    Finding,
    NodeReport,
    Report,
    SandboxRef,
    SandboxReport,
    Span,
)


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = (
    f"default-src 'none'; style-src {_hash(CSS)}; script-src {_hash(JS)}; "
    "img-src 'none'; connect-src 'none'; base-uri 'none'; form-action 'none'"
)

_KINDS = ("log", "console", "span", "event")


def rfc3339(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def render(report: Report) -> Iterator[str]:
    """The page, in pieces (it can be megabytes: written out as it is made)."""
    every = [sb for n in report.nodes for sb in n.sandboxes]
    every += [sb for n in report.nodes for c in n.captures for sb in c.sandboxes]
    sources = sorted(
        {e.source for sb in every for e in sb.entries} | ({"agent"} if any(sb.spans for sb in every) else set())
    )
    total = sum(len(sb.entries) + len(sb.spans) for sb in every)
    n_sandboxes = sum(len(n.sandboxes) + len(n.sandboxes_omitted) for n in report.nodes)
    n_captures = sum(len(n.captures) + len(n.captures_omitted) for n in report.nodes)
    title = f"kata-debug report: {report.bundle}"
    yield (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="referrer" content="no-referrer">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>\n"
    )
    kind = "cluster bundle" if report.cluster else "node bundle"
    yield (
        f'<header><h1>kata-debug report <code>{_e(report.bundle)}</code></h1><p class="sum">'
        f"{kind} · {len(report.findings)} finding(s) · {len(report.nodes) - (1 if report.cluster else 0)} node(s) · "
        f"{n_sandboxes} sandbox(es) · {n_captures} capture(s) · {total} timeline entries of {report.lines_read} log lines read · "
        f"generated {_e(rfc3339(report.generated_at))} by kata-debug {_e(__version__)} · times in UTC</p>"
        '<nav id="toolbar"><input type="search" id="q" placeholder="search the timelines" aria-label="search">'
    )
    yield _checks("kind", "kind", _KINDS)
    yield _checks("level", "level", LEVELS)
    yield _checks("source", "source", sources)
    yield '<span id="shown"></span></nav></header>\n<main>\n'
    yield from _findings(report)
    for node in report.nodes:
        yield from _node(node, report.cluster and node is report.nodes[0])
    yield f"</main><script>{JS}</script></body></html>\n"


def _checks(name: str, group: str, values: Iterable[str]) -> str:
    boxes = "".join(
        f'<label><input type="checkbox" data-filter="{group}" value="{_e(v)}" checked> {_e(v)}</label>' for v in values
    )
    return f"<fieldset><legend>{_e(name)}</legend>{boxes}</fieldset>"


def _findings(report: Report) -> Iterator[str]:
    yield f'<section id="findings"><h2>Findings ({len(report.findings)})</h2>'
    if report.findings_source is not None:
        yield f'<p class="meta" id="findings-source">from {_e(report.findings_source)}</p>'
    if not report.findings:
        yield '<p class="none">diagnose found nothing wrong.</p>'
    for f in report.findings:
        yield _finding(f)
    yield "</section>\n"


def _finding(f: Finding, anchor: str = "sb-") -> str:
    where = []
    if f.node:
        where.append(f"node {_e(f.node)}")
    if f.sandbox:
        where.append(f'sandbox <a href="#{_e(anchor)}{_e(f.sandbox)}">{_e(f.sandbox)}</a>')
    if f.pod:
        where.append(f"pod {_e(f.pod)}")
    evidence = "".join(
        f'<li><span class="p">{_e(ev.path)}{":" + str(ev.line) if ev.line else ""}</span> <code>{_e(ev.text)}</code></li>'
        for ev in f.evidence
    )
    return (
        f'<article class="finding" data-id="{_e(f.id)}" data-severity="{_e(f.severity)}">'
        f'<h3><span class="sev {_e(f.severity)}">{_e(f.severity)}</span> {_e(f.title)} <code class="meta">{_e(f.id)}</code></h3>'
        f'<p class="meta">{" · ".join(where)}</p><p>{_e(f.explanation)}</p>'
        f'<p class="fix"><b>Fix:</b> {_e(f.fix)}</p>'
        f"{'<ul>' + evidence + '</ul>' if evidence else ''}</article>"
    )


def _status(status: str) -> str:
    cls = {"ok": "ok", "failed": "bad", "partial": "partial", "timeout": "timeout"}.get(status, "")
    return f'<span class="{cls}">{_e(status)}</span>'


def _node(node: NodeReport, cluster_top: bool) -> Iterator[str]:
    heading = "Cluster" if cluster_top else f"Node {node.node or '(unknown)'}"
    yield f'<section class="node" data-node="{_e(node.node or "")}"><h2>{_e(heading)} <span class="meta">{_e(node.label)}</span></h2>'
    when = f"collected {node.started_at or '?'} → {node.finished_at or '?'}"
    flags = [when]
    if node.redacted is False:
        flags.append('<span class="bad">not redacted</span>')
    if node.interrupted:
        flags.append(f'<span class="bad">interrupted: {_e(node.interrupted)}</span>')
    yield f'<p class="meta">{_e(flags[0])}{" · " if len(flags) > 1 else ""}{" · ".join(flags[1:])}</p>'
    if node.facts or node.kata.get("config"):
        yield _facts(node)
    if node.cluster_nodes:
        rows = "".join(
            f"<tr><td>{_e(n.get('name'))}</td><td>{_status(str(n.get('status')))}</td><td>{_e(n.get('duration_s') or '')}</td>"
            f"<td>{_e(n.get('bytes') or '')}</td><td>{_e(n.get('error') or '')}</td></tr>"
            for n in node.cluster_nodes
        )
        yield f"<table><tr><th>node</th><th>status</th><th>s</th><th>bytes</th><th>error</th></tr>{rows}</table>"
    if node.collectors:
        yield _collectors(node)
    for problem in node.problems:
        yield f'<p class="omit">{_e(problem)}</p>'
    if not node.has_manifest:
        yield '<p class="bad">No manifest.json: this bundle is incomplete.</p>'
    for sb in node.sandboxes:
        yield from _sandbox(sb)
    if node.sandboxes_omitted:
        yield _sandboxes_omitted(node.sandboxes_omitted)
    if not node.sandboxes and not node.sandboxes_omitted and not cluster_top:
        yield '<p class="none">No Kata sandbox in this bundle.</p>'
    for capture in node.captures:
        yield from _capture(capture)
    if node.captures_omitted:
        names = ", ".join(f"<code>{_e(c)}</code>" for c in node.captures_omitted)
        yield f'<p class="omit">{len(node.captures_omitted)} older capture(s) not shown: {names}</p>'
    yield "</section>\n"


def _sandboxes_omitted(refs: list[SandboxRef]) -> str:
    """Sandboxes past the section cap: a count, then each id with the members to read it in."""
    rows = "".join(
        f'<li data-sandbox="{_e(r.id)}"><code>{_e(r.id)}</code> {_e(r.pod or "")}'
        f"{f' <span class=bad>{r.errors} error line(s)</span>' if r.errors else ''}: "
        f"{', '.join(f'<code>{_e(m)}</code>' for m in r.members) or '<span class=none>no member</span>'}</li>"
        for r in refs
    )
    return (
        f'<details class="omitted-sandboxes" data-count="{len(refs)}"><summary class="omit">{len(refs)} more '
        "sandbox(es) without a section (sections go to those a finding names or with error lines "
        "first, then to the most recently active): ids and the bundle members that name them; "
        "<code>grep -n -F ID</code> on a member lists its lines</summary>"
        f'<ul class="refs">{rows}</ul></details>'
    )


def _capture(c: CaptureReport) -> Iterator[str]:
    """One capture: what triggered it, its top findings, its sandboxes as they were then."""
    anchor = f"cap-{c.file}-sb-"
    yield f'<section class="capture" data-capture="{_e(c.file)}" id="cap-{_e(c.file)}">'
    where = f' <span class="meta">{_e(c.label)}</span>' if c.label != f"captures/{c.file}" else ""
    yield f"<h3>Capture <code>{_e(c.file)}</code>{where}</h3>"
    t = c.trigger
    if t is not None:
        sandbox = f'<a href="#{_e(anchor)}{_e(t.sandbox)}">{_e(t.sandbox)}</a>' if t.sandbox else "not known"
        yield (
            f'<p class="trigger" data-reason="{_e(t.reason)}" data-ts="{_e(t.time or "")}">'
            f'<span class="sev error">{_e(t.reason)}</span> at {_e(t.time or "?")} · sandbox {sandbox}'
            f"{' · pod ' + _e(t.pod) if t.pod else ''}</p>"
        )
        if t.line:
            yield f'<p class="meta">trigger line: <code class="tline">{_e(t.line)}</code></p>'
    for problem in c.problems:
        yield f'<p class="omit">{_e(problem)}</p>'
    yield (
        f'<p class="meta">{len(c.findings)} finding(s) of this capture'
        f"{' (from ' + _e(c.findings_source) + ')' if c.findings_source else ''}</p>"
    )
    for f in c.findings[:3]:
        yield _finding(f, anchor)
    if len(c.findings) > 3:
        yield f'<p class="omit">{len(c.findings) - 3} more finding(s): <code>kata-debug diagnose</code> on the capture</p>'
    for sb in c.sandboxes:
        yield from _sandbox(sb, anchor)
    if not c.sandboxes:
        yield '<p class="none">No sandbox named in this capture.</p>'
    yield "</section>\n"


#: A module not loaded is a problem; one whose state is unknown (no /proc/modules) is not shown as one.
_MODULE_CLASS = {"absent": "bad", "unknown": "none"}


def _tool_result(v: object) -> str:
    """What running a Kata tool gave (`not installed`, `exit 0`), not the summary's record of it.

    `kata-config/summary.json` keeps `{"result", "ran", "config"}` per tool; the page says only
    the result, the way an operator would say it. A bundle from an older version (a plain
    string) is shown as it is.
    """
    if isinstance(v, dict):
        return str(v.get("result") or "not known")
    return str(v)


def _facts(node: NodeReport) -> str:
    f = node.facts
    k = node.kata
    devices = f.get("devices") if isinstance(f.get("devices"), dict) else {}
    dev = ", ".join(
        f'{_e(d)} <span class="{"ok" if isinstance(v, dict) and v.get("present") else "bad"}">'
        f"{'present' if isinstance(v, dict) and v.get('present') else 'missing'}</span>"
        for d, v in (devices or {}).items()
    )
    modules = f.get("modules")
    mods = (
        ", ".join(f'{_e(m)} <span class="{_MODULE_CLASS.get(str(v), "ok")}">{_e(v)}</span>' for m, v in modules.items())
        if isinstance(modules, dict)
        else '<span class="none">not known</span>'
    )
    cgroup = f.get("cgroup") if isinstance(f.get("cgroup"), dict) else {}
    containerd = f.get("containerd") if isinstance(f.get("containerd"), dict) else {}
    tools = k.get("tools") or {}
    version = k.get("version") or "; ".join(f"{t}: {_tool_result(v)}" for t, v in tools.items()) or "not known"
    handlers = ", ".join(
        f"{h.get('name') or h.get('handler')} → {h.get('config_path')}" for h in k.get("handlers") or []
    )
    rows: list[tuple[str, Any, bool]] = [
        ("Kata version", version, False),
        ("hypervisor", k.get("hypervisor") or "not known", False),
        ("configuration in effect", k.get("config") or "none found", False),
        ("runtime handlers", handlers or "none", False),
        ("kernel", f.get("kernel") or "not known", False),
        ("OS", f.get("os") or "not known", False),
        ("cgroup version", (cgroup or {}).get("version") or "not known", False),
        ("containerd", (containerd or {}).get("version") or "not known", False),
        ("devices", dev or '<span class="none">not known</span>', True),
        ("modules", mods, True),
        ("missing", "; ".join(str(m) for m in f.get("missing") or []) or "nothing", False),
    ]
    body = "".join(f"<tr><th>{_e(n)}</th><td>{v if raw else _e(v)}</td></tr>" for n, v, raw in rows)
    return f'<table class="facts">{body}</table>'


def _collectors(node: NodeReport) -> str:
    rows = []
    for c in node.collectors:
        notes = []
        if c.error:
            notes.append(_e(c.error))
        if c.items_failed:
            shown = "; ".join(_e(i) for i in c.items_failed[:5])
            more = f" (+{len(c.items_failed) - 5} more)" if len(c.items_failed) > 5 else ""
            notes.append(f"failed: {shown}{more}")
        for path, cut in c.truncated:
            notes.append(f"truncated: <code>{_e(path)}</code> lost its oldest {cut} bytes")
        dur = f"{c.duration_s:.2f}" if c.duration_s is not None else ""
        rows.append(
            f"<tr><td>{_e(c.name)}</td><td>{_status(c.status)}</td><td>{dur}</td><td>{'<br>'.join(notes)}</td></tr>"
        )
    return f"<table><tr><th>collector</th><th>status</th><th>s</th><th>notes</th></tr>{''.join(rows)}</table>"


def _sandbox(sb: SandboxReport, anchor: str = "sb-") -> Iterator[str]:
    total = len(sb.entries) + len(sb.spans)
    yield (
        f'<section class="sandbox" data-sandbox="{_e(sb.id)}" id="{_e(anchor)}{_e(sb.id)}">'
        f'<h3>{_e(sb.pod or "(no pod)")} <code class="meta">{_e(sb.id)}</code></h3>'
    )
    facts = [
        f"pod {_e(sb.pod)} uid {_e(sb.pod_uid or '?')}" if sb.pod else "pod not known",
        f"runtime handler {_e(sb.runtime_handler or 'not known')}",
    ]
    if sb.runtime:
        facts.append(f"runtime {_e(sb.runtime)}")
    if sb.state is not None:
        monitor = sb.state.get("monitor") if isinstance(sb.state.get("monitor"), dict) else {}
        facts.append(f"shared dir {'present' if sb.state.get('shared_dir') else 'missing'}")
        if monitor and monitor.get("error"):
            facts.append(f"shim monitor: {_e(monitor['error'])}")
    yield f'<p class="meta">{" · ".join(facts)}</p>'
    if sb.sizing is not None:
        yield _sizing(sb)
    for o in sb.omitted:
        where = ""
        if o.first_line is not None:
            where = f" (lines {o.first_line}–{o.last_line})" if o.last_line else f" (from line {o.first_line})"
        yield (
            f'<p class="omit">{o.count} more {_e(o.source)} entries not shown: <code>{_e(o.path)}</code>{where}; '
            f"<code>grep -n -F {_e(sb.id)}</code> on that member lists them all</p>"
        )
    yield f'<p class="meta count" data-total="{total}">{total} entries</p><ol class="tl">'
    yield from _timeline(sb)
    yield "</ol></section>\n"


def _sizing(sb: SandboxReport) -> str:
    assert sb.sizing is not None
    s = sb.sizing

    def mib(v: Any) -> str:
        return f"{v} MiB" if isinstance(v, (int, float)) else "?"

    rows = []
    for c in s.containers:
        quota, period = c.get("cpu_quota"), c.get("cpu_period")
        cpu = (
            f"{quota / period:g} vCPU"
            if isinstance(quota, int) and isinstance(period, int) and period > 0 and quota > 0
            else "no limit"
        )
        mem = c.get("memory_limit")
        memory = f"{mem // 2**20} MiB" if isinstance(mem, int) and mem > 0 else "no limit"
        rows.append(f"<tr><td>{_e(c.get('name') or c.get('id'))}</td><td>{_e(cpu)}</td><td>{_e(memory)}</td></tr>")
    comp, obs = s.computed, s.observed
    computed = f"{comp.get('vcpus', '?')} vCPU / {mib(comp.get('memory_mib'))} ({_e(comp.get('mode') or '?')})"
    running = (
        f"{obs.get('current_vcpus') or obs.get('boot_vcpus') or '?'} vCPU / "
        f"{mib(obs.get('current_memory_mib') or obs.get('boot_memory_mib'))}"
    )
    findings = "".join(f"<li>{_e(f)}</li>" for f in s.findings + [str(e) for e in comp.get("errors") or []])
    return (
        '<table class="sizing"><tr><th>container</th><th>CPU limit</th><th>memory limit</th></tr>'
        f"{''.join(rows) or '<tr><td colspan=3 class=none>no containers</td></tr>'}"
        f"<tr><th>VM size computed</th><td colspan=2>{_e(computed)}</td></tr>"
        f"<tr><th>VM size running</th><td colspan=2>{_e(running)}</td></tr></table>"
        f"{'<ul class=omit>' + findings + '</ul>' if findings else ''}"
    )


def _timeline(sb: SandboxReport) -> Iterator[str]:
    timed = [e.ts for e in sb.entries if e.ts] + [s.start for s in sb.spans]
    start = min(timed) if timed else None
    merged: list[tuple[datetime | None, int, Entry | Span]] = [(e.ts, 0, e) for e in sb.entries]
    merged += [(s.start, 1, s) for s in sb.spans]
    merged.sort(key=lambda t: (t[0] is None, t[0] or datetime.min.replace(tzinfo=UTC), t[1]))
    lo = min((s.start for s in sb.spans), default=None)
    hi = max((s.end for s in sb.spans), default=None)
    width = (hi - lo).total_seconds() if lo and hi else 0.0
    for _ts, _, item in merged:
        if isinstance(item, Entry):
            yield _entry(item, start)
        else:
            yield _span(item, start, lo, width)


def _when(ts: datetime | None, start: datetime | None) -> str:
    if ts is None:
        return '<time>—</time><span class="o"></span>'
    off = _offset((ts - start).total_seconds()) if start else ""
    return f'<time>{ts.strftime("%m-%d %H:%M:%S.%f")[:-3]}</time><span class="o">{off}</span>'


def _offset(seconds: float) -> str:
    """Time since the sandbox's first entry: `+1.234s`, `+12m03.5s`, `+27h04m`."""
    if seconds < 60:
        return f"+{seconds:.3f}s"
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        return f"+{int(minutes)}m{rest:04.1f}s"
    hours, rest = divmod(int(seconds), 3600)
    return f"+{hours}h{rest // 60:02d}m"


def _entry(e: Entry, start: datetime | None) -> str:
    ts = rfc3339(e.ts) if e.ts else ""
    where = f"{e.path}:{e.line}" if e.line else e.path
    return (
        f'<li class="e" data-kind="{e.kind}" data-src="{_e(e.source)}" data-level="{e.level}" data-ts="{ts}">'
        f'{_when(e.ts, start)}<span class="s">{_e(e.source)}</span><code>{_e(e.text)}</code>'
        f'<span class="p">{_e(where)}</span></li>'
    )


def _span(s: Span, start: datetime | None, lo: datetime | None, width: float) -> str:
    dur = (s.end - s.start).total_seconds()
    left = ((s.start - lo).total_seconds() / width * 100) if lo and width > 0 else 0.0
    w = (dur / width * 100) if width > 0 else 100.0
    level = "error" if s.error else "info"
    return (
        f'<li class="e" data-kind="span" data-src="agent" data-level="{level}" data-ts="{rfc3339(s.start)}" '
        f'data-end="{rfc3339(s.end)}" data-depth="{s.depth}">{_when(s.start, start)}<span class="s">agent</span>'
        f"<code>{_e(s.name)} ({dur * 1000:.3f} ms)</code>"
        f'<span class="bar" data-l="{left:.3f}" data-w="{w:.3f}"></span></li>'
    )
