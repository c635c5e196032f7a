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

from kata_debug import __version__
from kata_debug.cli import help_render, redact_config
from kata_debug.errors import KataDebugError, UsageError
from kata_debug.node.paths import TRACE_SPOOL_DIR

if TYPE_CHECKING:
    from rich.console import Console

    from kata_debug.collect.runner import CollectResult

app = typer.Typer(
    name="kata-debug",
    help="Tell Kata Containers operators what is wrong with their sandboxes.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
)
help_render.install()  # --help wraps long words instead of cutting them with "…"


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
        Path("/"), "--host-root", metavar="DIR", help="The node's filesystem root (/host in the DaemonSet)."
    ),
    output: str | None = typer.Option(
        None,
        "--output",
        "-o",
        metavar="FILE",
        help="Bundle file (default ./kata-debug-<node>-<UTC time>.tar.zst); '-' = stdout.",
    ),
    since: str = typer.Option(
        "24h",
        "--since",
        metavar="DURATION|TIME",
        help="How far back to read logs: 30m, 24h, 7d, 1h30m, or an RFC 3339 time (2026-12-05T10:00:00Z).",
    ),
    collector: list[str] | None = typer.Option(
        None,
        "--collector",
        "-c",
        metavar="NAME",
        help="Run only this collector (repeatable). See `kata-debug collectors`.",
    ),
    timeout: float = typer.Option(60.0, "--timeout", metavar="SECONDS", help="Seconds each collector may run."),
    deadline: float | None = typer.Option(
        None,
        "--deadline",
        metavar="SECONDS",
        help="Seconds for the whole collection; unfinished collectors are marked timeout.",
    ),
    no_redact: bool = typer.Option(False, "--no-redact", help="Keep secrets in the bundle (prints a warning)."),
    redact_config_file: Path | None = redact_config.option(),
    redact_rules_stdin: bool = redact_config.stdin_option(),
    compression: CompressionChoice | None = typer.Option(
        None,
        "--compression",
        help="Default: from the --output name (.tar.zst zstd, .tar.gz gzip, .tar none), else zstd "
        "(gzip for --cluster).",
    ),
    output_format: OutputFormat = typer.Option(OutputFormat.text, "--format", help="Summary format."),
    output_format_old: OutputFormat | None = typer.Option(None, "--output-format", hidden=True),
    all_runtimes: bool = typer.Option(False, "--all-runtimes", help="Include non-Kata containers' OCI specs."),
    max_log_size: str = typer.Option(
        "50M", "--max-log-size", metavar="SIZE", help="Cap per log source; the newest lines are kept."
    ),
    max_parse_size: str = typer.Option(
        "16M",
        "--max-parse-size",
        metavar="SIZE",
        help="Spec/state files (config.json, persist.json) larger than this are kept raw, cut.",
    ),
    run_host_tools: bool = typer.Option(
        False,
        "--run-host-tools",
        help="Execute the node's containerd/kata-runtime under --host-root (always done when it is /).",
    ),
    node_name: str | None = typer.Option(
        None, "--node-name", metavar="NAME", help="Node name (default: $NODE_NAME or hostname)."
    ),
    trace_spool_dir: str = typer.Option(
        TRACE_SPOOL_DIR,
        "--trace-spool-dir",
        metavar="DIR",
        help="The forwarder's span spool, a node path (resolved under --host-root, like node-agent --spool-dir).",
    ),
    obfuscate_hosts: bool = typer.Option(
        False, "--obfuscate-hosts", help="Replace hostnames, IP and MAC addresses with consistent pseudonyms."
    ),
    obfuscate_map: str | None = typer.Option(
        None,
        "--obfuscate-map",
        metavar="FILE",
        help="Where the pseudonym -> original map goes (default <bundle>.map.json; never in the bundle).",
    ),
    obfuscate_stdin: bool = redact_config.obfuscate_stdin_option(),  # from collect --cluster: key on stdin
    cluster: bool = typer.Option(
        False,
        "--cluster",
        help="Collect the whole cluster through the Kubernetes API (agent pods, else collector pods).",
        rich_help_panel="Cluster mode",
    ),
    kubeconfig: str | None = typer.Option(
        None, "--kubeconfig", metavar="FILE", help="Kubeconfig file.", rich_help_panel="Cluster mode"
    ),
    context: str | None = typer.Option(
        None, "--context", metavar="NAME", help="Kubeconfig context.", rich_help_panel="Cluster mode"
    ),
    node: list[str] | None = typer.Option(
        None,
        "--node",
        metavar="NAME",
        help="Collect this node (repeatable; default: every Kata node).",
        rich_help_panel="Cluster mode",
    ),
    selector: str | None = typer.Option(
        None,
        "--selector",
        "-l",
        metavar="SELECTOR",
        help="Node label selector (default: katacontainers.io/kata-runtime).",
        rich_help_panel="Cluster mode",
    ),
    parallel: int = typer.Option(
        8, "--parallel", metavar="N", help="Nodes collected at once.", rich_help_panel="Cluster mode"
    ),
    node_timeout: float = typer.Option(
        600.0, "--node-timeout", metavar="SECONDS", help="Seconds each node may take.", rich_help_panel="Cluster mode"
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
        metavar="SECONDS",
        help="Seconds a collector pod may take to start running.",
        rich_help_panel="Cluster mode",
    ),
    upload: str | None = typer.Option(
        None,
        "--upload",
        metavar="URL",
        help="Then send the bundle to this http(s) URL (e.g. pre-signed); it stays on disk too.",
        rich_help_panel="Upload",
    ),
    upload_method: str = typer.Option(
        "PUT", "--upload-method", metavar="[PUT|POST]", help="PUT or POST.", rich_help_panel="Upload"
    ),
    upload_header: list[str] | None = typer.Option(
        None,
        "--upload-header",
        metavar="'NAME: VALUE'",
        help="Extra header 'Name: value' (repeatable); $KATA_DEBUG_UPLOAD_TOKEN sets a bearer token.",
        rich_help_panel="Upload",
    ),
    upload_retries: int = typer.Option(
        5, "--upload-retries", metavar="N", help="Retries after a transient failure.", rich_help_panel="Upload"
    ),
    upload_timeout: float = typer.Option(
        60.0,
        "--upload-timeout",
        metavar="SECONDS",
        help="Seconds without progress before an attempt fails.",
        rich_help_panel="Upload",
    ),
    upload_cacert: Path | None = typer.Option(
        None,
        "--upload-cacert",
        metavar="FILE",
        help="CA bundle for a private https endpoint.",
        rich_help_panel="Upload",
    ),
) -> None:
    """Gather this node's Kata evidence into one support bundle (or, with --cluster, every Kata node's)."""
    from kata_debug.cli.options import CompressionName, bundle_compression, deprecated_alias, parse_since
    from kata_debug.cli.upload import parse_collect_upload, upload_after_collect
    from kata_debug.redact.options import obfuscate_options

    if deprecated_alias(ctx, "--format", "output_format", "--output-format", output_format_old):
        assert output_format_old is not None
        output_format = output_format_old
    given_compression: CompressionName | None = compression.value if compression else None
    bundle_compression(output, given_compression, default="zstd")  # refuse a contradiction before any work
    since_span = parse_since(since)
    node_input = redact_config.read_node_input(redact_rules_stdin, obfuscate_stdin)
    redact_rules = redact_config.load(
        redact_config_file, redact=not no_redact, node_input=node_input if redact_rules_stdin else None
    )
    obfuscate = obfuscate_options(obfuscate_hosts, obfuscate_map, node_input.get("obfuscate") if node_input else None)

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
                since=since_span,
                collectors=collector or [],
                timeout=timeout,
                no_redact=no_redact,
                redact_rules=redact_rules,
                compression=bundle_compression(output, given_compression, default="gzip"),
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
                obfuscate=obfuscate,
            )
        )
    from kata_debug.cli.options import given, parse_size

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
        since=since_span,
        collectors=collector or None,
        timeout=timeout,
        deadline=deadline,
        redact=not no_redact,
        redact_rules=redact_rules,
        compression=bundle_compression(output, given_compression, default="zstd"),
        all_runtimes=all_runtimes,
        max_log_bytes=parse_size(max_log_size, "--max-log-size"),
        max_parse_bytes=parse_size(max_parse_size, "--max-parse-size"),
        run_host_tools=True if run_host_tools else None,
        options=CollectorOptions(trace_spool_dir=trace_spool_dir),
        obfuscate=obfuscate,
    )
    if deadline is not None and deadline <= 0:
        raise UsageError(f"--deadline {deadline:g}: must be a positive number of seconds")
    if no_redact:
        from rich.console import Console  # not imported by a run that prints no rich text

        Console(stderr=True).print(
            "[yellow]warning:[/] --no-redact: the bundle will contain secrets (env values, tokens); do not share it"
        )
    json_output = output_format is OutputFormat.json
    with CollectorProgress(enabled=not json_output) as progress:
        result = run_leaving_stuck_threads(run_collection(opts, progress))
    if upload_target is not None:
        from kata_debug.collect import signals

        signals.abort_on_next()  # the bundle is safe on disk: one Ctrl-C stops the upload
    sent = upload_after_collect(result.output, upload_target, json_output)
    exit_code = sent.exit_code(result.exit_code)
    summary_to = sys.stderr if output == "-" else sys.stdout
    written = result.written
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
                    **({"bundle_bytes": written[0], "bundle_sha256": written[1]} if written else {}),
                    **({"obfuscate_map": result.obfuscate_map} if result.obfuscate_map else {}),
                    "findings": [f.to_json() for f in result.diagnosis.findings] if result.diagnosis else None,
                    **({"upload": sent.summary} if sent.summary is not None else {}),
                },
                indent=2,
            ),
            file=summary_to,
        )
    else:
        from rich.console import Console

        _print_summary(result, Console(file=summary_to), written, uploaded=sent.summary is not None)
        sent.print_text(summary_to)
    sent.print_error()
    exit_process(exit_code)


