"""The `kata-debug` application: `collect`, `collectors`, the other commands' registration, `main`.

`collect` parses its options and hands over to `kata_debug.collect` (one node) or
`cli.cluster` (`--cluster`); `main` turns every error into one line and an exit code.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from kata_debug import __version__
from kata_debug.errors import KataDebugError, UsageError
from kata_debug.node.paths import TRACE_SPOOL_DIR

if TYPE_CHECKING:
    from kata_debug.collect.runner import CollectResult

app = typer.Typer(
    name="kata-debug",
    help="Tell Kata Containers operators what is wrong with their sandboxes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


class CompressionChoice(str, Enum):
    gzip = "gzip"
    zstd = "zstd"
    none = "none"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kata-debug {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Support bundles, VM sizing analysis and agent trace forwarding for Kata Containers."""


@app.command()
def collect(
    ctx: typer.Context,
    host_root: Path = typer.Option(
        Path("/"), "--host-root", help="The node's filesystem root (/host in the DaemonSet)."
    ),
    output: str | None = typer.Option(
        None, "--output", "-o", help="Bundle file (default ./kata-debug-<node>-<UTC time>.tar.gz); '-' = stdout."
    ),
    since: str = typer.Option("24h", "--since", help="How far back to read logs (30m, 24h, 7d)."),
    collector: list[str] | None = typer.Option(
        None, "--collector", "-c", help="Run only this collector (repeatable). See `kata-debug collectors`."
    ),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds each collector may run."),
    deadline: float | None = typer.Option(
        None, "--deadline", help="Seconds for the whole collection; unfinished collectors are marked timeout."
    ),
    no_redact: bool = typer.Option(False, "--no-redact", help="Keep secrets in the bundle (prints a warning)."),
    compression: CompressionChoice | None = typer.Option(
        None, "--compression", help="default: from --output's name (.tar.gz gzip, .tar none), else zstd"
    ),
    output_format: OutputFormat = typer.Option(OutputFormat.text, "--output-format", help="Summary format."),
    all_runtimes: bool = typer.Option(False, "--all-runtimes", help="Include non-Kata containers' OCI specs."),
    max_log_size: str = typer.Option("50M", "--max-log-size", help="Cap per log source; the newest lines are kept."),
    node_name: str | None = typer.Option(None, "--node-name", help="Node name (default: $NODE_NAME or hostname)."),
    trace_spool_dir: str = typer.Option(
        TRACE_SPOOL_DIR, "--trace-spool-dir", help="Node path of the forwarder's span spool."
    ),
    cluster: bool = typer.Option(
        False,
        "--cluster",
        help="Collect the whole cluster through the Kubernetes API (agent pods, else collector pods).",
        rich_help_panel="Cluster mode",
    ),
    kubeconfig: str | None = typer.Option(
        None, "--kubeconfig", help="Kubeconfig file.", rich_help_panel="Cluster mode"
    ),
    context: str | None = typer.Option(None, "--context", help="Kubeconfig context.", rich_help_panel="Cluster mode"),
    node: list[str] | None = typer.Option(
        None, "--node", help="Collect this node (repeatable; default: every Kata node).", rich_help_panel="Cluster mode"
    ),
    selector: str | None = typer.Option(
        None,
        "--selector",
        "-l",
        help="Node label selector (default: katacontainers.io/kata-runtime).",
        rich_help_panel="Cluster mode",
    ),
    parallel: int = typer.Option(8, "--parallel", help="Nodes collected at once.", rich_help_panel="Cluster mode"),
    node_timeout: float = typer.Option(
        600.0, "--node-timeout", help="Seconds each node may take.", rich_help_panel="Cluster mode"
    ),
    ephemeral: bool = typer.Option(
        False,
        "--ephemeral",
        help="Collect every node through a collector pod made for the run, even where an agent pod runs.",
        rich_help_panel="Cluster mode",
    ),
    image: str | None = typer.Option(
        None,
        "--image",
        help="Collector pods' image (default: the one deploy/daemonset.yaml runs).",
        rich_help_panel="Cluster mode",
    ),
    agent_namespace: str = typer.Option(
        "kata-debug",
        "--agent-namespace",
        help="Namespace of the agent pods and of collector pods.",
        rich_help_panel="Cluster mode",
    ),
    pod_timeout: float = typer.Option(
        120.0,
        "--pod-timeout",
        help="Seconds a collector pod may take to start running.",
        rich_help_panel="Cluster mode",
    ),
    upload: str | None = typer.Option(
        None,
        "--upload",
        help="Then send the bundle to this http(s) URL (e.g. pre-signed); it stays on disk too.",
        rich_help_panel="Upload",
    ),
    upload_method: str = typer.Option("PUT", "--upload-method", help="PUT or POST.", rich_help_panel="Upload"),
    upload_header: list[str] | None = typer.Option(
        None,
        "--upload-header",
        help="Extra header 'Name: value' (repeatable); $KATA_DEBUG_UPLOAD_TOKEN sets a bearer token.",
        rich_help_panel="Upload",
    ),
    upload_retries: int = typer.Option(
        5, "--upload-retries", help="Retries after a transient failure.", rich_help_panel="Upload"
    ),
    upload_timeout: float = typer.Option(
        60.0, "--upload-timeout", help="Seconds without progress before an attempt fails.", rich_help_panel="Upload"
    ),
    upload_cacert: Path | None = typer.Option(
        None, "--upload-cacert", help="CA bundle for a private https endpoint.", rich_help_panel="Upload"
    ),
) -> None:
    """Gather this node's Kata evidence into one support bundle (or, with --cluster, every Kata node's)."""
    from kata_debug.cli.upload import parse_collect_upload, upload_after_collect

    upload_target = parse_collect_upload(
        ctx,
        upload,
        upload_method,
        upload_header,
        upload_retries,
        upload_timeout,
        upload_cacert,
        output,
        redact=not no_redact,
    )
    if cluster:
        from kata_debug.cli.cluster import collect_cluster  # the Kubernetes client costs seconds to import

        raise typer.Exit(
            collect_cluster(
                kubeconfig=kubeconfig,
                context=context,
                nodes=node or [],
                selector=selector,
                parallel=parallel,
                node_timeout=node_timeout,
                output=output,
                since=since,
                collectors=collector or [],
                timeout=timeout,
                no_redact=no_redact,
                compression=compression.value if compression else "gzip",
                json_output=output_format is OutputFormat.json,
                all_runtimes=all_runtimes,
                max_log_size=max_log_size,
                trace_spool_dir=trace_spool_dir,
                host_root=host_root,
                deadline=deadline,
                node_name=node_name,
                ephemeral=ephemeral,
                image=image,
                agent_namespace=agent_namespace,
                pod_timeout=pod_timeout,
                upload=upload_target,
            )
        )
    from kata_debug.cli.options import given, parse_duration, parse_size

    cluster_only = {
        "--kubeconfig": "kubeconfig",
        "--context": "context",
        "--node": "node",
        "--selector": "selector",
        "--parallel": "parallel",
        "--node-timeout": "node_timeout",
        "--ephemeral": "ephemeral",
        "--image": "image",
        "--agent-namespace": "agent_namespace",
        "--pod-timeout": "pod_timeout",
    }
    for flag, name in cluster_only.items():
        if given(ctx, name):
            raise UsageError(f"{flag}: only valid with --cluster")
    from kata_debug.cli.progress import CollectorProgress
    from kata_debug.collect.interrupts import exit_process, run_leaving_stuck_threads
    from kata_debug.collect.runner import CollectOptions, run_collection
    from kata_debug.collectors.base import CollectorOptions

    opts = CollectOptions(
        host_root=host_root,
        output=output,
        node=node_name,
        since=parse_duration(since),
        collectors=collector or None,
        timeout=timeout,
        deadline=deadline,
        redact=not no_redact,
        compression=compression.value if compression else None,
        all_runtimes=all_runtimes,
        max_log_bytes=parse_size(max_log_size, "--max-log-size"),
        options=CollectorOptions(trace_spool_dir=trace_spool_dir),
    )
    if deadline is not None and deadline <= 0:
        raise UsageError(f"--deadline {deadline}: must be a positive number of seconds")
    if no_redact:
        err_console.print(
            "[yellow]warning:[/] --no-redact: the bundle will contain secrets (env values, tokens); do not share it"
        )
    json_output = output_format is OutputFormat.json
    with CollectorProgress(enabled=not json_output) as progress:
        result = run_leaving_stuck_threads(run_collection(opts, progress))
    sent = upload_after_collect(result.output, upload_target, json_output)
    exit_code = sent.exit_code(result.exit_code)
    summary_to = sys.stderr if output == "-" else sys.stdout
    if json_output:
        print(
            json.dumps(
                {
                    "bundle": result.output,
                    "node": result.node,
                    "exit_code": exit_code,
                    "interrupted": result.interrupted,
                    "collectors": [c.to_json() for c in result.collectors],
                    "redactions": result.redactions,
                    **({"upload": sent.summary} if sent.summary is not None else {}),
                },
                indent=2,
            ),
            file=summary_to,
        )
    else:
        _print_summary(result, Console(file=summary_to))
        sent.print_text(summary_to)
    sent.print_error()
    exit_process(exit_code)


