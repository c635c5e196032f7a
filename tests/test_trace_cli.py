"""`kata-debug trace decode` and `kata-debug forward` as a user runs them (real processes)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import typer

from tests.agent_wire import frame, frames, sample_span, to_bincode, to_json
from tests.conftest import REPO, kata_debug
from tests.otlp_receiver import OtlpHttpReceiver, free_port
from tests.test_forwarder import send_unix, short_tmp  # noqa: F401  (fixture)
from tests.test_trace_wire import FIXTURES, expected_spans, strict


def decoded_spans(lines: list[str]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(resource attributes, span) for every span in OTLP/JSON request lines."""
    out = []
    for line in lines:
        req = json.loads(line)
        for rs in req["resourceSpans"]:
            res = {kv["key"]: kv["value"] for kv in rs["resource"]["attributes"]}
            for ss in rs["scopeSpans"]:
                out.extend((res, s) for s in ss["spans"])
    return out


def fixture_shape(resource: dict[str, Any], span: dict[str, Any]) -> dict[str, Any]:
    span = json.loads(json.dumps(span))
    span.pop("flags")
    for part in span["events"] + span["links"]:
        part.pop("droppedAttributesCount")
        part.pop("flags", None)
    for part in [span] + span["events"] + span["links"]:
        part["attributes"].sort(key=lambda kv: kv["key"])
    own = {k: v for k, v in resource.items() if "host.arch" in resource}
    span["resource"] = sorted(({"key": k, "value": v} for k, v in own.items()), key=lambda kv: kv["key"]) or None
    return span


@pytest.mark.parametrize("fmt", ["bincode", "json"])
def test_trace_decode_writes_otlp_json_lines_matching_the_fixture(fmt: str, tmp_path: Path) -> None:
    out = tmp_path / "spans.jsonl"
    res = kata_debug(
        "trace", "decode", str(FIXTURES / fmt / f"stream.{fmt}.bin"), "--output", str(out), "--batch-size", "50"
    )
    assert res.returncode == 0, res.stderr
    n = len(expected_spans(fmt))
    assert res.stderr.decode().strip() == f"kata-debug: decoded {n} spans from {n} frames (format {fmt}); 0 undecodable"
    lines = out.read_text().splitlines()
    assert len(lines) == (n + 49) // 50  # one ExportTraceServiceRequest per batch
    got = decoded_spans(lines)
    for res_attrs, _ in got:
        assert res_attrs["service.name"] == {"stringValue": "kata-agent"}
    # Lines group spans by resource, so compare as multisets.
    key = lambda d: json.dumps(d, sort_keys=True)  # noqa: E731
    assert sorted((strict(fixture_shape(r, s)) for r, s in got), key=key) == sorted(
        (strict(e) for e in expected_spans(fmt)), key=key
    )


def test_trace_decode_to_stdout_with_explicit_format_and_sandbox(tmp_path: Path) -> None:
    res = kata_debug(
        "trace",
        "decode",
        str(FIXTURES / "json/stream.json.bin"),
        "--wire-format",
        "json",
        "--sandbox-id",
        "sb1",
        "--service-name",
        "agent",
    )
    assert res.returncode == 0
    got = decoded_spans(res.stdout.decode().splitlines())
    assert len(got) == 151
    assert {
        (r["service.name"]["stringValue"], r["kata.sandbox.id"]["stringValue"]) for r, _ in got if "host.arch" not in r
    } == {("agent", "sb1")}
    wrong = kata_debug("trace", "decode", str(FIXTURES / "json/stream.json.bin"), "--wire-format", "bincode")
    assert wrong.returncode == 1 and b"151 undecodable" in wrong.stderr
    # One line saying what to do, not 151 frame warnings.
    assert wrong.stderr.decode().splitlines() == [
        "kata-debug: warning: none of the 151 frames decode as bincode; "
        "the capture is probably in the other encoding: try --wire-format auto",
        "kata-debug: decoded 0 spans from 151 frames (format bincode); 151 undecodable",
    ]


