"""The `kata-debug` executable's first code: signal handling before any slow import.

Importing the application (typer, rich, aiohttp...) takes a few hundred milliseconds; a
SIGTERM in that time would kill `collect` with no output at all. So `collect` records
SIGINT/SIGTERM (`kata_debug.collect.signals`) before anything else is imported; other
commands keep Python's default handling (Ctrl-C ends them; `forward` and `node-agent`
install their own).
"""

from __future__ import annotations

import sys


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(prog_name: str = "kata-debug") -> None:
    if _command(sys.argv[1:]) != "collect":
        from kata_debug.cli.app import main as app_main

        app_main(prog_name=prog_name)
        return
    from kata_debug.collect import signals

    signals.install()
    try:
        from kata_debug.cli.app import main as app_main

        app_main(prog_name=prog_name)
    except KeyboardInterrupt:  # the third signal arrived while importing
        print("kata-debug: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        signals.ignore_from_now()  # however it exits: a signal during shutdown must not kill it


def kubectl_plugin() -> None:
    """`kubectl kata-debug ...`: kubectl finds the `kubectl-kata_debug` script on PATH and runs it
    with the arguments after the plugin name; help and errors then name the command as typed."""
    main(prog_name="kubectl kata-debug")