def _print_summary(result: CollectResult, console: Console) -> None:
    from kata_debug.cli.progress import STATUS_STYLE

    table = Table(title=f"kata-debug bundle for node {result.node}", title_justify="left")
    table.add_column("collector")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("files", justify="right")
    table.add_column("note")
    for c in result.collectors:
        table.add_row(
            c.name, f"[{STATUS_STYLE[c.status]}]{c.status}[/]", f"{c.duration_s:.1f}s", str(len(c.files)), c.error or ""
        )
    console.print(table)
    if result.interrupted:
        console.print(f"[yellow]{result.interrupted}[/]: unfinished collectors are marked timeout")
    redacted = sum(result.redactions.values())
    console.print(
        f"redacted {redacted} value(s)"
        + (f" ({', '.join(f'{k} {v}' for k, v in result.redactions.items())})" if redacted else "")
    )
    if result.output != "-":
        console.print(f"bundle: [bold]{result.output}[/]")


@app.command("collectors")
def list_collectors() -> None:
    """List the collectors and what each one reads."""
    from kata_debug.collectors import REGISTRY

    for name in REGISTRY:
        try:
            cls = REGISTRY.load(name)
        except Exception as exc:  # a broken collector module: list it, keep listing the rest
            typer.echo(f"{name}: cannot be loaded ({type(exc).__name__}: {exc})")
            continue
        typer.echo(f"{name}: {cls.summary}")
        for r in cls.reads:
            typer.echo(f"    reads {r}")


def _register_commands() -> None:
    """Commands that live in their own modules (one feature each)."""
    from kata_debug.cli import trace as cli_trace

    cli_trace.register(app)
    from kata_debug.cli import limits as cli_limits

    cli_limits.register(app)
    from kata_debug.cli import node_agent as cli_node_agent

    cli_node_agent.register(app)
    from kata_debug.cli import upload as cli_upload

    cli_upload.register(app)
    from kata_debug.cli import captures as cli_captures

    cli_captures.register(app)


_register_commands()


def main() -> None:
    """Entry point: every user-facing error is one line, never a traceback.

    Click's own usage errors (unknown option, bad choice) are turned into one line too,
    naming the option, instead of its framed multi-line panel.
    """
    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="kata-debug", standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        print("kata-debug: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as exc:  # click's UsageError, BadParameter, NoSuchOption, ...
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            sys.exit(0)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        message = " ".join(message.replace("Value error, ", "").split())
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        print(f"kata-debug: error: {message}{hint}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    except KataDebugError as exc:
        print(f"kata-debug: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        print(f"kata-debug: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
