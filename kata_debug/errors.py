"""Errors the CLI turns into one-line messages and exit codes.

Anything raised as `UsageError` means the user gave us something we cannot work with
(exit 2); everything else that escapes a command is a bug and still gets one line, not a
traceback, but exit 1.
"""


class KataDebugError(Exception):
    """Base for errors that carry a message meant for the user."""

    exit_code = 1


class UsageError(KataDebugError):
    """Bad input: names the input and the problem."""

    exit_code = 2


class OutputError(KataDebugError):
    """Nothing could be written where the user asked."""

    exit_code = 1
