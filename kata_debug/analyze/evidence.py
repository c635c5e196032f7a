"""One streaming pass over a bundle: structured members kept, log lines matched as they pass.

A bundle is a gzip/zstd tarball that cannot be read out of order and may hold gigabytes
of logs, so it is read exactly once (`kata_debug.bundle.reader.iter_members`): members the
analyzers declared in `reads` are kept in memory (bounded), log members are scanned in
1 MiB blocks by one prefilter built from every signature's literal needles, and only the
lines the prefilter hits are decoded and matched. Each signature keeps its first few lines
and a count. Node bundles nested in a cluster bundle are read from the stream the same way.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tarfile
import tomllib
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import IO, Any
from zoneinfo import ZoneInfo

import re2  # google-re2, as the redactor uses
import zstandard

from kata_debug.analyze.base import (
    MAX_EVIDENCE_TEXT,
    LineMatch,
    Signature,
    SignatureHits,
    pod_on_line,
    sandbox_on_line,
)
from kata_debug.bundle.reader import MAX_STRUCTURED_BYTES, BundleError, Member, iter_members
from kata_debug.logs.nodelogs import audit_stamp, klog_stamp, syslog_stamp
from kata_debug.logs.since import line_time as since_line_time

_BLOCK = 1 << 20
#: A "line" longer than this is matched on its first part only (a log is not a blob store).
_MAX_LINE = 64 << 10
#: Structured members kept in memory per bundle (a node's, or a cluster bundle's own part).
MAX_STRUCTURED_PER_BUNDLE = 64 << 20
#: ... and for one whole diagnosis: a cluster bundle and all its nested node bundles share
#: it, so an attacker-sized bundle (thousands of 16 MiB members, or of nested nodes) cannot
#: take unbounded memory. What is past either is not read, and each analyzer that declared
#: it in `reads` gets a note saying so.
MAX_STRUCTURED_TOTAL = 256 << 20
#: Captures read per node bundle (the collector copies them newest first; the agent's ring
#: keeps them under --capture-size, but a bundle is input: it is bounded here too).
MAX_CAPTURES_READ = 50
#: A capture `collect` holds in memory to analyse it while writing (the agent's captures are
#: kilobytes to a few MiB; a larger one is named as not read).
MAX_CAPTURE_TAP_BYTES = 32 << 20
#: Member names remembered per bundle (each a short string; a bundle has a few thousand).
MAX_MEMBERS_LISTED = 200_000
#: Skipped structured members named per bundle; the rest are counted.
MAX_SKIPPED_LISTED = 200

#: Members whose lines are matched: the raw log text of the log collectors (`shim-logs/` in
#: a node bundle, `logs/` in a node agent's capture, which is where a failed sandbox's lines
#: are kept). Per-sandbox copies and parsed JSON views are left out so nothing counts twice.
_LOG_PREFIXES = ("shim-logs/", "logs/")
_NOT_LOG_SUFFIXES = (".json", ".jsonl", ".stderr", ".gz", ".zst", ".idx", ".index", ".tsv")
_NOT_LOG_PARTS = ("/sandboxes/", "/per-sandbox/", "/index/")
#: Always kept: what every analyzer may need to say which node and sandbox it is about.
BASE_READS = (
    "manifest.json",
    "oci-specs/index.json",
    "host/facts.json",
    "kata-config/summary.json",
    "shim-logs/summary.json",  # the node's time zone, for year-less log stamps
)


def is_capture_member(path: str) -> bool:
    """A capture tarball the `captures` collector copied: `captures/<time>-<sandbox>.tar.gz`."""
    return path.startswith("captures/") and path.count("/") == 1 and path.endswith(".tar.gz")


def is_log_member(path: str) -> bool:
    return (
        path.startswith(_LOG_PREFIXES)
        and not path.endswith(_NOT_LOG_SUFFIXES)
        and not any(p in path for p in _NOT_LOG_PARTS)
    )


class LineScanner:
    """Every signature of every analyzer, run over log text with one byte-level prefilter.

    Also usable on its own, line by line (`match_line`): the node agent's capture trigger
    asks the same question of each new line.
    """

    def __init__(self, signatures: Iterable[Signature]) -> None:
        self.signatures: dict[str, Signature] = {}
        for sig in signatures:
            self.signatures.setdefault(sig.name, sig)
        needles = sorted({n.encode() for s in self.signatures.values() for n in s.needles})
        # RE2 runs an alternation of literals as one automaton (~400 MB/s here); the stdlib
        # engine tries every needle at every byte and is 10-100x slower on gigabytes of logs.
        self._prefilter = re2.compile(b"|".join(re.escape(n) for n in needles)) if needles else None

    def match_line(self, text: str) -> list[tuple[Signature, re.Match[str]]]:
        """The signatures one line matches."""
        out = []
        for sig in self.signatures.values():
            m = sig.match(text)
            if m is not None:
                out.append((sig, m))
        return out

    def scan(self, path: str, stream: IO[bytes], hits: dict[str, SignatureHits]) -> int:
        """Match every line of one log member; returns the number of lines read."""
        feeder = self.feeder(path, hits)
        while chunk := stream.read(_BLOCK):
            feeder.feed(chunk)
        return feeder.close()

    def feeder(self, path: str, hits: dict[str, SignatureHits]) -> LineFeeder:
        """Push-style scanning of one member, for content that goes past once (a bundle being written)."""
        return LineFeeder(self, path, hits)

    def _match(self, path: str, lineno: int, raw: bytes, hits: dict[str, SignatureHits]) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        found = self.match_line(text)
        if not found:
            return
        sandbox = sandbox_on_line(text)
        pod = pod_on_line(text)
        quote = text if len(text) <= MAX_EVIDENCE_TEXT else text[: MAX_EVIDENCE_TEXT - 1] + "…"
        for sig, m in found:
            groups = {k: v for k, v in m.groupdict().items() if v is not None}
            hits.setdefault(sig.name, SignatureHits()).add(LineMatch(path, lineno, quote, groups, sandbox, pod))


class LineFeeder:
    """Lines of one member fed in arbitrary chunks; the prefilter runs over whole blocks."""

    def __init__(self, scanner: LineScanner, path: str, hits: dict[str, SignatureHits]) -> None:
        self._scanner = scanner
        self._path = path
        self._hits = hits
        self._carry = b""
        self.lines = 0

    def feed(self, chunk: bytes) -> None:
        block = self._carry + chunk if self._carry else chunk
        cut = block.rfind(b"\n") + 1
        if cut == 0:
            if len(block) < _MAX_LINE:
                self._carry = block
                return
            cut = len(block)  # a line past the cap: matched on what we have, the rest is dropped
        self._carry = block[cut:]
        self._block(block[:cut] if cut < len(block) else block)

    def close(self) -> int:
        if self._carry:
            self._block(self._carry)
            self._carry = b""
            self.lines += 1
        return self.lines

    def _block(self, block: bytes) -> None:
        prefilter = self._scanner._prefilter
        if prefilter is None:
            self.lines += block.count(b"\n")
            return
        pos = 0
        lineno = self.lines
        for m in prefilter.finditer(block):
            if m.start() < pos:
                continue  # another needle on a line already matched
            start = block.rfind(b"\n", 0, m.start()) + 1
            end = block.find(b"\n", m.start())
            end = len(block) if end < 0 else end
            lineno += block.count(b"\n", pos, start)
            pos = end
            self._scanner._match(self._path, lineno + 1, block[start : min(end, start + _MAX_LINE)], self._hits)
        self.lines = lineno + block.count(b"\n", pos)


@dataclass
class NodeEvidence:
    """What one streaming pass kept of one bundle (a node's, or a cluster bundle's own part)."""

    path_prefix: str = ""
    #: The node, when known before the manifest (a bundle being written).
    node: str | None = None
    members: list[str] = field(default_factory=list)
    structured: dict[str, bytes] = field(default_factory=dict)
    hits: dict[str, SignatureHits] = field(default_factory=dict)
    log_members: list[str] = field(default_factory=list)
    log_lines: int = 0
    skipped: list[str] = field(default_factory=list)
    #: Structured members the analyzers asked for but did not get (member paths, first
    #: MAX_SKIPPED_LISTED), and how many there were in all.
    skipped_members: list[tuple[str, str]] = field(default_factory=list)
    skipped_count: int = 0
    #: Member names past MAX_MEMBERS_LISTED (not listed, still read).
    members_unlisted: int = 0
    structured_bytes: int = 0
    nested: list[NodeEvidence] = field(default_factory=list)
    #: The node agent's captures this node bundle carries (`captures/<file>.tar.gz`), each read
    #: as a bundle of its own: the failed sandbox's spec, state and log lines as they were.
    captures: list[NodeEvidence] = field(default_factory=list)
    #: Nested bundles (a node's, a capture) that could not be read, each with why.
    unread: list[str] = field(default_factory=list)

    def skip(self, path: str, why: str) -> None:
        """A structured member not kept: named (bounded) and counted."""
        self.skipped_count += 1
        if len(self.skipped_members) < MAX_SKIPPED_LISTED:
            self.skipped_members.append((path, why))
            self.skipped.append(f"{self.path_prefix}{path}: {why}")

    def list_member(self, path: str) -> None:
        if len(self.members) < MAX_MEMBERS_LISTED:
            self.members.append(path)
        else:
            self.members_unlisted += 1


@dataclass
class StructuredBudget:
    """Bytes of structured members kept so far in one diagnosis (all nested bundles)."""

    limit: int = MAX_STRUCTURED_TOTAL
    per_bundle: int = MAX_STRUCTURED_PER_BUNDLE
    kept: int = 0

    def take(self, ev: NodeEvidence, size: int) -> str | None:
        """Count a member in; or why it is not read."""
        if ev.structured_bytes + size > self.per_bundle:
            return f"not read: structured members past {self.per_bundle >> 20} MiB in this bundle"
        if self.kept + size > self.limit:
            return f"not read: structured members past {self.limit >> 20} MiB in total"
        self.kept += size
        ev.structured_bytes += size
        return None


def read_bundle_evidence(
    source: str | IO[bytes],
    signatures: Sequence[Signature],
    reads: Sequence[str],
    *,
    label: str | None = None,
    limit: int = MAX_STRUCTURED_TOTAL,
    per_bundle: int = MAX_STRUCTURED_PER_BUNDLE,
) -> NodeEvidence:
    """Read a bundle (file, directory or tar stream) once; raises BundleError for bad input."""
    scanner = LineScanner(signatures)
    keep = (*BASE_READS, *reads)
    return _read(source, scanner, keep, "", label, StructuredBudget(limit, per_bundle))


def read_capture(data: IO[bytes], scanner: LineScanner, keep: Sequence[str], path: str) -> NodeEvidence:
    """A capture tarball met while a node bundle is written (`collect`'s tap), read like one
    met in a bundle: evidence paths `<path>!/<member>`; BundleError when it is no bundle."""
    return _read(data, scanner, keep, f"{path}!/", path, StructuredBudget())


def _read(
    source: str | IO[bytes],
    scanner: LineScanner,
    keep: Sequence[str],
    prefix: str,
    label: str | None,
    budget: StructuredBudget,
) -> NodeEvidence:
    ev = NodeEvidence(path_prefix=prefix)
    name = label or (source if isinstance(source, str) else "<stream>")
    saw_manifest = False
    for member in iter_members(source, label=label):
        ev.list_member(member.path)
        saw_manifest = saw_manifest or member.path == "manifest.json"
        try:
            _take(ev, member, scanner, keep, prefix, budget)
        except (tarfile.TarError, OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
            # A member's data ends early (a truncated download, a collection killed mid-write).
            raise BundleError(f"{name}: damaged bundle (reading {member.path}: {exc})") from None
    if not saw_manifest:
        raise BundleError(f"{name}: not a kata-debug bundle (no manifest.json)")
    return ev


def _take(
    ev: NodeEvidence, member: Member, scanner: LineScanner, keep: Sequence[str], prefix: str, budget: StructuredBudget
) -> None:
    """One member: a nested node bundle, a log to scan, structured data to keep, or nothing."""
    shown = prefix + member.path
    if member.is_nested_bundle and member.path.startswith("nodes/"):
        try:
            ev.nested.append(_read(member.fileobj, scanner, keep, f"{shown}!/", shown, budget))
        except BundleError as exc:
            ev.unread.append(f"{shown}: {exc}")
        return
    if is_capture_member(member.path) and member.is_nested_bundle and prefix.count("!/") <= 1:
        # Only where kata-debug puts them: a node bundle's own captures (top level, or one
        # node down in a cluster bundle); a capture inside a capture is not opened.
        if len(ev.captures) >= MAX_CAPTURES_READ:
            ev.unread.append(f"{shown}: not read (more than {MAX_CAPTURES_READ} captures in this bundle)")
            return
        try:
            ev.captures.append(_read(member.fileobj, scanner, keep, f"{shown}!/", shown, budget))
        except BundleError as exc:
            ev.unread.append(f"{shown}: {exc}")
        return
    if is_log_member(member.path):
        ev.log_members.append(member.path)
        ev.log_lines += scanner.scan(shown, member.fileobj, ev.hits)
        return
    if not any(fnmatch.fnmatchcase(member.path, pattern) for pattern in keep):
        return
    if member.size > MAX_STRUCTURED_BYTES:
        ev.skip(member.path, f"{member.size} bytes, larger than {MAX_STRUCTURED_BYTES >> 20} MiB: not read")
        return
    refused = budget.take(ev, member.size)
    if refused:
        ev.skip(member.path, refused)
        return
    try:
        ev.structured[member.path] = member.read_bytes()
    except BundleError as exc:
        ev.skip(member.path, str(exc))


class EvidenceView:
    """Read-only access the analyzers get: kept members, parsed facts, signature hits."""

    def __init__(self, ev: NodeEvidence, *, cluster: bool = False) -> None:
        self._ev = ev
        self.cluster = cluster
        self._parsed: dict[str, Any] = {}

    # -- members -----------------------------------------------------------------
    @property
    def prefix(self) -> str:
        return self._ev.path_prefix

    def shown(self, path: str) -> str:
        """A member path as evidence names it (nested bundles carry their container's path)."""
        return self._ev.path_prefix + path

    def has(self, path: str) -> bool:
        return path in self._ev.structured or path in self._ev.members

    def members(self, pattern: str = "*") -> list[str]:
        return [m for m in self._ev.members if fnmatch.fnmatchcase(m, pattern)]

    @property
    def log_members(self) -> list[str]:
        return list(self._ev.log_members)

    def text(self, path: str) -> str | None:
        data = self._ev.structured.get(path)
        return None if data is None else data.decode("utf-8", "replace")

    def json(self, path: str) -> Any:
        if path not in self._parsed:
            data = self._ev.structured.get(path)
            try:
                self._parsed[path] = None if data is None else json.loads(data)
            except ValueError:
                self._parsed[path] = None
        return self._parsed[path]

    def toml(self, path: str) -> dict[str, Any] | None:
        key = "toml:" + path
        if key not in self._parsed:
            text = self.text(path)
            try:
                self._parsed[key] = None if text is None else tomllib.loads(text)
            except tomllib.TOMLDecodeError:
                self._parsed[key] = None
        value = self._parsed[key]
        return value if isinstance(value, dict) else None

    # -- facts ------------------------------------------------------------------
    @property
    def node(self) -> str | None:
        manifest = self.json("manifest.json")
        if not isinstance(manifest, dict):
            return self._ev.node
        scope = manifest.get("scope")
        node = manifest.get("node") or (scope.get("node") if isinstance(scope, dict) else None)
        return str(node) if node else self._ev.node

    @property
    def facts(self) -> dict[str, Any]:
        value = self.json("host/facts.json")
        return value if isinstance(value, dict) else {}

    @property
    def kata_summary(self) -> dict[str, Any]:
        value = self.json("kata-config/summary.json")
        return value if isinstance(value, dict) else {}

    def kata_config_paths(self) -> list[str]:
        """Node paths of the Kata configurations in use: the default one and each handler's."""
        s = self.kata_summary
        paths = [s["in_effect"]] if s.get("in_effect") else []
        paths += [h["config_path"] for h in s.get("handlers") or [] if h.get("config_path")]
        return list(dict.fromkeys(paths))

    def kata_config(self, node_path: str | None = None) -> dict[str, Any] | None:
        """A Kata configuration as the kata-config collector copied it (default: the one in effect)."""
        node_path = node_path or self.kata_summary.get("in_effect")
        return self.toml(f"kata-config/files{node_path}") if node_path else None

    def hypervisor_sections(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(config path, hypervisor name, section) of every Kata configuration in use."""
        out = []
        for path in self.kata_config_paths():
            cfg = self.kata_config(path) or {}
            for name, section in (cfg.get("hypervisor") or {}).items():
                if isinstance(section, dict):
                    out.append((path, name, section))
        return out

    def runtime_section(self) -> dict[str, Any]:
        cfg = self.kata_config() or {}
        rt = cfg.get("runtime")
        return rt if isinstance(rt, dict) else {}

    def module(self, name: str) -> str | None:
        modules = self.facts.get("modules")
        return modules.get(name) if isinstance(modules, dict) else None

    def device_present(self, dev: str) -> bool | None:
        devices = self.facts.get("devices") or {}
        rec = devices.get(dev)
        return rec.get("present") if isinstance(rec, dict) else None

    def pod_of(self, sandbox: str | None) -> str | None:
        if not sandbox:
            return None
        index = self.json("oci-specs/index.json") or {}
        for entry in index.get("entries") or [] if isinstance(index, dict) else []:
            if entry.get("sandbox_id") == sandbox and entry.get("pod_name"):
                return f"{entry.get('pod_namespace')}/{entry['pod_name']}"
        return None

    # -- logs ---------------------------------------------------------------------
    def _clock(self) -> tuple[tzinfo, datetime]:
        """The node's zone and the collection time: what year-less syslog and klog stamps
        are read with (the bundle's own record of both; UTC and now when it has none)."""
        if "clock" not in self._parsed:
            summary = self.json("shim-logs/summary.json")
            summary = summary if isinstance(summary, dict) else {}
            zone: tzinfo = UTC
            offset = summary.get("node_utc_offset_seconds")
            try:  # a zone name knows each date's offset (daylight saving time)
                zone = ZoneInfo(str(summary.get("node_time_zone")))
            except (ValueError, KeyError, OSError):  # not a key ("/etc/localtime", "UTC (...)"): the offset
                if isinstance(offset, int) and abs(offset) < 86400:
                    zone = timezone(timedelta(seconds=offset))
            manifest = self.json("manifest.json")
            now = datetime.now(UTC)
            if isinstance(manifest, dict) and isinstance(manifest.get("finished_at"), str):
                try:
                    now = datetime.fromisoformat(manifest["finished_at"])
                except ValueError:
                    pass
            self._parsed["clock"] = (zone, now if now.tzinfo else now.replace(tzinfo=UTC))
        clock: tuple[tzinfo, datetime] = self._parsed["clock"]
        return clock

    def line_time(self, m: LineMatch) -> datetime | None:
        """When a matched line was logged (aware), from the stamp it starts with: RFC 3339
        (journal, logrus `time="..."`), audit's epoch, or syslog/klog wall clock in the
        node's zone. None when the line carries no time (a pasted kubectl event)."""
        raw = m.text.encode()
        t = since_line_time(raw) or audit_stamp(raw)
        if t is None:
            zone, now = self._clock()
            t = syslog_stamp(zone, now)(raw) or klog_stamp(zone, now)(raw)
        return t

    def hits(self, name: str) -> SignatureHits:
        return self._ev.hits.get(name) or SignatureHits()

    def matches(self, *names: str) -> list[LineMatch]:
        """The kept lines of these signatures, in bundle order, each line once."""
        seen: set[tuple[str, int]] = set()
        out: list[LineMatch] = []
        for name in names:
            for m in self.hits(name).first:
                if (m.path, m.line) not in seen:
                    seen.add((m.path, m.line))
                    out.append(m)
        return out

    def count(self, *names: str) -> int:
        return sum(self.hits(n).count for n in names)
