"""Run collectors concurrently into one bundle, and always finish with a manifest.

Each collector gets its own timeout; a failure, a timeout, SIGINT/SIGTERM or the global
deadline turns into a manifest entry, never into a lost bundle: whatever was already written
stays, and the manifest is queued behind it.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from kata_debug import __version__
from kata_debug.analyze.collecting import evidence_tap, write_findings
from kata_debug.analyze.diagnose import Diagnosis
from kata_debug.bundle.manifest import FAILING, CollectorEntry, Manifest, NodeScope, Status
from kata_debug.bundle.writer import (
    SUFFIXES,
    AsyncBundle,
    BundleWriter,
    Compression,
    OutputTarget,
    bundle_stem,
    compression_for,
)
from kata_debug.collect import signals
from kata_debug.collect.interrupts import run_interruptible
from kata_debug.collectors import REGISTRY
from kata_debug.collectors.base import (
    DEFAULT_LOG_CAP,
    CollectContext,
    CollectorOptions,
    CollectorOutput,
    CollectorSkipped,
)
from kata_debug.errors import OutputError, UsageError
from kata_debug.node.hostroot import HostRoot
from kata_debug.node.oci import SPEC_PARSE_CAP
from kata_debug.redact.obfuscate import MapFile, Obfuscator
from kata_debug.redact.options import ObfuscateOptions, check_obfuscate, host_names
from kata_debug.redact.redactor import Redactor
from kata_debug.redact.user_rules import UserRules


@dataclass
class CollectOptions:
    host_root: Path = Path("/")
    output: str | None = None
    node: str | None = None
    since: timedelta = timedelta(hours=24)
    collectors: list[str] | None = None
    timeout: float = 60.0
    deadline: float | None = None
    redact: bool = True
    #: The operator's `--redact-config` rules, on top of the built-in ones.
    redact_rules: UserRules | None = None
    #: None: from the output's name (`.tar.gz` gzip, `.tar` none), else zstd.
    compression: Compression | None = None
    all_runtimes: bool = False
    max_log_bytes: int = DEFAULT_LOG_CAP
    #: Spec and state files larger than this are kept raw, cut, instead of parsed.
    max_parse_bytes: int = SPEC_PARSE_CAP
    #: Execute the node's binaries (containerd, kata-runtime)? None: only when host_root is `/`.
    run_host_tools: bool | None = None
    options: CollectorOptions = field(default_factory=CollectorOptions)
    #: `--obfuscate-hosts` and where the pseudonym -> original map goes (None: next to the bundle).
    obfuscate: ObfuscateOptions = field(default_factory=ObfuscateOptions)


@dataclass
class CollectResult:
    output: str
    node: str
    collectors: list[CollectorEntry]
    redactions: dict[str, int]
    interrupted: str | None
    #: What the analyzers found in the collected evidence (also in analysis/findings.json).
    diagnosis: Diagnosis | None = None
    #: (bytes, sha256) of the bundle as it was written, stdout included.
    written: tuple[int, str] | None = None
    #: Where `--obfuscate-hosts` wrote its pseudonym -> original map: the user must be told,
    #: since it is the only way back to the real names and it is never in the bundle.
    obfuscate_map: str | None = None

    @property
    def exit_code(self) -> int:
        return 3 if any(c.status in FAILING for c in self.collectors) else 0


class Progress(Protocol):
    def started(self, name: str) -> None: ...
    def finished(self, result: CollectorEntry) -> None: ...


class _NoProgress:
    def started(self, name: str) -> None:
        pass

    def finished(self, result: CollectorEntry) -> None:
        pass


def detect_node_name(host: HostRoot) -> str:
    """NODE_NAME (set by the DaemonSet from spec.nodeName), else the node's hostname."""
    if os.environ.get("NODE_NAME"):
        return os.environ["NODE_NAME"]
    try:
        name = host.read_text("/etc/hostname", 256).strip()
        if name:
            return name
    except OSError:
        pass
    return socket.gethostname()