def _print_summary(
    result: CollectResult,
    console: Console,
    written: tuple[int, str] | None,
    uploaded: bool,
) -> None:
    """The end of `collect`: each collector, then the top findings (what is wrong or missing), then what to do next.

    Notes and commands are printed whole on their own lines (soft wrap: the terminal wraps
    them, nothing is cut), never squeezed into a table cell where rich would ellipsize them.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.measure import Measurement
    from rich.table import Table

    from kata_debug.cli.options import human_size
    from kata_debug.cli.progress import STATUS_STYLE

    any_cut = any(c.truncated for c in result.collectors)
    table = Table(title=f"kata-debug bundle for node {escape(result.node)}", title_justify="left")
    table.add_column("collector")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("files", justify="right")
    if any_cut:
        table.add_column("cut by --max-log-size", justify="right")
    for c in result.collectors:
        row = [c.name, f"[{STATUS_STYLE[c.status]}]{c.status}[/]", f"{c.duration_s:.1f}s", str(len(c.files))]
        if any_cut:
            cut = sum(c.truncated.values())
            row.append(f"{human_size(cut)} ({len(c.truncated)} log(s))" if cut else "")
        table.add_row(*row)
    # Never squeezed below its natural width (rich would ellipsize "skipped" as "skipp…"):
    # on a narrow terminal the terminal wraps the lines instead.
    natural = Measurement.get(console, console.options.update_width(1 << 12), table).maximum
    if natural > console.width:
        Console(file=console.file, width=natural, force_terminal=console.is_terminal).print(table)
    else:
        console.print(table)
    for c in result.collectors:
        if c.error:
            console.print(f"[bold]{c.name}[/]: {escape(c.error)}", soft_wrap=True, highlight=False)
    if result.interrupted:
        console.print(f"[yellow]{result.interrupted}[/]: unfinished collectors are marked timeout")
    redacted = sum(result.redactions.values())
    console.print(
        f"redacted {redacted} value(s)"
        + (f" ({', '.join(f'{k} {v}' for k, v in result.redactions.items())})" if redacted else "")
    )
    from kata_debug.cli.diagnose import print_top_findings

    print_top_findings(result.diagnosis, result.output, console)
    # What the node lacks is in the findings above; the one info finding a person running
    # collect must see is that a root run would have gathered more (said once, as a note).
    findings = result.diagnosis.findings if result.diagnosis else []
    not_root = next((f for f in findings if f.id == "collected-without-root"), None)
    if not_root is not None:
        console.print(f"[yellow]note:[/] {escape(not_root.fix)}", soft_wrap=True, highlight=False)
    # Hashed as it was written: the same line for a file and for `-o -` (this summary is on stderr then).
    about = f" ({human_size(written[0])}, sha256 {written[1]})" if written else ""
    console.print(f"bundle: [bold]{escape(result.output)}[/]{about}", soft_wrap=True, highlight=False)
    if result.obfuscate_map:
        console.print(
            f"map: [bold]{escape(result.obfuscate_map)}[/] (pseudonym -> original host names and addresses; "
            "not in the bundle: keep it, do not send it)",
            soft_wrap=True,
            highlight=False,
        )
    if result.output == "-":
        return
    if not uploaded:
        console.print(
            f"next: send it to your Kata vendor or maintainer: kata-debug upload {escape(result.output)} URL "
            "(a pre-signed https URL; see kata-debug upload --help)",
            soft_wrap=True,
            highlight=False,
        )


@app.command("collectors")
def list_collectors(
    output_format: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text (people) or json."),
) -> None:
    """List the collectors and what each one reads."""
    from kata_debug.collectors import REGISTRY

    listed: list[dict[str, object]] = []
    for name in REGISTRY:
        try:
            cls = REGISTRY.load(name)
        except Exception as exc:  # a broken collector module: list it, keep listing the rest
            listed.append({"name": name, "error": f"cannot be loaded ({type(exc).__name__}: {exc})"})
            continue
        listed.append({"name": name, "summary": cls.summary, "reads": list(cls.reads)})
    if output_format is OutputFormat.json:
        typer.echo(json.dumps({"collectors": listed}, indent=2))  # one object, as every report
        return
    for c in listed:
        if "error" in c:
            typer.echo(f"{c['name']}: {c['error']}")
            continue
        typer.echo(f"{c['name']}: {c['summary']}")
        for r in c["reads"]:  # type: ignore[attr-defined]
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
    from kata_debug.cli import diagnose as cli_diagnose

    cli_diagnose.register(app)
    from kata_debug.cli import report as cli_report

    cli_report.register(app)


_register_commands()


def main(prog_name: str = "kata-debug") -> None:
    """Entry point: every user-facing error is one line, never a traceback.

    Click's own usage errors (unknown option, bad choice) are turned into one line too,
    naming the option, instead of its framed multi-line panel.
    """
    from kata_debug.cli import coercion
    from kata_debug.cli.options import real_metavars

    command = typer.main.get_command(app)
    real_metavars(command)
    coercion.install(command)  # option values converted without importing pydantic
    try:
        code = command.main(args=sys.argv[1:], prog_name=prog_name, standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        print("kata-debug: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as exc:  # click's UsageError, BadParameter, NoSuchOption, ...
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":
            # Building the error rendered the help already (rich prints it and returns ""):
            # print only what plain help returned, so it appears once.
            if exc.format_message().strip():
                typer.echo(exc.format_message())
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
    if code == 130:  # typer turns a KeyboardInterrupt inside a command into a silent Exit(130)
        print("kata-debug: interrupted", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)
