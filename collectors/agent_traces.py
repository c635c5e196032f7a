"""The kata-agent spans the forwarder spooled on this node.

The forwarder (`kata-debug forward --export file://...` or the node agent) keeps a
size-capped spool of OTLP/JSON lines; packing it puts the agent's own view of the failing
RPCs (create_container, start_container, ...) in the bundle next to the shim and VMM logs.
The files are OTLP/JSON, so a maintainer can load them into any OpenTelemetry backend with
the Collector's `otlpjsonfile` receiver.
"""

from __future__ import annotations

import asyncio
import re
import stat
from datetime import UTC, datetime
from typing import Any

from kata_debug.collectors.base import CollectContext, Collector, CollectorOutput, CollectorSkipped
from kata_debug.node.hostroot import HostDir, describe
from kata_debug.node.paths import TRACE_SPOOL_DIR

# The live file and its rotations (`spans.jsonl`, `spans.jsonl.1`, ...).
_SPOOL_FILE = re.compile(r"^[^/]+\.jsonl(?:\.\d+)?$")


def _rotation(name: str) -> tuple[str, int]:
    base, _, n = name.rpartition(".")
    return (base, int(n)) if n.isdigit() else (name, 0)


def _list_spool(spool: HostDir) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in spool.names():
        if not _SPOOL_FILE.match(name):
            continue
        try:
            st = spool.lstat(name)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        rows.append(
            {
                "name": name,
                "size": st.st_size,
                "mtime": datetime.fromtimestamp(st.st_mtime, UTC).isoformat(),
            }
        )
    # Live file first, then its rotations newest to oldest.
    rows.sort(key=lambda r: _rotation(r["name"]))
    return rows


class AgentTracesCollector(Collector):
    name = "agent-traces"
    summary = "kata-agent spans spooled by the trace forwarder on this node (OTLP/JSON lines)"
    reads = (f"{TRACE_SPOOL_DIR}/*.jsonl[.N] (collect --trace-spool-dir)",)

    async def collect(self, ctx: CollectContext, out: CollectorOutput) -> None:
        spool_dir = ctx.options.trace_spool_dir
        if not await asyncio.to_thread(ctx.host.is_dir, spool_dir):
            raise CollectorSkipped(
                f"no span spool at {spool_dir} (start `kata-debug forward --export file://{spool_dir}/spans.jsonl` "
                "or the node agent to record agent traces)"
            )

        def _list() -> tuple[str, list[dict[str, Any]]]:
            with ctx.host.open_dir(spool_dir) as d:
                return d.path, _list_spool(d)

        try:
            where, files = await asyncio.to_thread(_list)
        except OSError as exc:
            out.item_failed(spool_dir, describe(exc))
            return
        copied = []
        for row in files:
            # Opened by a walk from the root: a spool file swapped for a link since the listing stays inside it.
            if await out.add_host_file(row["name"], f"{where.rstrip('/')}/{row['name']}", max_bytes=ctx.max_log_bytes):
                copied.append(row)
        await out.add_json(
            "index.json",
            {
                "spool_dir": spool_dir,
                "format": "OTLP/JSON lines: one ExportTraceServiceRequest per line (Collector otlpjsonfile receiver)",
                "files": copied,
                "missing": [] if files else [f"the spool {spool_dir} holds no span files yet"],
            },
        )