def validate(opts: CollectOptions) -> None:
    if not opts.host_root.is_dir():
        raise UsageError(f"--host-root {opts.host_root}: not a directory")
    unknown = [c for c in opts.collectors or [] if c not in REGISTRY]
    if unknown:
        raise UsageError(f"--collector {unknown[0]}: unknown collector (choose from {', '.join(REGISTRY)})")
    if not (math.isfinite(opts.timeout) and opts.timeout > 0):
        raise UsageError(f"--timeout {opts.timeout:g}: must be a positive number of seconds")
    if opts.deadline is not None and not (math.isfinite(opts.deadline) and opts.deadline > 0):
        raise UsageError(f"--deadline {opts.deadline:g}: must be a positive number of seconds")
    check_since(opts.since)
    OutputTarget.check(opts.output)
    check_obfuscate(opts.obfuscate, opts.output)


def check_since(since: timedelta, given: str | None = None) -> None:
    """Refuse a `--since` that reaches before 1900: no log is that old, and the date
    arithmetic (`now - since`, timestamps) would overflow in the middle of a run.

    A century (`36500d`) stays valid: it is the way to say "everything". `given` is the
    user's own spelling, so the error quotes what they typed, not seconds they never wrote.
    """
    try:
        start = datetime.now(UTC) - since
    except OverflowError:
        start = None
    if start is None or start.year < 1900:
        shown = repr(given) if given is not None else f"{since.total_seconds():g}s"
        raise UsageError(f"--since {shown}: reaches before 1900; give a shorter duration (36500d means everything)")


def default_output(node: str, started: datetime, compression: Compression) -> str:
    return f"./{bundle_stem(node, started)}{SUFFIXES[compression]}"


