"""What a hostile guest can feed the forwarder must not stop the export of anyone's spans.

Real components throughout: hybrid vsock listeners (`<uds>_<port>`), the file sink, the
`trace decode` command as a process.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from kata_debug.forwarder.file_sink import FileSink
from kata_debug.forwarder.limits import BufferBudget, ListenerLimits
from kata_debug.forwarder.otlp_sink import OtlpSink
from kata_debug.forwarder.pipeline import ExportPipeline
from kata_debug.forwarder.spans import DecodeError, Origin, QueuedSpan
from kata_debug.forwarder.targets import parse_export
from kata_debug.forwarder.wire_bincode import decode_bincode
from kata_debug.forwarder.wire_json import decode_json
from tests.agent_wire import frames, sample_span, to_bincode, to_json, to_json_obj
from tests.conftest import kata_debug
from tests.hostroots import kata_node
from tests.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver
from tests.test_forwarder import SID, running, send_unix, short_tmp, until  # noqa: F401  (fixture)
from tests.test_trace_wire import fixture_payloads

LONE = "\ud800"
ORIGIN = Origin.make("sb", "test", (("service.name", "kata-agent"),), ())


def poisoned_span(i: int) -> Any:
    """A span whose strings hold lone surrogates where an agent puts text."""
    span = sample_span(i, name=f"rpc{LONE}")
    span.attributes.append((f"key{LONE}", f"value{LONE}"))
    span.attributes.append(("list", (f"a{LONE}", "b")))
    span.events[0].name = f"ev{LONE}"
    return span


def hostile_json(span: Any) -> bytes:
    """A JSON payload spelling the lone surrogates as `\\ud800` escapes, as a hostile guest may."""
    return json.dumps(to_json_obj(span), separators=(",", ":"), ensure_ascii=True).encode()


def spool_spans(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                out.extend(ss["spans"])
    return out


def test_json_decoder_replaces_lone_surrogates_and_counts_the_strings() -> None:
    span = decode_json(hostile_json(poisoned_span(1)))
    assert span.name == "rpc\ufffd"
    assert ("key\ufffd", "value\ufffd") in span.attributes
    assert ("list", ("a\ufffd", "b")) in span.attributes
    assert span.events[0].name == "ev\ufffd"
    assert span.repaired == 5  # name, key and value (one pair), list, event name
    # A surrogate pair is a character, not damage.
    ok = decode_json(to_json(sample_span(2, name="smile \U0001f600")))
    assert ok.name == "smile \U0001f600" and ok.repaired == 0


def _fixture_frame_with_invalid_utf8() -> tuple[bytes, Any]:
    """A real kata-agent bincode frame (the shared fixture) whose span name starts with an
    encoded surrogate (ED A0 80) and whose first string attribute value holds a 0xFF byte:
    same lengths, so only the strings' bytes change. Also returns the span as it decoded."""
    for payload in fixture_payloads("bincode"):
        span = decode_bincode(payload)
        text = [(k, v) for k, v in span.attributes if isinstance(v, str) and len(v.encode()) >= 2]
        if len(span.name) >= 3 and span.name.isascii() and text:
            break
    name = span.name.encode()
    key, value = text[0]
    name_at = payload.index(struct.pack("<Q", len(name)) + name) + 8
    value_field = struct.pack("<Q", len(key)) + key.encode() + struct.pack("<IQ", 3, len(value.encode()))
    value_at = payload.index(value_field + value.encode()) + len(value_field)
    bad = bytearray(payload)
    bad[name_at : name_at + 3] = b"\xed\xa0\x80"
    bad[value_at] = 0xFF
    return bytes(bad), span


def test_json_strings_with_bytes_that_are_not_utf8_are_repaired_and_counted_not_the_span_dropped() -> None:
    payload = to_json(sample_span(3, name="rpc-NAME"))
    payload = payload.replace(b"rpc-NAME", b"rpc-\xed\xa0\x80-\xff")
    span = decode_json(payload)
    assert span.name == "rpc-\ufffd\ufffd\ufffd-\ufffd" and span.repaired == 1
    with pytest.raises(DecodeError):  # outside a string it is still no JSON
        decode_json(b"\xff" + to_json(sample_span(3)))


def test_bincode_strings_with_invalid_utf8_are_repaired_and_counted_not_the_frame_dropped() -> None:
    payload, clean = _fixture_frame_with_invalid_utf8()
    span = decode_bincode(payload)
    assert span.name == "\ufffd" * 3 + clean.name[3:]
    key, value = next((k, v) for k, v in clean.attributes if isinstance(v, str) and len(v.encode()) >= 2)
    assert (key, "\ufffd" + value.encode()[1:].decode()) in span.attributes
    assert span.repaired == 2  # two strings changed, however many bytes each
    assert (span.span_id, span.trace_id, len(span.attributes)) == (clean.span_id, clean.trace_id, len(clean.attributes))
    assert decode_bincode(to_bincode(sample_span(2, name="smile \U0001f600"))).repaired == 0


