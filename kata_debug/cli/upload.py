"""`kata-debug upload`, and the upload step `collect --upload` runs after writing its bundle.

Options and output only: `kata_debug.upload` checks the target and sends the file. Here
are the transfer bar on a terminal, the one-line and JSON summaries, and the `collect`
side: `--upload-*` options refused without `--upload`, and a failed upload reported with
the path of the bundle, which stays on disk.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import typer

from kata_debug.cli.options import given
from kata_debug.errors import UsageError

if TYPE_CHECKING:
    from kata_debug.upload import UploadResult, UploadTarget

# upload.DEFAULT_RETRIES and upload.TOKEN_ENV, not imported from it: every command's start-up
# imports this module (for `register`) and upload.py alone costs ~10 ms of it. The upload
# module is imported when an upload is asked for; tests/test_upload.py checks these match.
DEFAULT_RETRIES = 5
TOKEN_ENV = "KATA_DEBUG_UPLOAD_TOKEN"
#: The parameter names of `collect`'s options that only mean something with `--upload`.
COLLECT_UPLOAD_OPTIONS = ("upload_method", "upload_header", "upload_retries", "upload_timeout", "upload_cacert")


def upload_with_progress(path: Path, target: UploadTarget, show: bool) -> UploadResult:
    """Upload with a transfer bar on a terminal (stderr), silently otherwise."""
    from kata_debug.upload import upload_file

    show = show and sys.stderr.isatty()
    if not show:
        return asyncio.run(upload_file(path, target))
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    bar = Progress(
        TextColumn("upload"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with bar:
        task = bar.add_task("upload", total=path.stat().st_size)
        return asyncio.run(
            upload_file(
                path,
                target,
                progress=lambda n: bar.advance(task, n),
                restart=lambda: bar.reset(task),
            )
        )


def result_json(result: UploadResult | None, error: str | None = None) -> dict[str, Any]:
    return asdict(result) if result is not None else {"error": error}


def summary_line(r: dict[str, Any]) -> str:
    """One line for a person, from `result_json`."""
    from kata_debug.cli.options import human_size

    return (
        f"uploaded {human_size(r['bytes'])} to {r['url']} (HTTP {r['status']}, {r['seconds']:.1f}s, "
        f"{r['attempts']} attempt(s)); sha256 {r['sha256']}"
    )


def upload(
    ctx: typer.Context,
    bundle: Path = typer.Argument(..., help="The bundle (or any file) to send."),
    url: str = typer.Argument(..., help="Where to send it: an http(s) URL, e.g. a pre-signed object-store URL."),
    method: str = typer.Option("PUT", "--method", metavar="[PUT|POST]", help="PUT (pre-signed URLs) or POST."),
    header: list[str] | None = typer.Option(
        None,
        "--header",
        "-H",
        metavar="'NAME: VALUE'",
        help=f"Extra request header (repeatable). ${TOKEN_ENV} sets a bearer token.",
    ),
    retries: int = typer.Option(
        DEFAULT_RETRIES,
        "--retries",
        metavar="N",
        help="Retries after a transient failure (connection, 408, 429, 5xx).",
    ),
    timeout: float = typer.Option(
        60.0, "--timeout", metavar="SECONDS", help="Seconds without progress before an attempt fails."
    ),
    cacert: Path | None = typer.Option(
        None, "--cacert", metavar="FILE", help="CA bundle for a private https endpoint."
    ),
    output_format: str = typer.Option("text", "--format", metavar="[text|json]", help="Summary format."),
    output_format_old: str | None = typer.Option(None, "--output-format", hidden=True),
) -> None:
    """Send a bundle to a support endpoint (streamed, retried); prints its sha256 to quote to the vendor."""
    from kata_debug.cli.options import deprecated_alias

    flag = "--format"
    if deprecated_alias(ctx, "--format", "output_format", "--output-format", output_format_old):
        assert output_format_old is not None
        output_format, flag = output_format_old, "--output-format"
    if output_format not in ("text", "json"):
        raise UsageError(f"{flag} {output_format}: use text or json")
    if bundle.is_dir():
        raise UsageError(f"BUNDLE {bundle}: is a directory; upload needs one file (a bundle from `kata-debug collect`)")
    if not bundle.is_file():
        raise UsageError(f"BUNDLE {bundle}: no such file")
    target = _parse(url, method, header, retries, timeout, cacert, for_collect=False)
    result = upload_with_progress(bundle, target, show=output_format == "text")
    if output_format == "json":
        print(json.dumps(result_json(result), indent=2))
    else:
        print(summary_line(result_json(result)))


def _parse(
    url: str,
    method: str,
    header: list[str] | None,
    retries: int,
    timeout: float,
    cacert: Path | None,
    for_collect: bool,
) -> UploadTarget:
    """`parse_target`, its errors naming the options as the command spells them."""
    from kata_debug.upload import parse_target

    try:
        return parse_target(url, method, header, retries, timeout, cacert)
    except UsageError as exc:
        if for_collect:
            raise
        raise UsageError(str(exc).replace("--upload-", "--").replace("--upload ", "URL ")) from None


def parse_collect_upload(
    ctx: typer.Context,
    url: str | None,
    method: str,
    header: list[str] | None,
    retries: int,
    timeout: float,
    cacert: Path | None,
    output: str | None,
    redact: bool,
) -> UploadTarget | None:
    """The `collect --upload*` options, checked before collection starts.

    `ctx` is the `collect` command's: an `--upload-*` option given without `--upload` is
    refused even when it is given its default value (`--upload-retries 5`).
    """
    if url is None:
        if any(given(ctx, name) for name in COLLECT_UPLOAD_OPTIONS):
            raise UsageError(
                "--upload-method/--upload-header/--upload-retries/--upload-timeout/--upload-cacert: "
                "only valid with --upload"
            )
        return None
    if output == "-":
        raise UsageError("--upload: not valid with --output - (the bundle goes to stdout)")
    if not redact:
        raise UsageError(
            "--upload with --no-redact: the bundle would carry secrets off the node; "
            "review it and send it with `kata-debug upload` if you must"
        )
    return _parse(url, method, header, retries, timeout, cacert, for_collect=True)


@dataclass(frozen=True)
class AfterCollect:
    """The upload step of `collect --upload`: what to add to the summary, and what went wrong."""

    summary: dict[str, Any] | None = None  # None: no upload was asked for
    error: str | None = None

    def exit_code(self, collected: int) -> int:
        return 1 if self.error else collected

    def print_text(self, to: TextIO) -> None:
        if self.summary is not None and self.error is None:
            print(summary_line(self.summary), file=to)

    def print_error(self) -> None:
        if self.error:
            print(f"kata-debug: error: {self.error}", file=sys.stderr)


def upload_after_collect(path: str, target: UploadTarget | None, json_output: bool) -> AfterCollect:
    """Upload a finished bundle, if asked to. The bundle stays on disk whatever happens."""
    if target is None:
        return AfterCollect()
    from kata_debug.upload import UploadError

    try:
        result = upload_with_progress(Path(path), target, show=not json_output)
    except UploadError as exc:
        return AfterCollect(result_json(None, str(exc)), f"{exc}; the bundle is kept at {path}")
    return AfterCollect(result_json(result))


def register(app: typer.Typer) -> None:
    app.command("upload")(upload)
