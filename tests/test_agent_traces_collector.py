"""The `agent-traces` collector packs the forwarder's span spool into the node bundle."""

from __future__ import annotations

import json
from pathlib import Path

from kata_debug.collect.runner import CollectOptions, run_collection
from kata_debug.collectors.base import CollectorOptions
from kata_debug.forwarder.file_sink import FileSink
from kata_debug.forwarder.spans import Origin
from tests.agent_wire import sample_span
from tests.bundles import read_bundle
from tests.hostroots import kata_node


def _spool(dir_: Path, spans: int, max_bytes: int = 1 << 20) -> None:
    """Fill a spool exactly as the forwarder's file sink does."""
    origin = Origin.make(
        "sb0123456789", "test", (("service.name", "kata-agent"),), (("kata.sandbox.id", "sb0123456789"),)
    )
    sink = FileSink(dir_ / "spans.jsonl", max_bytes=max_bytes, backups=2)
    for i in range(spans):
        span = sample_span(i)
        span.attributes.append(("http.request.header.authorization", "Bearer tok-hunter2"))
        assert sink.export([(span, origin)])
    sink.shutdown()


async def test_spooled_spans_and_their_rotations_are_in_the_bundle_redacted(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    _spool(root / "var/lib/kata-debug/traces", spans=30, max_bytes=8000)
    (root / "var/lib/kata-debug/traces/notes.txt").write_text("not a spool file")
    result = await run_collection(
        CollectOptions(host_root=root, output=str(tmp_path / "b.tar.gz"), collectors=["agent-traces"])
    )
    bundle = read_bundle(tmp_path / "b.tar.gz")
    assert bundle.collector("agent-traces")["status"] == "ok" and result.exit_code == 0
    index = bundle.json("agent-traces/index.json")
    assert [f["name"] for f in index["files"]] == ["spans.jsonl", "spans.jsonl.1", "spans.jsonl.2"]
    assert "agent-traces/notes.txt" not in bundle.members
    lines = [
        json.loads(line)
        for name in ("spans.jsonl.2", "spans.jsonl.1", "spans.jsonl")
        for line in bundle.members[f"agent-traces/{name}"].decode().splitlines()
    ]
    spans = [s for req in lines for rs in req["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert spans[-1]["spanId"] == f"{sample_span(29).span_id:016x}"  # the newest span is there
    resource = {kv["key"]: kv["value"]["stringValue"] for kv in lines[-1]["resourceSpans"][0]["resource"]["attributes"]}
    assert resource["kata.sandbox.id"] == "sb0123456789"
    # Spool files go through the bundle's redaction like any other evidence.
    assert b"hunter2" not in b"".join(bundle.members.values())
    # a secret-named attribute loses its whole value, not just the token
    assert (
        b'{"key":"http.request.header.authorization","value":{"stringValue":"***"}}'
        in bundle.members["agent-traces/spans.jsonl"]
    )
    assert bundle.manifest["redactions"]["otlp-attribute"] > 0


async def test_spool_dir_option_and_missing_spool(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    _spool(root / "srv/traces", spans=3)
    await run_collection(
        CollectOptions(
            host_root=root,
            output=str(tmp_path / "a.tar.gz"),
            collectors=["agent-traces"],
            options=CollectorOptions(trace_spool_dir="/srv/traces"),
        )
    )
    bundle = read_bundle(tmp_path / "a.tar.gz")
    assert [f["name"] for f in bundle.json("agent-traces/index.json")["files"]] == ["spans.jsonl"]
    assert bundle.json("agent-traces/index.json")["spool_dir"] == "/srv/traces"

    await run_collection(CollectOptions(host_root=root, output=str(tmp_path / "b.tar.gz"), collectors=["agent-traces"]))
    entry = read_bundle(tmp_path / "b.tar.gz").collector("agent-traces")
    assert entry["status"] == "skipped"
    assert "no span spool at /var/lib/kata-debug/traces" in json.dumps(entry)