def test_trace_decode_reports_bad_frames_and_keeps_the_good_ones(tmp_path: Path) -> None:
    stream = tmp_path / "mixed.bin"
    good = to_json(sample_span(1))
    stream.write_bytes(frames([good, b"{oops", good]) + frame(good)[:30])
    res = kata_debug("trace", "decode", str(stream))
    assert res.returncode == 1
    err = res.stderr.decode()
    assert f"kata-debug: warning: frame 2 at offset {8 + len(good)}: json: Expecting property name" in err
    assert f"stream ends inside frame 4 at offset {3 * 8 + 2 * len(good) + 5}" in err
    assert len(decoded_spans(res.stdout.decode().splitlines())) == 2
    huge = tmp_path / "huge.bin"
    huge.write_bytes(frame(good) + (5 << 20).to_bytes(8, "big"))
    res = kata_debug("trace", "decode", str(huge))
    assert res.returncode == 1 and b"exceeds the 1048576-byte limit; stopping" in res.stderr


def test_trace_decode_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    res = kata_debug("trace", "decode", str(tmp_path / "nope.bin"))
    assert (
        res.returncode == 2 and res.stderr.decode() == f"kata-debug: error: INPUT {tmp_path}/nope.bin: no such file\n"
    )
    res = kata_debug("trace", "decode", str(FIXTURES / "json/stream.json.bin"), "-o", str(tmp_path / "x/y.jsonl"))
    assert res.returncode == 2 and b"directory" in res.stderr
    res = kata_debug("forward", "--export", "kafka://x")
    assert res.returncode == 2 and res.stderr.decode().startswith(
        "kata-debug: error: --export kafka://x: unknown exporter"
    )
    res = kata_debug("forward", "--listen", "hvsock://relative", "--export", "stdout")
    assert res.returncode == 2 and b"three slashes" in res.stderr
    # Without --export the OTEL_EXPORTER_OTLP_* variables decide, and are checked up front.
    res = kata_debug("forward", env={"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    assert res.returncode == 2 and b"http/json" in res.stderr


async def _start_forward(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kata_debug",
        "forward",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


async def _wait_for_socket(path: Path, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        if proc.returncode is not None or time.monotonic() > deadline:
            err = await proc.stderr.read() if proc.stderr else b""
            raise AssertionError(f"forwarder did not start: {err.decode()}")
        await asyncio.sleep(0.05)


async def _stderr_until(proc: asyncio.subprocess.Process, text: str, timeout: float = 30) -> bytes:
    assert proc.stderr is not None
    seen = b""

    async def _read() -> None:
        nonlocal seen
        while text.encode() not in seen:
            line = await proc.stderr.readline()  # type: ignore[union-attr]
            if not line:
                raise AssertionError(f"forwarder exited before logging {text!r}: {seen.decode()}")
            seen += line

    await asyncio.wait_for(_read(), timeout)
    return seen


async def test_sigterm_flushes_queued_spans_to_the_backend_and_exits_0(short_tmp: Path) -> None:  # noqa: F811
    """The exporter is configured only through OTEL_EXPORTER_OTLP_* (no --export)."""
    http = await OtlpHttpReceiver().start()
    sock = short_tmp / "agent.sock"
    proc = await _start_forward(
        "--listen",
        f"unix://{sock}?sandbox=sbT",
        "--host-root",
        str(short_tmp),
        "--stats-interval",
        "0",
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{http.port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        },
    )
    try:
        await _wait_for_socket(sock, proc)
        await send_unix(sock, frames(to_bincode(sample_span(i)) for i in range(300)))
        # Once the stream is read the spans sit in the exporter queue (batched every 0.2s).
        seen = await _stderr_until(proc, "trace stream closed (300 frames")
        proc.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(proc.communicate(), 30)
        err = seen + rest
        assert proc.returncode == 0, err.decode()
        assert len(http.spans) == 300
        assert {r.resource["kata.sandbox.id"] for r in http.spans} == {"sbT"}
        text = err.decode()
        assert "final counters: connections=1 open=0 frames=300 spans=300 decode_errors=0" in text
        assert "exported=300 dropped=0" in text
        assert not sock.exists()  # our socket is removed on exit
    finally:
        if proc.returncode is None:
            proc.kill()
        await http.stop()


async def test_sigint_with_backend_down_gives_up_after_the_shutdown_timeout_and_exits_0(short_tmp: Path) -> None:  # noqa: F811
    port = free_port()
    sock = short_tmp / "agent.sock"
    spool = short_tmp / "spool/spans.jsonl"
    spool.parent.mkdir()  # a file:// export into a missing directory is refused
    proc = await _start_forward(
        "--listen",
        f"unix://{sock}",
        "--export",
        f"otlp+grpc://127.0.0.1:{port}",
        "--export",
        f"file://{spool}",
        "--shutdown-timeout",
        "1s",
        "--stats-interval",
        "0",
    )
    try:
        await _wait_for_socket(sock, proc)
        await send_unix(sock, frames(to_json(sample_span(i)) for i in range(20)))
        deadline = time.monotonic() + 20
        while not (spool.exists() and spool.read_text().count('"spanId"') >= 20) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert time.monotonic() - started < 8
        text = err.decode()
        assert f"exporter otlp+grpc://127.0.0.1:{port}: shutdown timeout (1.0s) passed; 20 spans not delivered" in text
        assert f"[file://{spool}: exported=20 dropped=0" in text
    finally:
        if proc.returncode is None:
            proc.kill()


@pytest.mark.parametrize(
    ("args", "env", "want"),
    [
        ([], {"NODE_NAME": "from-env"}, "from-env"),
        (["--node-name", "given"], {"NODE_NAME": "from-env"}, "given"),
        (["--node-name", ""], {"NODE_NAME": "from-env"}, None),  # given empty: none, not the env's
        ([], {"NODE_NAME": ""}, None),
        ([], {}, None),
    ],
)
def test_node_name_is_the_option_when_given_else_node_name_from_the_environment(
    args: list[str], env: dict[str, str], want: str | None
) -> None:
    """What `forward` and `node-agent` put in k8s.node.name, decided on whether the option was given."""
    from typer.testing import CliRunner

    from kata_debug.cli.trace import node_name_option

    app = typer.Typer()
    seen: list[str | None] = []

    @app.command()
    def cmd(ctx: typer.Context, node_name: str | None = typer.Option(None, "--node-name")) -> None:
        seen.append(node_name_option(ctx, node_name))

    result = CliRunner().invoke(app, args, env={"NODE_NAME": None, **env})
    assert result.exit_code == 0, result.output
    assert seen == [want]


def test_trace_decode_of_a_file_that_is_no_trace_stream_is_one_line_exit_2(tmp_path: Path) -> None:
    """/etc/passwd, a bundle, a few bytes on stdin: one line naming the input, nothing written."""
    out = tmp_path / "spans.jsonl"
    res = kata_debug("trace", "decode", "/etc/passwd", "-o", str(out))
    assert res.returncode == 2, res.stderr
    err = res.stderr.decode()
    assert err.count("\n") == 1 and err.startswith(
        "kata-debug: error: INPUT /etc/passwd: not a kata-agent trace stream: it starts with b'"
    ), err
    assert "frame" not in err.split("stream:")[0] and not out.exists()  # not a per-frame warning, no output file
    text = tmp_path / "notes.txt"
    text.write_bytes(frame(b"hello, not a span"))  # a plausible length, then no span
    res = kata_debug("trace", "decode", str(text))
    assert res.returncode == 2 and res.stdout == b""
    err = res.stderr.decode()
    assert err.count("\n") == 1 and err.startswith(
        f"kata-debug: error: INPUT {text}: not a kata-agent trace stream: its first frame is neither a bincode "
        "nor a JSON span ("
    ), err
    short = subprocess.run(
        [sys.executable, "-m", "kata_debug", "trace", "decode", "-"],
        input=b"abc",
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert short.returncode == 2 and short.stderr.decode() == (
        "kata-debug: error: INPUT -: not a kata-agent trace stream: 3 byte(s), less than one frame header\n"
    )
