"""The forwarder end to end: real sockets in, real SDK exporters out to loopback OTLP receivers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kata_debug.forwarder.file_sink import FileSink
from kata_debug.forwarder.listeners import VMADDR_CID_ANY, open_vsock, parse_listen
from kata_debug.forwarder.server import Forwarder, ForwarderConfig, ForwarderError
from kata_debug.forwarder.targets import parse_export, target_from_env
from tests.agent_wire import frame, frames, sample_span, to_bincode, to_json
from tests.hostroots import kata_node
from tests.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver, ReceivedSpan, free_port
from tests.test_trace_wire import FIXTURES, expected_spans, strict

SID = "sb0123456789"
POD = {"k8s.pod.name": "web-0", "k8s.namespace.name": "default", "k8s.pod.uid": "6f1c2c1e-0000-4000-8000-000000000001"}


@pytest.fixture
def short_tmp() -> Any:
    """Unix socket paths must stay under 108 bytes: pytest's tmp_path is too deep."""
    d = Path(tempfile.mkdtemp(prefix="kd-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@contextlib.asynccontextmanager
async def running(**kw: Any) -> AsyncIterator[Forwarder]:
    kw.setdefault("stats_interval", 0)
    kw.setdefault("batch_delay", 0.05)
    kw.setdefault("retry_initial", 0.1)
    kw.setdefault("retry_max", 0.5)
    fwd = Forwarder(ForwarderConfig(**kw))
    task = asyncio.create_task(fwd.run())
    await asyncio.wait_for(fwd.wait_started(), 10)
    if task.done():
        task.result()
    try:
        yield fwd
    finally:
        fwd.stop()
        await asyncio.wait_for(task, 30)


async def send_unix(path: Path | str, data: bytes, close: bool = True) -> asyncio.StreamWriter:
    _, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    await writer.drain()
    if close:
        writer.close()
        await writer.wait_closed()
    return writer


async def until(predicate: Any, timeout: float = 15.0) -> None:
    async def _poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(_poll(), timeout)


def _any(v: Any) -> dict[str, Any]:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return {"arrayValue": {"values": [_any(x) for x in v.array_value.values]}}
    if kind == "int_value":
        return {"intValue": str(v.int_value)}
    return {
        {"string_value": "stringValue", "bool_value": "boolValue", "double_value": "doubleValue"}[kind]: getattr(
            v, kind
        )
    }


def _kvs(kvs: Any) -> list[dict[str, Any]]:
    return sorted(({"key": kv.key, "value": _any(kv.value)} for kv in kvs), key=lambda kv: kv["key"])


def received_view(r: ReceivedSpan, own_resource_keys: set[str]) -> dict[str, Any]:
    """A span as the OTLP receiver got it, in the fixture's shape (see test_trace_wire)."""
    s = r.span
    own = [{"key": k, "value": v} for k, v in r.resource.items() if k in own_resource_keys]
    return {
        "traceId": s.trace_id.hex(),
        "spanId": s.span_id.hex(),
        "parentSpanId": s.parent_span_id.hex(),
        "traceState": s.trace_state,
        "name": s.name,
        "kind": s.kind,
        "startTimeUnixNano": str(s.start_time_unix_nano),
        "endTimeUnixNano": str(s.end_time_unix_nano),
        "attributes": _kvs(s.attributes),
        "droppedAttributesCount": s.dropped_attributes_count,
        "events": [
            {"attributes": _kvs(e.attributes), "name": e.name, "timeUnixNano": str(e.time_unix_nano)} for e in s.events
        ],
        "droppedEventsCount": s.dropped_events_count,
        "links": [
            {
                "attributes": _kvs(ln.attributes),
                "spanId": ln.span_id.hex(),
                "traceId": ln.trace_id.hex(),
                "traceState": ln.trace_state,
            }
            for ln in s.links
        ],
        "droppedLinksCount": s.dropped_links_count,
        "status": {"code": s.status.code, "message": s.status.message},
        "resource": sorted(
            ({"key": o["key"], "value": {"stringValue": o["value"]}} for o in own), key=lambda kv: kv["key"]
        )
        or None,
    }


async def test_fixture_streams_over_hvsock_and_unix_reach_http_and_grpc_receivers_tagged_with_their_pod(
    short_tmp: Path,
) -> None:
    root = kata_node(short_tmp / "h")
    http = await OtlpHttpReceiver().start()
    grpc_rx = await OtlpGrpcReceiver().start()
    bincode = (FIXTURES / "bincode/stream.bincode.bin").read_bytes()
    jsn = (FIXTURES / "json/stream.json.bin").read_bytes()
    try:
        async with running(
            listen=[f"hvsock:///run/vc/vm/{SID}/clh.sock", f"unix://{short_tmp}/other.sock?sandbox=elsewhere"],
            exports=[parse_export(http.export_uri + "?compression=gzip"), parse_export(grpc_rx.export_uri)],
            host_root=str(root),
            node_name="node-a",
        ) as fwd:
            hv = root / f"run/vc/vm/{SID}/clh.sock_10240"
            assert hv.is_socket()
            # Several agents at once: three streams per listener, both formats.
            await asyncio.gather(
                *[send_unix(hv, bincode) for _ in range(3)],
                *[send_unix(short_tmp / "other.sock", jsn) for _ in range(3)],
            )
            total = 3 * (147 + 151)
            await http.wait_for_spans(total)
            await grpc_rx.wait_for_spans(total)
            assert fwd.stats.spans == total and fwd.stats.decode_errors == 0
    finally:
        await http.stop()
        await grpc_rx.stop()

    assert "gzip" in http.encodings
    for rx in (http, grpc_rx):
        by_sandbox: dict[str, list[ReceivedSpan]] = {}
        for r in rx.spans:
            by_sandbox.setdefault(r.resource["kata.sandbox.id"], []).append(r)
        assert {k: len(v) for k, v in by_sandbox.items()} == {SID: 3 * 147, "elsewhere": 3 * 151}
        ours = by_sandbox[SID][0].resource
        assert {k: ours[k] for k in POD} == POD
        assert ours["service.name"] == "kata-agent" and ours["k8s.node.name"] == "node-a"
        assert ours["host.name"] == "kata-node-1"  # the node's /etc/hostname under the host root
        assert "k8s.pod.name" not in by_sandbox["elsewhere"][0].resource  # no OCI spec for it
        for sandbox, fmt in ((SID, "bincode"), ("elsewhere", "json")):
            want = [strict(e) for e in expected_spans(fmt)]
            got = sorted(
                # The fixture spans that carry a resource carry {host.arch, service.name}.
                (
                    strict(received_view(r, {"host.arch", "service.name"} if "host.arch" in r.resource else set()))
                    for r in by_sandbox[sandbox]
                ),
                key=lambda d: json.dumps(d, sort_keys=True),
            )
            assert got == sorted(want * 3, key=lambda d: json.dumps(d, sort_keys=True)), (rx, fmt)
            # A span's own resource attributes are kept (the fixture's carry host.arch).
            assert sum("host.arch" in r.resource for r in by_sandbox[sandbox]) == 3 * sum(
                e["resource"] is not None for e in expected_spans(fmt)
            )


async def test_guest_cannot_claim_another_sandbox_identity(short_tmp: Path) -> None:
    root = kata_node(short_tmp / "h")
    span = sample_span(1)
    span.resource = [
        ("kata.sandbox.id", "victim"),
        ("k8s.pod.name", "victim-pod"),
        ("service.name", "agent-x"),
        ("host.arch", "arm64"),
    ]
    http = await OtlpHttpReceiver().start()
    try:
        async with running(
            listen=[f"hvsock:///run/vc/vm/{SID}/clh.sock"], exports=[parse_export(http.export_uri)], host_root=str(root)
        ):
            await send_unix(root / f"run/vc/vm/{SID}/clh.sock_10240", frame(to_json(span)))
            (got,) = await http.wait_for_spans(1)
    finally:
        await http.stop()
    assert got.resource["kata.sandbox.id"] == SID and got.resource["k8s.pod.name"] == "web-0"
    assert got.resource["service.name"] == "agent-x" and got.resource["host.arch"] == "arm64"


async def test_malformed_frames_are_skipped_counted_and_logged_while_good_ones_flow(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kata_debug.forwarder")
    sock = short_tmp / "t.sock"
    http = await OtlpHttpReceiver().start()
    good = [to_bincode(sample_span(i)) for i in range(4)]
    try:
        async with running(
            listen=[f"unix://{sock}?sandbox=sbX"],
            exports=[parse_export(http.export_uri)],
            host_root=str(short_tmp),
            max_frame_bytes=4096,
        ) as fwd:
            # good, garbage, good, empty, good, bit-flipped good, good, then EOF inside a frame
            flipped = bytearray(good[0])
            flipped[35] = 0xFF  # span_kind tag (after the 27-byte span context and the parent id)
            await send_unix(
                sock,
                frames([good[0], b"\x01\x02garbage", good[1], b"", good[2], bytes(flipped), good[3]])
                + frame(good[0])[:20],
            )
            # A header announcing more than --max-frame-bytes closes only that connection...
            oversized = await send_unix(sock, frame(good[0]) + (2**40).to_bytes(8, "big") + b"x" * 100, close=False)
            await until(lambda: fwd.stats.oversized_frames == 1)
            # ...and the next connection is served as usual.
            await send_unix(sock, frame(to_bincode(sample_span(9))))
            await http.wait_for_spans(6)
            await until(lambda: fwd.stats.truncated_frames == 1)
            stats = fwd.stats
            oversized.close()
    finally:
        await http.stop()
    assert sorted(r.span.span_id.hex() for r in http.spans) == sorted(
        f"{sample_span(i).span_id:016x}" for i in (0, 1, 2, 3, 0, 9)
    )
    assert (stats.frames, stats.spans, stats.decode_errors) == (9, 6, 3)
    assert (stats.oversized_frames, stats.truncated_frames) == (1, 1)
    text = caplog.text
    assert "sandbox=sbX: skipping undecodable frame of 9 bytes" in text
    assert "bincode: unknown span_kind tag" in text
    assert "sandbox=sbX: closing connection: frame length 1099511627776 exceeds the 4096-byte limit" in text
    assert "sandbox=sbX: stream ended inside a frame (20 bytes held" in text


async def test_backend_down_then_up_delivers_what_was_queued(short_tmp: Path) -> None:
    port = free_port()
    sock = short_tmp / "t.sock"
    async with running(
        listen=[f"unix://{sock}"],
        exports=[parse_export(f"otlp+http://127.0.0.1:{port}/v1/traces?timeout=1")],
        host_root=str(short_tmp),
    ) as fwd:
        await send_unix(sock, frames(to_json(sample_span(i)) for i in range(50)))
        await until(
            lambda: fwd.stats.per_exporter and next(iter(fwd.stats.per_exporter.values()))[0].failed_exports >= 1
        )
        http = await OtlpHttpReceiver().start(port)
        try:
            got = await http.wait_for_spans(50, timeout=30)
            # The receiver has the spans before the export call returns; until then the
            # batch is still in flight, and counted as queued.
            await until(lambda: next(iter(fwd.stats.per_exporter.values()))[0].exported == 50)
        finally:
            await http.stop()
        stats, queued = next(iter(fwd.stats.per_exporter.values()))
    assert {int.from_bytes(r.span.span_id, "big") for r in got} == {sample_span(i).span_id for i in range(50)}
    assert stats.exported == 50 and stats.dropped == 0 and queued == 0


async def test_full_queue_drops_the_oldest_spans_and_counts_them(short_tmp: Path) -> None:
    port = free_port()
    sock = short_tmp / "t.sock"
    async with running(
        listen=[f"unix://{sock}"],
        exports=[parse_export(f"otlp+grpc://127.0.0.1:{port}?timeout=1")],
        host_root=str(short_tmp),
        queue_size=10,
    ) as fwd:
        await send_unix(sock, frames(to_bincode(sample_span(i)) for i in range(30)))
        await until(lambda: fwd.stats.spans == 30)
        # Once an export has failed, its batch is back in the queue: 10 kept, the 20 oldest dropped.
        await until(lambda: next(iter(fwd.stats.per_exporter.values()))[0].failed_exports >= 1)
        stats, queued = next(iter(fwd.stats.per_exporter.values()))
        assert stats.dropped == 20
        rx = await OtlpGrpcReceiver().start(port)
        try:
            got = await rx.wait_for_spans(10, timeout=30)
        finally:
            await rx.stop()
    assert {int.from_bytes(r.span.span_id, "big") for r in got} == {sample_span(i).span_id for i in range(20, 30)}


async def test_discover_attaches_a_listener_to_each_new_sandbox_and_detaches_when_it_goes(short_tmp: Path) -> None:
    root = kata_node(short_tmp / "h")
    http = await OtlpHttpReceiver().start()
    vmm_sockets = {
        SID: root / f"run/vc/vm/{SID}/clh.sock",  # Cloud Hypervisor (Go runtime)
        "fc1": root / "run/vc/firecracker/fc1/root/kata.hvsock",  # Firecracker (jailed)
        "rs1": root / "run/kata/rs1/root/kata.hvsock",  # runtime-rs (Dragonball, CLH, FC)
    }
    vmms: list[socket.socket] = []

    def start_vmm(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        s.listen()
        vmms.append(s)

    try:
        async with running(
            listen=["discover"], exports=[parse_export(http.export_uri)], host_root=str(root), discover_interval=0.05
        ) as fwd:
            for sid, path in vmm_sockets.items():
                start_vmm(path)
                trace_sock = Path(f"{path}_10240")
                await until(trace_sock.exists)
                await send_unix(trace_sock, frame(to_json(sample_span(len(vmms), sandbox_attr=sid))))
            got = await http.wait_for_spans(3)
            assert {r.resource["kata.sandbox.id"] for r in got} == set(vmm_sockets)
            assert next(r for r in got if r.resource["kata.sandbox.id"] == SID).resource["k8s.pod.name"] == "web-0"
            assert len(fwd.listeners) == 3
            # The sandbox goes away: its listener is closed and its socket removed.
            vmms[1].close()
            shutil.rmtree(root / "run/vc/firecracker/fc1")
            await until(lambda: len(fwd.listeners) == 2)
            vmm_sockets[SID].unlink()
            await until(lambda: len(fwd.listeners) == 1)
            assert not Path(f"{vmm_sockets[SID]}_10240").exists()
            # A stale trace socket left by a crashed forwarder is replaced, not a reason to give up.
            stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stale.bind(f"{vmm_sockets[SID]}_10240")
            stale.close()
            start_vmm(vmm_sockets[SID])
            await until(lambda: len(fwd.listeners) == 2)
            await send_unix(f"{vmm_sockets[SID]}_10240", frame(to_bincode(sample_span(42))))
            await http.wait_for_spans(4)
    finally:
        await http.stop()
        for s in vmms:
            s.close()


async def test_a_live_trace_socket_of_another_forwarder_is_left_alone(short_tmp: Path) -> None:
    root = kata_node(short_tmp / "h")
    first_sock = root / f"run/vc/vm/{SID}/clh.sock_10240"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(first_sock))
    other.listen()
    try:
        with pytest.raises(ForwarderError, match="another process is already listening there"):
            async with running(
                listen=[f"hvsock:///run/vc/vm/{SID}/clh.sock"], host_root=str(root), exports=[parse_export("stdout")]
            ):
                pass
        assert first_sock.is_socket()
    finally:
        other.close()


async def test_vsock_listener_binds_and_closes() -> None:
    """Binding AF_VSOCK works without a hypervisor; connecting does not, so the bind path is tested."""
    port = 20000 + free_port() % 20000

    def no_guest(peer: Any) -> asyncio.Protocol:
        raise AssertionError("no guest can connect here")

    listener = await open_vsock(VMADDR_CID_ANY, port, f"vsock://any:{port}", no_guest)
    try:
        assert listener.address == (VMADDR_CID_ANY, port)
    finally:
        await listener.close()
    async with running(listen=[f"vsock://any:{port}"], exports=[parse_export("stdout")]) as fwd:
        assert [ln.address for ln in fwd.listeners] == [(VMADDR_CID_ANY, port)]


async def test_a_listener_that_cannot_open_is_reported_and_the_others_carry_on(short_tmp: Path) -> None:
    sock = short_tmp / "ok.sock"
    async with running(
        listen=[f"unix://{short_tmp}/missing-dir/x.sock", f"unix://{sock}"],
        exports=[parse_export("stdout")],
        host_root=str(short_tmp),
    ) as fwd:
        assert len(fwd.listeners) == 1
        assert fwd.listener_errors == [
            f"{short_tmp}/missing-dir/x.sock: directory {short_tmp}/missing-dir does not exist"
        ]


def test_file_sink_rotates_and_keeps_at_most_backups_plus_one_files(short_tmp: Path) -> None:
    from kata_debug.forwarder.spans import Origin

    origin = Origin.make("sb", "test", (("service.name", "kata-agent"),), ())
    sink = FileSink(short_tmp / "spool/spans.jsonl", max_bytes=4000, backups=2)
    for i in range(40):
        assert sink.export([(sample_span(i), origin)])
    sink.shutdown()
    files = sorted(p.name for p in (short_tmp / "spool").iterdir())
    assert files == ["spans.jsonl", "spans.jsonl.1", "spans.jsonl.2"]
    assert all((short_tmp / "spool" / f).stat().st_size <= 4000 for f in files)
    newest = [json.loads(line) for line in (short_tmp / "spool/spans.jsonl").read_text().splitlines()]
    last = newest[-1]["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert last["spanId"] == f"{sample_span(39).span_id:016x}"


def test_listen_and_export_uris_are_parsed_or_rejected_with_the_reason() -> None:
    assert parse_listen("vsock://any:10240").cid == VMADDR_CID_ANY
    assert parse_listen("vsock://3:1234").cid == 3
    hv = parse_listen("hvsock:///run/vc/firecracker/abc/root/kata.hvsock?port=1025")
    assert (hv.path, hv.port, hv.sandbox_id) == ("/run/vc/firecracker/abc/root/kata.hvsock", 1025, "abc")
    assert parse_listen("tcp://127.0.0.1:4000?sandbox=s").sandbox_id == "s"
    for bad, why in [
        ("vsock://x:1", "not a number"),
        ("hvsock://run/x", "three slashes"),
        ("tcp://127.0.0.1", "no port"),
        ("udp://1", "unknown listener"),
        ("unix:///a?port=3", "unknown parameter"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_listen(bad)
    assert parse_export("otlp+grpc://c:4317").endpoint == "c:4317"
    assert parse_export("otlp+http://c:4318").endpoint == "http://c:4318/v1/traces"
    assert parse_export("otlp+https://c/x?compression=none").endpoint == "https://c:4318/x"
    f = parse_export("file:///var/spool/s.jsonl?max_bytes=100&backups=1")
    assert (f.path, f.max_bytes, f.backups) == ("/var/spool/s.jsonl", 100, 1)
    for bad, why in [
        ("http://c", "unknown exporter"),
        ("file://rel/x", "absolute path"),
        ("otlp+grpc://c:1/v1", "no path"),
        ("otlp+http://c?compression=br", "compression"),
        ("file:///x?max_bytes=0", "positive"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_export(bad)
    assert target_from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}).kind == "otlp-grpc"
    assert target_from_env({}).kind == "otlp-http"
    with pytest.raises(ValueError, match="http/json"):
        target_from_env({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"})


async def test_link_trace_state_flags_and_repeated_event_keys_reach_the_backend(short_tmp: Path) -> None:
    from kata_debug.forwarder.spans import Event, Link

    span = sample_span(5)
    span.trace_state = (("kata", "1"), ("vendor", "x"))
    span.links = [Link(0xABC, 0xDEF, 1, True, (("k", "v"),), [("link.kind", "follows")], 2)]
    span.events = [Event("retry", span.start_time_unix_nano + 5, [("attempt", 1), ("attempt", 2)], 1)]
    span.dropped_events_count, span.dropped_links_count = 3, 4
    rx = await OtlpGrpcReceiver().start()
    try:
        async with running(
            listen=[f"unix://{short_tmp}/a.sock"], exports=[parse_export(rx.export_uri)], host_root=str(short_tmp)
        ):
            await send_unix(short_tmp / "a.sock", frame(to_bincode(span)))
            (got,) = await rx.wait_for_spans(1)
    finally:
        await rx.stop()
    s = got.span
    assert (s.trace_state, s.flags, s.dropped_events_count, s.dropped_links_count) == ("kata=1,vendor=x", 1, 3, 4)
    (link,) = s.links
    assert (link.trace_state, link.flags, link.dropped_attributes_count) == ("k=v", 0x301, 2)
    assert [(kv.key, kv.value.int_value) for kv in s.events[0].attributes] == [("attempt", 1), ("attempt", 2)]
    assert s.events[0].dropped_attributes_count == 1


async def test_a_batch_larger_than_the_backend_accepts_goes_as_several_requests(short_tmp: Path) -> None:
    """A receiver refuses (413) every body over its limit: one big request would be retried forever."""
    sock = short_tmp / "t.sock"
    http = await OtlpHttpReceiver(max_body=16 * 1024).start()
    try:
        async with running(
            listen=[f"unix://{sock}"],
            host_root=str(short_tmp),
            batch_delay=0.5,
            exports=[parse_export(f"{http.export_uri}?max_request_bytes=16384")],
        ) as fwd:
            await send_unix(sock, frames(to_json(sample_span(i)) for i in range(400)))
            got = await http.wait_for_spans(400, timeout=30)
            stats, _ = next(iter(fwd.stats.per_exporter.values()))
    finally:
        await http.stop()
    assert sorted(int.from_bytes(r.span.span_id, "big") for r in got) == [sample_span(i).span_id for i in range(400)]
    assert len(http.body_sizes) > 1 and max(http.body_sizes) <= 16 * 1024
    assert stats.exported == 400 and stats.failed_exports == 0


class _FlakySink:
    """Delivers the first `first_delivery` spans of the first batch, then fails once."""

    name = "flaky"

    def __init__(self, first_delivery: int) -> None:
        self.first_delivery = first_delivery
        self.calls = 0
        self.delivered: list[int] = []

    def export(self, batch: Any) -> int:
        self.calls += 1
        n = self.first_delivery if self.calls == 1 else len(batch)
        self.delivered += [span.span_id for span, _ in batch[:n]]
        return n

    def shutdown(self) -> None:
        pass


async def test_a_partly_delivered_batch_retries_only_the_rest(short_tmp: Path) -> None:
    sock = short_tmp / "t.sock"
    sink = _FlakySink(first_delivery=7)
    async with running(listen=[f"unix://{sock}"], host_root=str(short_tmp), sinks=[sink], batch_delay=0.5) as fwd:
        await send_unix(sock, frames(to_bincode(sample_span(i)) for i in range(20)))
        await until(lambda: len(sink.delivered) >= 20)
        await until(lambda: next(iter(fwd.stats.per_exporter.values()))[0].exported >= 20)  # export returned
        stats, queued = next(iter(fwd.stats.per_exporter.values()))
    assert sink.delivered == [sample_span(i).span_id for i in range(20)], "each span once, in order"
    assert stats.exported == 20 and stats.failed_exports == 1 and queued == 0


class _DownSink:
    """A backend that is down: every export fails at once, delivering nothing."""

    name = "down"

    def export(self, batch: Any) -> int:
        return 0

    def shutdown(self) -> None:
        pass


def _big_payload(i: int, blob: int = 900_000) -> bytes:
    """A bincode span carrying `blob` bytes of attribute: near the 1 MiB frame limit."""
    span = sample_span(i)
    span.attributes.append(("blob", "x" * blob))
    return to_bincode(span)


async def test_big_frames_with_the_backend_down_are_held_within_queue_bytes(short_tmp: Path) -> None:
    """A guest sending maximum-size frames cannot make an exporter hold more than queue_bytes.

    The span cap (10,000 by default) alone would keep all 20 spans here, 18 MB.
    """
    sock = short_tmp / "t.sock"
    payloads = [_big_payload(i) for i in range(20)]
    size = len(payloads[0])
    assert {len(p) for p in payloads} == {size} and 3 * size <= 3 << 20 < 4 * size
    # One failed export, then a retry far beyond the test: the queue is observed at rest.
    async with running(
        listen=[f"unix://{sock}?sandbox=sbB"],
        host_root=str(short_tmp),
        sinks=[_DownSink()],
        queue_bytes=3 << 20,
        retry_initial=600,
        retry_max=600,
        shutdown_timeout=0.5,
    ) as fwd:
        await send_unix(sock, frames(payloads))
        await until(lambda: fwd.stats.spans == 20)
        await until(lambda: next(iter(fwd.stats.per_exporter.values()))[0].failed_exports >= 1)
        (pipeline,) = fwd.pipelines
        stats, queued = next(iter(fwd.stats.per_exporter.values()))
        assert [span.span_id for span, _ in pipeline._q] == [sample_span(i).span_id for i in (17, 18, 19)]
        assert (queued, pipeline.queued_bytes, stats.dropped) == (3, 3 * size, 17)
    # At the shutdown deadline the 3 held spans are dropped too: every span is accounted for.
    assert (stats.dropped, stats.exported, len(pipeline), pipeline.held_bytes) == (20, 0, 0, 0)


class _HangingSink:
    """A backend that accepts the connection and then does not answer until released."""

    name = "hanging"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def export(self, batch: Any) -> int:
        self.entered.set()
        self.release.wait(30)
        return len(batch)

    def shutdown(self) -> None:
        self.release.set()


async def test_queued_counts_the_batch_being_exported_while_the_backend_hangs(short_tmp: Path) -> None:
    sock = short_tmp / "t.sock"
    sink = _HangingSink()
    async with running(listen=[f"unix://{sock}"], host_root=str(short_tmp), sinks=[sink]) as fwd:
        await send_unix(sock, frames(to_bincode(sample_span(i)) for i in range(5)))
        await until(lambda: fwd.stats.spans == 5 and sink.entered.is_set())
        await send_unix(sock, frames(to_bincode(sample_span(i)) for i in range(5, 7)))
        await until(lambda: fwd.stats.spans == 7)
        stats, queued = next(iter(fwd.stats.per_exporter.values()))
        line = fwd.stats.line()
        assert queued == 7 and stats.exported == 0, "the 5 in flight are held, not gone"
        assert "exported=0 dropped=0 failed_exports=0 poisoned=0 queued=7]" in line
        sink.release.set()
        await until(lambda: next(iter(fwd.stats.per_exporter.values()))[0].exported == 7)
        assert next(iter(fwd.stats.per_exporter.values()))[1] == 0
