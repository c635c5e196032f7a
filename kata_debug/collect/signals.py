"""SIGINT/SIGTERM for `collect`, from the first instant of the process to its exit.

`collect` promises a valid bundle when it is interrupted, so a signal must never kill it
half-way: not while Python is still importing (a SIGTERM in the first 0.3 s used to kill it
outright, before any handler existed), and not while the manifest is being written (a
second Ctrl-C used to land after the event loop's handler was removed, exit 130, no bundle).

`install` is called by the entry point before any slow import; from then on the first and
second signal are only recorded: the collection stops its collectors at once (or never
starts them) and still writes its manifest, exiting 3. A third signal means "stop now": it
raises KeyboardInterrupt wherever the main thread is (exit 130, the `.partial` stays).
This module imports nothing heavy: it must be cheap to load first.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType

#: The signal that aborts instead of being recorded.
ABORT_AT = 3
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    installed = False
    done = False
    abort_at = ABORT_AT
    count = 0
    first: str | None = None
    listener: Callable[[str], None] | None = None


_state = _State()


def _handler(signum: int, frame: FrameType | None) -> None:
    _state.count += 1
    name = signal.Signals(signum).name
    if _state.first is None:
        _state.first = name
    if _state.count >= _state.abort_at and not _state.done:
        raise KeyboardInterrupt(f"{name} received {_state.count} times")
    if _state.listener is not None:
        _state.listener(name)


def install() -> None:
    """Record SIGINT and SIGTERM from now on (main thread only; idempotent)."""
    for sig in _SIGNALS:
        signal.signal(sig, _handler)
    _state.installed = True


def installed() -> bool:
    return _state.installed


def received() -> str | None:
    """The first signal received so far (`"SIGINT"`), or None."""
    return _state.first


def output_complete() -> None:
    """The bundle is written and in place: from now on no signal aborts (it could only turn a
    finished run into exit 130 with its bundle already there)."""
    _state.done = True


def abort_on_next() -> None:
    """From now on the next signal aborts (KeyboardInterrupt): for work after the bundle that
    a user must be able to stop with one Ctrl-C (`collect --upload`)."""
    _state.done = False
    _state.abort_at = _state.count + 1


def ignore_from_now() -> None:
    """The exit code is decided: ignore SIGINT/SIGTERM for the rest of the process.

    Python resets its signal handlers to the default action while it shuts down, so a
    signal in those last milliseconds would kill a run that has already written its bundle
    (exit -2 instead of 3). An ignored signal is left ignored.
    """
    if _state.installed:
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def listen(callback: Callable[[str], None] | None) -> None:
    """Call `callback(signal name)` (from the signal handler) on each recorded signal; None stops."""
    _state.listener = callback