def test_bincode_invalid_utf8_in_every_kind_of_string_is_repaired() -> None:
    span = sample_span(1, name="N0")
    span.attributes.append(("K1", "V1"))
    span.attributes.append(("L", ("A1", "b")))
    span.events[0].name = "E1"
    span.status_message = "S1"
    payload = to_bincode(span)
    for marker in (b"N0", b"K1", b"V1", b"A1", b"E1", b"S1"):
        assert marker in payload, marker  # (keys appear in the evict list too: not decoded)
        payload = payload.replace(marker, marker[:1] + b"\x80")
    got = decode_bincode(payload)
    assert got.name == "N\ufffd" and got.status_message == "S\ufffd" and got.events[0].name == "E\ufffd"
    assert ("K\ufffd", "V\ufffd") in got.attributes and ("L", ("A\ufffd", "b")) in got.attributes
    assert got.repaired == 6


async def test_a_bincode_span_with_invalid_utf8_over_hvsock_reaches_the_file_spool_counted(
    short_tmp: Path,  # noqa: F811
) -> None:
    root = kata_node(short_tmp / "h")
    spool = short_tmp / "spool.jsonl"
    bad, clean = _fixture_frame_with_invalid_utf8()
    good = fixture_payloads("bincode")[:20]
    async with running(
        listen=[f"hvsock:///run/vc/vm/{SID}/clh.sock"], exports=[parse_export(f"file://{spool}")], host_root=str(root)
    ) as fwd:
        await send_unix(root / f"run/vc/vm/{SID}/clh.sock_10240", frames(good[:10] + [bad] + good[10:]))
        await until(lambda: fwd.stats.per_exporter[f"file://{spool}"][0].exported == 21)
        assert fwd.stats.repaired_strings == 2 and fwd.stats.decode_errors == 0
    names = [s["name"] for s in spool_spans(spool)]
    assert len(names) == 21 and names[10] == "\ufffd" * 3 + clean.name[3:]


@pytest.mark.parametrize("receiver", [OtlpGrpcReceiver, OtlpHttpReceiver])
async def test_a_repaired_bincode_span_is_accepted_by_the_otlp_sinks(receiver: type) -> None:
    bad, clean = _fixture_frame_with_invalid_utf8()
    span = decode_bincode(bad)
    rx = await receiver().start()
    try:
        sink = OtlpSink(parse_export(rx.export_uri))
        try:
            assert await asyncio.to_thread(sink.export, [(span, ORIGIN)]) == 1
            (got,) = await rx.wait_for_spans(1)
        finally:
            sink.shutdown()
    finally:
        await rx.stop()
    assert got.span.name == "\ufffd" * 3 + clean.name[3:]


def test_trace_decode_repairs_a_bincode_frame_with_invalid_utf8_and_exits_0(tmp_path: Path) -> None:
    bad, clean = _fixture_frame_with_invalid_utf8()
    good = fixture_payloads("bincode")[:2]
    stream = tmp_path / "hostile.bincode.bin"
    stream.write_bytes(frames([good[0], bad, good[1]]))
    res = kata_debug("trace", "decode", str(stream), "--wire-format", "bincode")
    assert res.returncode == 0, res.stderr
    assert b"internal error" not in res.stderr
    names = [s["name"] for line in res.stdout.decode().splitlines() for s in _spans(line)]
    assert names == [decode_bincode(good[0]).name, "\ufffd" * 3 + clean.name[3:], decode_bincode(good[1]).name]


async def test_a_lone_surrogate_span_over_hvsock_reaches_the_file_spool_with_everything_around_it(
    short_tmp: Path,  # noqa: F811
) -> None:
    root = kata_node(short_tmp / "h")
    spool = short_tmp / "spool.jsonl"
    good = [to_json(sample_span(i)) for i in range(50)]
    payloads = good[:25] + [hostile_json(poisoned_span(99))] + good[25:]
    async with running(
        listen=[f"hvsock:///run/vc/vm/{SID}/clh.sock"], exports=[parse_export(f"file://{spool}")], host_root=str(root)
    ) as fwd:
        await send_unix(root / f"run/vc/vm/{SID}/clh.sock_10240", frames(payloads))
        await until(lambda: fwd.stats.per_exporter[f"file://{spool}"][0].exported == 51)
        assert fwd.stats.repaired_strings == 5 and fwd.stats.decode_errors == 0
    names = [s["name"] for s in spool_spans(spool)]
    assert len(names) == 51 and names[25] == "rpc\ufffd"