async def run_collection(opts: CollectOptions, progress: Progress | None = None) -> CollectResult:
    """Collect into `opts.output`; raises UsageError/OutputError before anything is written."""
    await asyncio.to_thread(validate, opts)  # stats the host root and the output: off the loop
    progress = progress or _NoProgress()
    host = HostRoot.at(opts.host_root)
    node = opts.node if opts.node else await asyncio.to_thread(detect_node_name, host)
    hosts: Obfuscator | None = None
    if opts.obfuscate.enabled:
        names = await asyncio.to_thread(host_names, host, node)
        hosts = Obfuscator.new(names) if opts.obfuscate.key is None else Obfuscator(opts.obfuscate.key, names)
        hosts.add_hostnames(opts.obfuscate.names)
        node = hosts.text(node)  # the bundle's directory and the default file name carry it
    started = datetime.now(UTC)
    top = bundle_stem(node, started)
    compression = opts.compression or compression_for(opts.output)
    output = opts.output or default_output(node, started, compression)
    target = OutputTarget(output, unique_suffix=None if opts.output else SUFFIXES[compression])
    sink = await asyncio.to_thread(target.open)
    output = target.path
    map_file: MapFile | None = None
    if hosts is not None:
        try:
            map_file = await asyncio.to_thread(opts.obfuscate.open_map, target.path, target.to_stdout or target.direct)
        except OSError as exc:
            await asyncio.to_thread(target.abandon)
            if target.partial is not None:  # ours, created just now, with nothing in it yet
                await asyncio.to_thread(_unlink_quietly, target.partial)
            raise UsageError(str(exc)) from None
    redactor = Redactor(enabled=opts.redact, rules=opts.redact_rules, hosts=hosts)
    bundle = AsyncBundle(BundleWriter(sink, top, compression))
    if hosts is not None:
        bundle.writer.pseudonymise = hosts.text
        bundle.writer.pseudonymise_json = hosts.json
    tap = await asyncio.to_thread(evidence_tap, node)
    bundle.writer.tap = tap
    ctx = CollectContext(
        host=host,
        node=node,
        since=opts.since,
        now=started,
        redactor=redactor,
        max_log_bytes=opts.max_log_bytes,
        all_runtimes=opts.all_runtimes,
        max_parse_bytes=opts.max_parse_bytes,
        run_host_tools=opts.run_host_tools if opts.run_host_tools is not None else str(host.root) == "/",
        options=opts.options,
    )
    selected = list(dict.fromkeys(opts.collectors or REGISTRY))  # `-c host -c host` runs it once
    results: dict[str, CollectorEntry] = {}
    outputs: dict[str, CollectorOutput] = {}
    starts: dict[str, float] = {}

    async def _one(name: str) -> None:
        out = outputs[name] = CollectorOutput(name, bundle, ctx)
        starts[name] = time.monotonic()
        progress.started(name)
        status: Status = "ok"
        error: str | None = None
        try:
            collector = REGISTRY.load(name)()
            await asyncio.wait_for(collector.collect(ctx, out), opts.timeout)
            if out.failures:
                status = "partial"
                error = f"{len(out.failures)} item(s) failed; first: {out.failures[0].item}: {out.failures[0].reason}"
        except CollectorSkipped as exc:
            status, error = "skipped", str(exc)
        except TimeoutError:
            status, error = "timeout", f"did not finish within --timeout {opts.timeout:g}s"
        except Exception as exc:  # one collector never sinks the bundle
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        results[name] = out.entry(status, error, starts[name])
        progress.finished(results[name])

    tasks = [asyncio.create_task(_one(n), name=f"collector:{n}") for n in selected]
    interrupted = await run_interruptible(tasks, opts.deadline)
    for name in selected:
        if name not in results:  # cancelled by signal or deadline
            out = outputs.get(name) or CollectorOutput(name, bundle, ctx)
            results[name] = out.entry("timeout", interrupted or "interrupted", starts.get(name, time.monotonic()))
    ordered = [results[n] for n in selected] + [
        CollectorEntry(n, "skipped", 0.0, "not selected (--collector)", []) for n in REGISTRY if n not in selected
    ]
    try:
        # The findings are the first write after the collectors: on a closed pipe or a full
        # disk it is often this one that fails, and it must say so like the manifest's would.
        diagnosis = await write_findings(bundle, tap, output)
        # A cancelled collector's last member may have been finished by the writer after the
        # collector's entry was made: list it there too (this runs behind every queued write).
        written = await bundle.run(lambda: {r.path for r in bundle.writer.records})
        for name, started_out in outputs.items():
            entry = results[name]
            entry.files += [p for p in started_out.in_flight if p in written and p not in entry.files]
        manifest = Manifest(
            tool_version=__version__,
            scope=NodeScope(node=node, host_root=str(opts.host_root)),
            started_at=started,
            finished_at=datetime.now(UTC),
            since=started - opts.since,
            redacted=opts.redact,
            interrupted=interrupted,
            collectors=ordered,
            redactions=redactor.counts,
        )
        await bundle.close(manifest)
        await asyncio.to_thread(target.commit)  # closes and renames the file
    except OSError as exc:
        await asyncio.to_thread(target.abandon)
        if map_file is not None:
            await asyncio.to_thread(map_file.discard)
        kept = f"; what was written is in {target.partial}" if target.partial is not None else ""
        raise OutputError(f"--output {output}: cannot write the bundle: {exc.strerror or exc}{kept}") from None
    except BaseException:
        await asyncio.to_thread(target.abandon)
        if map_file is not None:
            await asyncio.to_thread(map_file.discard)
        raise
    if hosts is not None:
        await asyncio.to_thread(opts.obfuscate.finish, hosts, map_file, target.path)
    signals.output_complete()
    return CollectResult(
        target.path,
        node,
        ordered,
        redactor.counts,
        interrupted,
        diagnosis,
        target.written,
        obfuscate_map=map_file.path if map_file is not None else None,
    )


def _unlink_quietly(path: str | os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
