"""OCI specs of Kata sandboxes and containers, with an index a maintainer can read first.

The spec is what the runtime was actually asked to do: its annotations identify the pod and
its `linux.resources` are the limits Kata sizes the VM from.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from kata_debug.collectors.base import CollectContext, Collector, CollectorOutput, member_name
from kata_debug.node.hostroot import HostItemError
from kata_debug.node.oci import CONTAINERD_TASK_ROOT, CRIO_ROOT, OciBundle, iter_bundles


class OciSpecsCollector(Collector):
    name = "oci-specs"
    summary = "config.json of every Kata task bundle (containerd, CRI-O) plus an index of sandboxes, pods and limits"
    reads = (
        f"{CONTAINERD_TASK_ROOT}/<ns>/<id>/{{config.json,runtime,shim-binary-path}}",
        f"{CRIO_ROOT}/<id>/userdata/config.json",
    )

    async def collect(self, ctx: CollectContext, out: CollectorOutput) -> None:
        failed: list[HostItemError] = []
        bundles: list[OciBundle] = await asyncio.to_thread(
            lambda: list(iter_bundles(ctx.host, failed, ctx.max_parse_bytes))
        )
        for f in failed:
            out.item_failed(f.path, f.reason)
        index: list[dict[str, Any]] = []
        skipped: Counter[str] = Counter()
        for b in bundles:
            e = b.entry
            if not (e.kata or ctx.all_runtimes):
                skipped[e.runtime or "unknown"] += 1
                continue
            # Names come from the node's directories: one safe path component each.
            where = "/".join(member_name(p) for p in (e.engine, e.namespace, e.id) if p is not None)
            if e.error:
                out.item_failed(f"{e.bundle}/config.json", e.error)
                node_config = ctx.host.node_path(b.config_path)
                if await asyncio.to_thread(ctx.host.exists, node_config):
                    await out.add_host_file(f"{where}/config.json.unparsed", node_config, max_bytes=1 << 20, oci=True)
            else:
                await out.add_json(f"{where}/config.json", b.spec, oci=True)
            row = e.to_json()
            row["path"] = f"{where}/config.json"
            index.append(row)
        kata = [r for r in index if r["kata"]]
        await out.add_json(
            "index.json",
            {
                "kata_sandboxes": sorted({r["sandbox_id"] for r in kata if r["type"] == "sandbox" and r["sandbox_id"]}),
                "kata_tasks": len(kata),
                "non_kata_tasks_skipped": dict(skipped) if not ctx.all_runtimes else {},
                "missing": [] if kata else ["no Kata task bundles on this node"],
                "entries": index,
            },
        )