async def test_a_span_no_sink_can_encode_is_isolated_and_dropped_not_the_batch(tmp_path: Path) -> None:
    # Bypasses the decoders: a span built with a lone surrogate, as a sink could receive from
    # any future bug. The file sink raises on it (UnicodeEncodeError); the batch must not be lost.
    spool = tmp_path / "spool.jsonl"
    sink = FileSink(spool)
    pipe = ExportPipeline(sink, batch_size=64, batch_delay=0.01, retry_initial=0.05)
    task = asyncio.create_task(pipe.run())
    items: list[QueuedSpan] = [(sample_span(i), ORIGIN) for i in range(60)]
    items[17] = (sample_span(17, name=LONE), ORIGIN)
    items[40] = (sample_span(40, name=f"x{LONE}"), ORIGIN)
    pipe.put_many(items, [100] * len(items))
    await until(lambda: pipe.stats.exported + pipe.stats.poisoned == 60, timeout=10)
    pipe.put_many([(sample_span(100), ORIGIN)], [100])  # the pipeline goes on
    await until(lambda: pipe.stats.exported == 59, timeout=10)
    pipe.close()
    await asyncio.wait_for(task, 10)
    pipe.finish()
    assert pipe.stats.poisoned == 2 and pipe.stats.failed_exports == 0
    names = [s["name"] for s in spool_spans(spool)]
    assert names == [sample_span(i).name for i in range(60) if i not in (17, 40)] + [sample_span(100).name]


class _Flaky:
    """A sink whose backend is down for its first export: a short count, retried, not isolated."""

    name = "flaky"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def export(self, batch: Sequence[QueuedSpan]) -> int:
        self.calls.append(len(batch))
        return 0 if len(self.calls) == 1 else len(batch)

    def shutdown(self) -> None:
        pass


async def test_a_backend_outage_is_still_retried_whole() -> None:
    sink = _Flaky()
    pipe = ExportPipeline(sink, batch_size=64, batch_delay=0.01, retry_initial=0.05)
    task = asyncio.create_task(pipe.run())
    pipe.put_many([(sample_span(i), ORIGIN) for i in range(10)], [1] * 10)
    await until(lambda: pipe.stats.exported == 10, timeout=10)
    pipe.close()
    await asyncio.wait_for(task, 10)
    pipe.finish()
    assert sink.calls == [10, 10] and pipe.stats.poisoned == 0 and pipe.stats.failed_exports == 1


def test_trace_decode_writes_a_lone_surrogate_as_u_fffd_and_exits_0(tmp_path: Path) -> None:
    stream = tmp_path / "hostile.bin"
    stream.write_bytes(frames([to_json(sample_span(1)), hostile_json(poisoned_span(2)), to_json(sample_span(3))]))
    res = kata_debug("trace", "decode", str(stream))
    assert res.returncode == 0, res.stderr
    assert b"internal error" not in res.stderr
    names = [s["name"] for line in res.stdout.decode().splitlines() for s in _spans(line)]
    assert names == [sample_span(1).name, "rpc\ufffd", sample_span(3).name]


