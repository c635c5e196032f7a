"""`kata-debug collect --cluster`: one bundle for the whole cluster, built from the laptop.

Each Kata node already knows how to bundle itself (`kata-debug collect --output -` inside its
node agent pod); the cluster run only has to fan out through the exec API (`node_exec`), bring
those byte streams home and add the Kubernetes objects no node can see (`objects`). This
module is the orchestration: plan, then nodes N at a time next to the cluster objects, then
the manifest, with every node and the cluster part ending as a manifest entry.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from kata_debug import __version__
from kata_debug.analyze.collecting import evidence_tap, write_findings
from kata_debug.bundle.manifest import (
    ClusterScope,
    CollectorEntry,
    CollectorPodsScope,
    ItemFailure,
    Manifest,
    NodeEntry,
    NodeSelection,
)
from kata_debug.bundle.writer import SUFFIXES, AsyncBundle, BundleWriter, OutputTarget, bundle_stem
from kata_debug.cluster.ephemeral import CollectorPods
from kata_debug.cluster.node_exec import NodeCollector, agent_running
from kata_debug.cluster.objects import KATA_RUNTIME_LABEL, ClusterObjects, name_of
from kata_debug.cluster.options import ClusterOptions, default_output, validate
from kata_debug.cluster.planning import NodePlan, plan
from kata_debug.cluster.progress import ClusterProgress, NoProgress
from kata_debug.cluster.result import ClusterResult
from kata_debug.collect import signals
from kata_debug.collect.interrupts import run_interruptible
from kata_debug.errors import KataDebugError, UsageError
from kata_debug.kube.client import KubeError, KubeSession
from kata_debug.redact.obfuscate import MapFile, Obfuscator
from kata_debug.redact.redactor import Redactor


async def run_cluster_collection(opts: ClusterOptions, progress: ClusterProgress | None = None) -> ClusterResult:
    """Collect the cluster into `opts.output`. Raises UsageError/KataDebugError before writing."""
    await asyncio.to_thread(validate, opts)  # stats the output: off the loop
    session = await KubeSession.connect(opts.kubeconfig, opts.context, pool_size=opts.parallel + 8)
    try:
        return await _run(opts, session, progress or NoProgress())
    finally:
        await session.close()


async def _plan(session: KubeSession, opts: ClusterOptions) -> NodePlan:
    try:
        return await plan(session, opts)
    except KubeError as exc:
        hint = " (the API server rejected the kubeconfig's credentials)" if exc.status == 401 else ""
        status = f"HTTP {exc.status}: " if exc.status else ""
        raise KataDebugError(f"cluster {session.target.server}: {status}{exc.message}{hint}") from None


async def _run(opts: ClusterOptions, session: KubeSession, progress: ClusterProgress) -> ClusterResult:
    started = datetime.now(UTC)
    chosen = await _plan(session, opts)
    inv, names, agents = chosen.inventory, chosen.names, chosen.agents
    progress.nodes_planned(names)
    context = session.target.context
    top = bundle_stem("cluster-" + (context or "cluster"), started)
    output = opts.output or default_output(context, started, opts.compression)
    target = OutputTarget(output, unique_suffix=None if opts.output else SUFFIXES[opts.compression])
    sink = await asyncio.to_thread(target.open)
    output = target.path
    bundle = AsyncBundle(BundleWriter(sink, top, opts.compression))
    hosts: Obfuscator | None = None
    map_file: MapFile | None = None
    if opts.obfuscate.enabled:
        # One key for the run: every node pseudonymises its own bundle with it (node bundles
        # arrive compressed, with their own checksums: rewriting them here would mean
        # unpacking each one), and the laptop the cluster objects, with identical results.
        hosts = Obfuscator.new(node_host_names(inv.nodes))
        known = sorted(hosts.spec()["hostnames"])
        opts = replace(opts, obfuscate=replace(opts.obfuscate, key=bytes.fromhex(hosts.key_hex), names=known))
        try:
            map_file = await asyncio.to_thread(opts.obfuscate.open_map, target.path, target.to_stdout or target.direct)
        except OSError as exc:
            await asyncio.to_thread(target.abandon)
            raise UsageError(str(exc)) from None
        bundle.writer.pseudonymise = hosts.text
        bundle.writer.pseudonymise_json = hosts.json
    # The cluster part is analysed as it is written (RuntimeClasses, pods, events); each
    # node's bundle carries its own analysis/findings.json.
    tap = await asyncio.to_thread(evidence_tap, None)
    bundle.writer.tap = tap
    redactor = Redactor(enabled=opts.redact, rules=opts.redact_rules, hosts=hosts)
    objects = ClusterObjects(session, bundle, redactor, inv, opts.since)
    pods = CollectorPods(session, opts)
    collector = NodeCollector(opts, session, redactor, progress, pods)
    pods_scope: CollectorPodsScope | None = None
    if opts.ephemeral or any(not agent_running(agents.get(n)) for n in names):
        # Before this run makes its own: earlier runs' pods that were never deleted.
        deleted, list_error = await pods.remove_leftovers()
        pods_scope = CollectorPodsScope(opts.agent_namespace, opts.image, pods.run_id, deleted, list_error)
    results: dict[str, NodeEntry] = {r.name: r for r in chosen.early}
    for r in chosen.early:
        progress.node_finished(r)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for n in names:
        queue.put_nowait(n)

    async def worker() -> None:
        while True:
            try:
                node = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                result = await collector.collect(node, agents.get(node), bundle, chosen.agents_error)
            except KubeError as exc:
                result = NodeEntry(node, "failed", exc.message, 0.0, 0)
            results[node] = result
            progress.node_finished(result)

    objects_started = time.monotonic()
    objects_error: str | None = None

    async def cluster_part() -> None:
        nonlocal objects_error
        try:
            await objects.collect()
        except KubeError as exc:
            objects_error = exc.message
        except Exception as exc:  # a bug in one reader must not cost the node bundles
            objects_error = f"{type(exc).__name__}: {exc}"

    tasks = [asyncio.create_task(cluster_part(), name="cluster-objects")]
    tasks += [asyncio.create_task(worker(), name=f"node-worker-{i}") for i in range(min(opts.parallel, len(names)))]
    interrupted = await run_interruptible(tasks)

    for n in names:
        if n not in results:
            via_agent = agent_running(agents.get(n)) and not opts.ephemeral
            results[n] = NodeEntry(
                n,
                "failed",
                interrupted or "interrupted",
                0.0,
                0,
                pod=name_of(agents[n]) if via_agent else None,
                via="agent" if via_agent else "ephemeral",
            )
    ordered = [results[n] for n in sorted(results)]
    failures = [ItemFailure(f.item, f.reason) for f in objects.failures]
    if objects_error:
        failures.append(ItemFailure("cluster objects", objects_error))
    objects_entry = CollectorEntry(
        name="cluster-objects",
        status="failed" if objects_error else ("partial" if failures else "ok"),
        duration_s=round(time.monotonic() - objects_started, 3),
        error=objects_error
        or (f"{len(failures)} item(s) failed; first: {failures[0].item}: {failures[0].reason}" if failures else None),
        files=objects.files,
        items_failed=failures,
    )
    diagnosis = await write_findings(bundle, tap, output)
    manifest = Manifest(
        tool_version=__version__,
        scope=ClusterScope(
            context=context,
            server=session.target.server,
            node_selection=NodeSelection(
                nodes=opts.nodes,
                selector=opts.selector or (None if opts.nodes else KATA_RUNTIME_LABEL),
                plus_nodes_with_kata_pods=not (opts.nodes or opts.selector),
                source=chosen.source,
                note=chosen.note,
            ),
            kata_runtime_classes=sorted(inv.kata_runtime_classes),
            kata_pods=len(inv.kata_pods),
            nodes=ordered,
            collector_pods=pods_scope,
        ),
        started_at=started,
        finished_at=datetime.now(UTC),
        since=started - opts.since,
        redacted=opts.redact,
        interrupted=interrupted,
        collectors=[objects_entry],
        redactions=redactor.counts,
    )
    try:
        await bundle.close(manifest)
    except BaseException:
        await asyncio.to_thread(target.abandon)
        if map_file is not None:
            await asyncio.to_thread(map_file.discard)
        raise
    await asyncio.to_thread(target.commit)
    if hosts is not None:
        await asyncio.to_thread(opts.obfuscate.finish, hosts, map_file, target.path)
    signals.output_complete()
    return ClusterResult(
        target.path,
        context,
        ordered,
        failures,
        redactor.counts,
        interrupted,
        diagnosis,
        obfuscate_map=map_file.path if map_file is not None else None,
    )


def node_host_names(nodes: list[dict[str, Any]]) -> list[str]:
    """Every node's name and the host names its status reports (Hostname, InternalDNS, ExternalDNS)."""
    names: list[str] = []
    for n in nodes:
        names.append(name_of(n))
        for addr in (n.get("status") or {}).get("addresses") or []:
            if isinstance(addr, dict) and addr.get("type") in ("Hostname", "InternalDNS", "ExternalDNS"):
                names.append(str(addr.get("address") or ""))
    return [n for n in names if n]
