"""`kata-debug captures`: list the node agent's capture bundles, and `captures export ID -o FILE`.

The spool directory resolves as in `collect`: a node path (`--spool-dir`, default
/var/lib/kata-debug/traces) under `--host-root`.
"""

from __future__ import annotations

import json
import shutil
from enum import Enum
from pathlib import Path

import typer

from kata_debug.node.paths import CAPTURES_SUBDIR, TRACE_SPOOL_DIR

captures_app = typer.Typer(help="Capture bundles the node agent kept of failed sandboxes.")

_HOST_ROOT = typer.Option(Path("/"), "--host-root", help="The node's filesystem root (/host in the DaemonSet).")
_SPOOL = typer.Option(TRACE_SPOOL_DIR, "--spool-dir", help="Node path of the agent's spool directory.")


def _dir(host_root: Path, spool_dir: str) -> Path:
    from kata_debug.errors import UsageError
    from kata_debug.node.hostroot import HostRoot

    if not host_root.is_dir():
        raise UsageError(f"--host-root {host_root}: not a directory")
    return HostRoot.at(host_root).resolve(f"{spool_dir.rstrip('/')}/{CAPTURES_SUBDIR}")


class ListFormat(str, Enum):
    text = "text"
    json = "json"


@captures_app.callback(invoke_without_command=True)
def list_captures(
    ctx: typer.Context,
    host_root: Path = _HOST_ROOT,
    spool_dir: str = _SPOOL,
    output_format: ListFormat = typer.Option(ListFormat.text, "--format", help="text (people) or json."),
) -> None:
    """List the captures, newest first: ID (the file name), time, sandbox, pod, reason, top finding."""
    if ctx.invoked_subcommand is not None:
        return
    from kata_debug.collectors.captures import list_captures as listing

    directory = _dir(host_root, spool_dir)
    records = listing(directory)
    if output_format is ListFormat.json:
        # One object, as every report: the records as the `captures` collector stores them.
        typer.echo(json.dumps({"directory": str(directory), "captures": [r.to_json() for r in records]}, indent=2))
        return
    if not records:
        typer.echo(f"no captures in {directory}")
        return
    typer.echo("ID\tTIME\tSANDBOX\tPOD\tREASON\tTOP FINDING")
    for r in records:
        typer.echo(f"{r.id}\t{r.time}\t{r.sandbox}\t{r.pod or '-'}\t{r.reason}\t{r.top_finding or '-'}")


@captures_app.command("export")
def export(
    capture_id: str = typer.Argument(..., metavar="ID", help="A capture's ID, as `kata-debug captures` lists it."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to copy the capture bundle."),
    host_root: Path = _HOST_ROOT,
    spool_dir: str = _SPOOL,
) -> None:
    """Copy one capture bundle out of the spool."""
    from kata_debug.errors import OutputError, UsageError

    if "/" in capture_id or capture_id.startswith(".") or not capture_id.endswith(".tar.gz"):
        raise UsageError(f"ID {capture_id!r}: not a capture ID (a file name as `kata-debug captures` lists it)")
    from kata_debug.node.hostroot import HostRoot

    if not host_root.is_dir():
        raise UsageError(f"--host-root {host_root}: not a directory")
    node_path = f"{spool_dir.rstrip('/')}/{CAPTURES_SUBDIR}/{capture_id}"
    if output.is_dir():
        raise OutputError(f"--output {output}: is a directory (give a file name)")
    try:
        # Read through a descriptor walked inside the host root: a capture swapped for a link
        # to a file outside it is not followed.
        src = HostRoot.at(host_root).open(node_path)
    except OSError:
        raise UsageError(f"ID {capture_id}: no such capture in {spool_dir.rstrip('/')}/{CAPTURES_SUBDIR}") from None
    with src:
        try:
            with open(output, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except OSError as exc:
            raise OutputError(f"--output {output}: cannot write: {exc.strerror or exc}") from None
    typer.echo(str(output))


def register(app: typer.Typer) -> None:
    app.add_typer(captures_app, name="captures")
