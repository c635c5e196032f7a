"""`kata-debug trace decode` and `kata-debug forward`: agent traces to OpenTelemetry.

Parsing, logging setup, signals and exit codes only; the work is in `forwarder/`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import typer

from kata_debug.errors import KataDebugError, UsageError

if TYPE_CHECKING:
    from kata_debug.forwarder.limits import ListenerLimits
    from kata_debug.forwarder.targets import ExportTarget

#: The variables that name an OTLP endpoint (the SDK's own default is used without them).
OTLP_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

trace_app = typer.Typer(
    name="trace",
    help="Work with kata-agent trace streams (decode captured frames).",
    no_args_is_help=True,
    add_completion=False,
)


class TraceFormat(str, Enum):
    auto = "auto"
    bincode = "bincode"
    json = "json"


class LogLevel(str, Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


def _size(text: str, option: str) -> int:
    """A size option in bytes (`64M`, `1G`, `4096`), or a one-line usage error."""
    from kata_debug.cli.options import parse_size

    return parse_size(text, option)


def _seconds(text: str, option: str) -> float:
    from kata_debug.cli.options import parse_duration

    return parse_duration(text, option).total_seconds()


def listener_limits(
    max_connections: int, idle_timeout: str, buffer_budget: str, max_frame_bytes: int
) -> ListenerLimits:
    """`--max-connections`, `--idle-timeout` and `--buffer-budget` as a `ListenerLimits`, or a usage error."""
    from kata_debug.forwarder.limits import ListenerLimits

    budget = _size(buffer_budget, "--buffer-budget")
    if budget < max_frame_bytes + 8:
        raise UsageError(
            f"--buffer-budget {buffer_budget}: below --max-frame-bytes ({max_frame_bytes} bytes) plus its "
            "8-byte header; a frame that large could never be read"
        )
    return ListenerLimits(max_connections, _seconds(idle_timeout, "--idle-timeout"), budget)


def limit_options() -> dict[str, Any]:
    """The three listener limit options, shared by `forward` and `node-agent`."""
    return {
        "max_connections": typer.Option(
            256,
            "--max-connections",
            min=1,
            metavar="N",
            help="Trace connections open at once; more are closed at once.",
        ),
        "idle_timeout": typer.Option(
            "30s",
            "--idle-timeout",
            metavar="DURATION",
            help="Close a connection that stops this long in the middle of a frame (0 = never).",
        ),
        "buffer_budget": typer.Option(
            "64M",
            "--buffer-budget",
            metavar="SIZE",
            help="Bytes of incomplete frames held across all connections; beyond it, reads pause (nothing is dropped).",
        ),
    }


_LIMITS = limit_options()


# --------------------------------------------------------------------------- trace decode


@trace_app.command("decode")
def decode(
    ctx: typer.Context,
    input: str = typer.Argument(
        ..., metavar="INPUT", help="Captured frame stream (8-byte length + payload ...); '-' = stdin."
    ),
    wire_format: TraceFormat = typer.Option(
        TraceFormat.auto,
        "--wire-format",
        help="Payload encoding: auto (per stream), bincode (agent <= 3.28), json (agent >= 3.29).",
    ),
    wire_format_old: TraceFormat | None = typer.Option(None, "--format", hidden=True),
    output: str = typer.Option("-", "--output", "-o", metavar="FILE", help="OTLP/JSON lines file; '-' = stdout."),
    service_name: str = typer.Option("kata-agent", "--service-name", help="service.name resource attribute."),
    sandbox_id: str | None = typer.Option(None, "--sandbox-id", help="Add kata.sandbox.id to the resource."),
    batch_size: int = typer.Option(
        512, "--batch-size", min=1, metavar="N", help="Spans per output line (one ExportTraceServiceRequest each)."
    ),
    max_frame_bytes: str = typer.Option("1M", "--max-frame-bytes", help="Refuse frames announcing more than this."),
) -> None:
    """Convert a captured agent trace stream to OTLP/JSON lines (what the Collector's otlpjsonfile receiver reads).

    Undecodable frames are reported on stderr and skipped; the exit status is 1 if any were.
    """
    from kata_debug.cli.options import deprecated_alias
    from kata_debug.forwarder.capture import NotATraceStream, Prefixed, check_first_frame, decode_capture
    from kata_debug.forwarder.spans import Origin

    if deprecated_alias(ctx, "--wire-format", "wire_format", "--format", wire_format_old):
        assert wire_format_old is not None
        wire_format = wire_format_old
    limit = _size(max_frame_bytes, "--max-frame-bytes")
    src: IO[bytes]
    if input == "-":
        src = sys.stdin.buffer
    else:
        try:
            src = open(input, "rb")
        except FileNotFoundError:
            raise UsageError(f"INPUT {input}: no such file") from None
        except IsADirectoryError:
            raise UsageError(f"INPUT {input}: is a directory") from None
        except OSError as exc:
            raise UsageError(f"INPUT {input}: cannot read: {exc.strerror}") from None
    if output != "-" and not Path(output).parent.is_dir():
        raise UsageError(f"--output {output}: directory {Path(output).parent} does not exist")
    try:
        # Before any output is opened: a file that is no trace stream at all is one line, exit 2.
        head = check_first_frame(src, limit)
    except NotATraceStream as exc:
        if src is not sys.stdin.buffer:
            src.close()
        raise UsageError(f"INPUT {input}: not a kata-agent trace stream: {exc}") from None
    dst: IO[str]
    if output == "-":
        dst = sys.stdout
    else:
        try:
            dst = open(output, "w", encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--output {output}: cannot write: {exc.strerror}") from None

    identity = (("kata.sandbox.id", sandbox_id),) if sandbox_id else ()
    origin = Origin.make(sandbox_id, input, (("service.name", service_name),), identity)
    warnings = FrameWarnings()
    try:
        summary = decode_capture(
            Prefixed(head, src),
            dst,
            origin=origin,
            fmt=wire_format.value,
            batch_size=batch_size,
            max_frame_bytes=limit,
            warn=warnings.add,
        )
    except BrokenPipeError:
        raise SystemExit(0) from None
    finally:
        if src is not sys.stdin.buffer:
            src.close()
        if dst is not sys.stdout:
            dst.close()
    if wire_format is not TraceFormat.auto and summary.frames and summary.undecodable == summary.frames:
        # Every frame failed: the stream is in another encoding, not damaged frame by frame.
        print(
            f"kata-debug: warning: none of the {summary.frames} frames decode as {wire_format.value}; "
            "the capture is probably in the other encoding: try --wire-format auto",
            file=sys.stderr,
        )
    else:
        warnings.print()
    if summary.problem:
        print(f"kata-debug: warning: {summary.problem}", file=sys.stderr)
    print(
        f"kata-debug: decoded {summary.spans} spans from {summary.frames} frames (format {summary.format}); "
        f"{summary.undecodable} undecodable",
        file=sys.stderr,
    )
    if summary.undecodable or summary.problem:
        raise typer.Exit(1)


class FrameWarnings:
    """Undecodable-frame warnings, held until the end of a decode: a capture in the wrong
    encoding is then one summary line instead of one warning per frame, and damage inside
    an otherwise good capture is shown (the first few frames, then a count)."""

    SHOWN = 10

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.more = 0

    def add(self, text: str) -> None:
        if len(self.lines) < self.SHOWN:
            self.lines.append(text)
        else:
            self.more += 1

    def print(self) -> None:
        for line in self.lines:
            print(f"kata-debug: warning: {line}", file=sys.stderr)
        if self.more:
            print(f"kata-debug: warning: ... and {self.more} more undecodable frame(s)", file=sys.stderr)


def check_file_exports(targets: list[ExportTarget]) -> None:
    """A `file://` export into a directory that does not exist is refused before anything
    starts, as `--output` is everywhere: a forwarder that fails at its first span is worse."""
    for t in targets:
        if t.kind == "file" and t.path:
            parent = Path(t.path).parent
            if not parent.is_dir():
                raise UsageError(f"--export {t.uri}: directory {parent} does not exist")


# --------------------------------------------------------------------------- forward


def forward(
    ctx: typer.Context,
    listen: list[str] | None = typer.Option(
        None,
        "--listen",
        metavar="URI",
        help="Where agents connect (repeatable): vsock://any:10240 (default), vsock://CID:PORT, "
        "hvsock:///run/vc/vm/<sid>/clh.sock[?port=N], unix:///path[?sandbox=ID], tcp://127.0.0.1:PORT, discover.",
    ),
    listen_old: list[str] | None = typer.Option(None, "-l", hidden=True),  # -l is a label selector elsewhere
    export: list[str] | None = typer.Option(
        None,
        "--export",
        "-e",
        metavar="URI",
        help="Where spans go (repeatable): otlp+grpc://HOST:PORT (otlp+grpcs:// for TLS), otlp+http://HOST:PORT/v1/traces, "
        "otlp+https://... (OTLP URIs take ?compression=gzip|deflate|none&timeout=SECONDS&max_request_bytes=N), "
        "file:///path.jsonl[?max_bytes=N&backups=N], stdout. Default: OTLP from the OTEL_EXPORTER_OTLP_* variables.",
    ),
    wire_format: TraceFormat = typer.Option(
        TraceFormat.auto, "--wire-format", help="Payload encoding: auto (per connection), bincode, json."
    ),
    wire_format_old: TraceFormat | None = typer.Option(None, "--format", hidden=True),
    service_name: str = typer.Option("kata-agent", "--service-name", help="service.name resource attribute."),
    host_root: Path = typer.Option(
        Path("/"), "--host-root", metavar="DIR", help="The node's filesystem root (/host in the DaemonSet)."
    ),
    node_name: str | None = typer.Option(None, "--node-name", help="k8s.node.name (default: $NODE_NAME, if set)."),
    queue_size: int = typer.Option(
        10_000,
        "--queue-size",
        min=1,
        metavar="N",
        help="Spans kept per exporter while its backend is slow or down; the oldest are dropped beyond.",
    ),
    queue_bytes: str = typer.Option(
        "64M",
        "--queue-bytes",
        help="Frame bytes kept per exporter while its backend is slow or down (at least --max-frame-bytes); "
        "the oldest spans are dropped beyond. Bounds memory whatever frame sizes guests send.",
    ),
    batch_size: int = typer.Option(
        2048,
        "--batch-size",
        min=1,
        metavar="N",
        help="Most spans per export (an OTLP batch above its max_request_bytes goes as several requests).",
    ),
    max_frame_bytes: str = typer.Option(
        "1M", "--max-frame-bytes", help="Close a connection whose frame announces more than this."
    ),
    max_connections: int = _LIMITS["max_connections"],
    idle_timeout: str = _LIMITS["idle_timeout"],
    buffer_budget: str = _LIMITS["buffer_budget"],
    shutdown_timeout: str = typer.Option(
        "10s", "--shutdown-timeout", metavar="DURATION", help="On SIGTERM/SIGINT, time allowed to flush queued spans."
    ),
    stats_interval: str = typer.Option(
        "60s", "--stats-interval", metavar="DURATION", help="How often to log the counters (0 = only at exit)."
    ),
    log_level: LogLevel = typer.Option(LogLevel.info, "--log-level", help="Log verbosity."),
) -> None:
    """Forward kata-agent spans (bincode or JSON, any agent version) to OpenTelemetry backends.

    Runs until SIGTERM/SIGINT, then stops accepting, flushes queued spans within
    --shutdown-timeout and exits 0. Logs (with counters) go to stderr.
    """
    from kata_debug.cli.options import deprecated_alias, human_size
    from kata_debug.forwarder.listeners import parse_listen
    from kata_debug.forwarder.server import Forwarder, ForwarderConfig, ForwarderError, tune_gc
    from kata_debug.forwarder.targets import parse_export, target_from_env

    if deprecated_alias(ctx, "--wire-format", "wire_format", "--format", wire_format_old):
        assert wire_format_old is not None
        wire_format = wire_format_old
    if deprecated_alias(ctx, "--listen", "listen", "-l", listen_old):
        listen = listen_old
    listen_uris = listen or ["vsock://any:10240"]
    for uri in listen_uris:
        try:
            parse_listen(uri)
        except ValueError as exc:
            raise UsageError(f"--listen {exc}") from None
    targets = []
    for uri in export or []:
        try:
            targets.append(parse_export(uri))
        except ValueError as exc:
            raise UsageError(f"--export {exc}") from None
    check_file_exports(targets)
    export_note = None
    if not targets:
        if not any(os.environ.get(v) for v in OTLP_ENDPOINT_VARS):
            export_note = (
                "no OTLP endpoint configured (--export or OTEL_EXPORTER_OTLP_ENDPOINT): "
                "sending to the OTLP default, http://localhost:4318"
            )
        try:
            targets.append(target_from_env())
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if not host_root.is_dir():
        raise UsageError(f"--host-root {host_root}: not a directory")
    frame_limit = _size(max_frame_bytes, "--max-frame-bytes")
    queue_limit = _size(queue_bytes, "--queue-bytes")
    if queue_limit < frame_limit:
        raise UsageError(
            f"--queue-bytes {queue_bytes}: below --max-frame-bytes ({human_size(frame_limit)}); "
            "a span from a frame that large could never be queued"
        )
    config = ForwarderConfig(
        listen=listen_uris,
        exports=targets,
        format=wire_format.value,
        service_name=service_name,
        host_root=str(host_root),
        node_name=node_name_option(ctx, node_name),
        queue_size=queue_size,
        queue_bytes=queue_limit,
        batch_size=batch_size,
        max_frame_bytes=frame_limit,
        limits=listener_limits(max_connections, idle_timeout, buffer_budget, frame_limit),
        shutdown_timeout=_seconds(shutdown_timeout, "--shutdown-timeout"),
        stats_interval=_seconds(stats_interval, "--stats-interval"),
    )
    configure_logging(log_level.value)
    if export_note:
        logging.getLogger("kata_debug.forward").warning("%s", export_note)
    try:
        forwarder = Forwarder(config)
    except ForwarderError as exc:
        raise KataDebugError(str(exc)) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    tune_gc()

    async def _main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, forwarder.stop)
        try:
            await forwarder.run()
        except ForwarderError as exc:
            raise KataDebugError(str(exc)) from None

    asyncio.run(_main())


def node_name_option(ctx: typer.Context, node_name: str | None) -> str | None:
    """`--node-name` as given (even empty: no node name), else `$NODE_NAME` (the DaemonSet sets it)."""
    # Typer's ParameterSource enum lives in its private vendored click: compared by name.
    source = ctx.get_parameter_source("node_name")
    if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
        return os.environ.get("NODE_NAME") or None
    return node_name or None


def configure_logging(level: str) -> None:
    """Timestamped lines on stderr; the SDK's own retry chatter only when debugging."""
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(message)s",
    )
    if level != "debug":
        logging.getLogger("opentelemetry").setLevel(logging.ERROR)


def register(app: typer.Typer) -> None:
    app.add_typer(trace_app, name="trace")
    app.command("forward")(forward)
