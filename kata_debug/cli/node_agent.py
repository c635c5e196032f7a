"""`kata-debug node-agent`: the DaemonSet's long-running trace forwarder (see `kata_debug.agent`).

Parsing, logging and exit codes only.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from kata_debug.cli import redact_config
from kata_debug.cli.trace import _LIMITS, LogLevel
from kata_debug.errors import KataDebugError


def node_agent(
    ctx: typer.Context,
    host_root: Path = typer.Option(
        Path("/"), "--host-root", metavar="DIR", help="The node's filesystem root (/host in the DaemonSet)."
    ),
    spool_dir: Path | None = typer.Option(
        None,
        "--spool-dir",
        metavar="DIR",
        help="Span spool directory, a node path resolved under --host-root like `collect --trace-spool-dir` "
        "(default /var/lib/kata-debug/traces, where `collect` reads it).",
    ),
    spool_size: str = typer.Option(
        "128M", "--spool-size", metavar="SIZE", help="Disk cap of the spool, rotations included."
    ),
    export: list[str] | None = typer.Option(
        None,
        "--export",
        "-e",
        metavar="URI",
        help="Where spans go besides the spool (repeatable; same URIs as `forward`). "
        "Default: OTLP from the OTEL_EXPORTER_OTLP_* variables when an endpoint is set.",
    ),
    vsock_port: int = typer.Option(10240, "--vsock-port", help="vsock port the agents connect to (kata-agent: 10240)."),
    state_file: Path | None = typer.Option(
        None,
        "--state-file",
        help="Rewrite this JSON file every 10 s for exec probes (python3 -m kata_debug.agent.health).",
    ),
    node_name: str | None = typer.Option(None, "--node-name", help="k8s.node.name (default: $NODE_NAME)."),
    stats_interval: str = typer.Option(
        "60s", "--stats-interval", metavar="DURATION", help="How often to log the counters (0 = only at exit)."
    ),
    shutdown_timeout: str = typer.Option(
        "10s", "--shutdown-timeout", metavar="DURATION", help="On SIGTERM, time allowed to flush queued spans."
    ),
    capture: bool = typer.Option(
        True, "--capture/--no-capture", help="Keep a capture bundle of each sandbox that fails (README: Capture)."
    ),
    capture_window: str = typer.Option(
        "120s", "--capture-window", help="A Kata sandbox gone this soon, before any app container, failed to start."
    ),
    capture_after: str = typer.Option("5s", "--capture-after", help="Log time kept after the failure."),
    capture_before: str = typer.Option("10m", "--capture-before", help="Log time kept before the failure."),
    capture_rate: str = typer.Option("6/10m", "--capture-rate", help="At most N captures per DURATION on this node."),
    capture_size: str = typer.Option("256M", "--capture-size", help="Disk cap of the captures, oldest removed first."),
    capture_upload: str | None = typer.Option(
        None,
        "--capture-upload",
        metavar="URL",
        help="Also send each capture here, in the background, retried until it arrives: PUT to the URL with "
        "{name} replaced by the capture's file name, else POST. Bearer token: $KATA_DEBUG_UPLOAD_TOKEN.",
    ),
    max_connections: int = _LIMITS["max_connections"],
    idle_timeout: str = _LIMITS["idle_timeout"],
    buffer_budget: str = _LIMITS["buffer_budget"],
    log_level: LogLevel = typer.Option(LogLevel.info, "--log-level", help="Log verbosity."),
    redact_config_file: Path | None = redact_config.option(),
) -> None:
    """Forward every Kata sandbox's agent spans on this node to OpenTelemetry, and spool them for bundles.

    Attaches to sandboxes as they appear (hybrid vsock) and listens on vsock; runs until
    SIGTERM/SIGINT, then flushes and exits 0. Opens no network port.
    """
    from kata_debug.agent.capture import CaptureConfig
    from kata_debug.agent.ring import Rate
    from kata_debug.agent.service import AgentConfig, main
    from kata_debug.cli.options import parse_duration, parse_size
    from kata_debug.cli.trace import check_file_exports, configure_logging, listener_limits, node_name_option
    from kata_debug.errors import UsageError
    from kata_debug.forwarder.frames import DEFAULT_MAX_FRAME_BYTES
    from kata_debug.forwarder.targets import parse_export

    if spool_dir is not None and ".." in spool_dir.parts:
        raise UsageError(f"--spool-dir {spool_dir}: a node path may not contain '..'")
    for uri in export or []:
        try:
            check_file_exports([parse_export(uri)])
        except ValueError:
            pass  # the agent reports a bad URI, naming it
    upload_target = None
    if capture_upload is not None:
        from kata_debug.agent.uploads import parse_capture_target

        if not capture:
            raise UsageError("--capture-upload: not valid with --no-capture")
        upload_target = parse_capture_target(capture_upload)
    cfg = AgentConfig(
        host_root=host_root,
        spool_dir=spool_dir,
        spool_bytes=parse_size(spool_size, "--spool-size"),
        exports=list(export or []),
        vsock_port=vsock_port,
        state_file=state_file,
        node_name=node_name_option(ctx, node_name),
        stats_interval=parse_duration(stats_interval, "--stats-interval").total_seconds(),
        shutdown_timeout=parse_duration(shutdown_timeout, "--shutdown-timeout").total_seconds(),
        capture=CaptureConfig(
            enabled=capture,
            window=_positive(capture_window, "--capture-window"),
            after=parse_duration(capture_after, "--capture-after").total_seconds(),
            before=parse_duration(capture_before, "--capture-before").total_seconds(),
            rate=Rate.parse(capture_rate),
            size=parse_size(capture_size, "--capture-size"),
            redact_rules=redact_config.load(redact_config_file),
            upload=upload_target,
        ),
        limits=listener_limits(max_connections, idle_timeout, buffer_budget, DEFAULT_MAX_FRAME_BYTES),
    )
    configure_logging(log_level.value)
    from kata_debug.forwarder.server import ForwarderError, tune_gc

    try:
        tune_gc()
        asyncio.run(main(cfg))
    except ForwarderError as exc:
        raise KataDebugError(str(exc)) from None


def _positive(text: str, option: str) -> float:
    from kata_debug.cli.options import parse_duration
    from kata_debug.errors import UsageError

    seconds = parse_duration(text, option).total_seconds()
    if seconds <= 0:
        raise UsageError(f"{option} {text!r}: must be longer than 0s")
    return seconds


def register(app: typer.Typer) -> None:
    app.command("node-agent")(node_agent)