def _spans(line: str) -> list[dict[str, Any]]:
    return [s for rs in json.loads(line)["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]


# --------------------------------------------------------------------------- listener limits


async def _hvsock_forwarder(tmp: Path, **limits: Any) -> Any:
    root = kata_node(tmp / "h")
    spool = tmp / "spool.jsonl"
    ctx = running(
        listen=[f"hvsock:///run/vc/vm/{SID}/clh.sock"],
        exports=[parse_export(f"file://{spool}")],
        host_root=str(root),
        limits=ListenerLimits(**limits),
        max_frame_bytes=256 << 10,
        queue_bytes=1 << 20,
    )
    return ctx, root / f"run/vc/vm/{SID}/clh.sock_10240"


async def _closed_by_peer(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """Whether the forwarder closed this connection (EOF or reset) within `timeout`."""
    try:
        return await asyncio.wait_for(reader.read(1), timeout) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


async def test_connections_beyond_max_connections_are_closed_and_the_others_go_on(short_tmp: Path) -> None:  # noqa: F811
    ctx, sock = await _hvsock_forwarder(short_tmp, max_connections=3)
    async with ctx as fwd:
        conns = [await asyncio.open_unix_connection(str(sock)) for _ in range(3)]
        await until(lambda: fwd.stats.open_connections == 3)
        extra = [await asyncio.open_unix_connection(str(sock)) for _ in range(2)]
        assert all([await _closed_by_peer(r) for r, _ in extra])
        assert fwd.stats.rejected_connections == 2
        for i, (_, w) in enumerate(conns):
            w.write(frames([to_json(sample_span(i))]))
            await w.drain()
        await until(lambda: fwd.stats.spans == 3)
        for _, w in conns + extra:
            w.close()
        await until(lambda: fwd.stats.open_connections == 0)
        # Room again once they are gone.
        await send_unix(sock, frames([to_json(sample_span(9))]))
        await until(lambda: fwd.stats.spans == 4)


async def test_a_connection_stalled_mid_frame_is_closed_after_the_idle_timeout_a_quiet_one_is_not(
    short_tmp: Path,  # noqa: F811
) -> None:
    ctx, sock = await _hvsock_forwarder(short_tmp, idle_timeout=0.5)
    async with ctx as fwd:
        quiet_r, quiet_w = await asyncio.open_unix_connection(str(sock))
        quiet_w.write(frames([to_json(sample_span(1))]))  # a complete frame, then nothing
        stalled_r, stalled_w = await asyncio.open_unix_connection(str(sock))
        stalled_w.write(frames([to_json(sample_span(2))])[:40])  # stops inside the frame
        await asyncio.gather(quiet_w.drain(), stalled_w.drain())
        assert await _closed_by_peer(stalled_r, timeout=5)
        assert fwd.stats.idle_timeouts == 1 and fwd.stats.truncated_frames == 0
        assert not await _closed_by_peer(quiet_r, timeout=1.5), "between frames a connection may stay quiet"
        quiet_w.write(frames([to_json(sample_span(3))]))
        await until(lambda: fwd.stats.spans == 2)
        quiet_w.close()
        stalled_w.close()


async def test_beyond_the_buffer_budget_reads_pause_until_it_frees_and_nothing_is_dropped(
    short_tmp: Path,  # noqa: F811
) -> None:
    big = lambda i: to_json(sample_span(i, name="x" * (150 << 10)))  # noqa: E731  a 150 KiB frame
    ctx, sock = await _hvsock_forwarder(short_tmp, buffer_budget=(256 << 10) + 8, idle_timeout=0)
    async with ctx as fwd:
        # A holds most of the budget with an incomplete frame.
        holder = frames([big(1)])
        _, a = await asyncio.open_unix_connection(str(sock))
        a.write(holder[:-10])
        await a.drain()
        await until(lambda: fwd._hub.budget.reserved > 0)
        # B's large frame does not fit: B waits (its bytes stay in its socket), C's small
        # spans do not need the budget and keep flowing.
        _, b = await asyncio.open_unix_connection(str(sock))
        b.write(frames([big(2)]))
        await until(lambda: fwd.stats.budget_waits == 1)
        await send_unix(sock, frames([to_json(sample_span(i)) for i in range(3, 6)]))
        await until(lambda: fwd.stats.spans == 3)
        # A completes its frame: the budget frees and B is read to the end.
        a.write(holder[-10:])
        await until(lambda: fwd.stats.spans == 5)
        assert fwd.stats.decode_errors == 0 and fwd.stats.idle_timeouts == 0
        assert fwd._hub.budget.reserved == 0
        a.close()
        b.close()


class _Holder:
    def __init__(self, name: str, log: list[tuple[str, int]]) -> None:
        self.name, self.log = name, log

    def budget_granted(self, nbytes: int) -> None:
        self.log.append((self.name, nbytes))


def test_budget_reservations_are_granted_first_come_first_served_as_they_free() -> None:
    granted: list[tuple[str, int]] = []
    budget = BufferBudget(100)
    a, b, c, d = (_Holder(n, granted) for n in "abcd")
    assert budget.acquire(a, 80)
    assert not budget.acquire(b, 50)  # does not fit
    assert not budget.acquire(c, 10)  # would fit, but b came first
    assert not budget.acquire(d, 30)
    budget.forget(d)  # gone before its turn
    budget.release(80)
    assert granted == [("b", 50), ("c", 10)] and budget.reserved == 60 and budget.waiting == 0


def test_a_guest_sending_poison_spans_without_end_gets_a_bounded_number_of_warnings(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import itertools

    from kata_debug.forwarder import pipeline

    class _Refuses:
        name = "refuses"

        def export(self, batch: Sequence[QueuedSpan]) -> int:
            raise ValueError("cannot encode this span")

    monkeypatch.setattr(pipeline, "_poison_warned", itertools.count(1))
    caplog.set_level("WARNING", logger=pipeline.log.name)
    batch: list[QueuedSpan] = [(sample_span(i), ORIGIN) for i in range(200)]
    assert pipeline.export_isolating(_Refuses(), batch) == (200, 200)  # type: ignore[arg-type]
    dropped = [r for r in caplog.records if "dropping a span" in r.getMessage()]
    assert len(dropped) == pipeline.POISON_WARNINGS
    assert "further dropped spans are only counted" in dropped[-1].getMessage()
