"""`--since` bounds log files as it bounds the journal: by the entries' own timestamps."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from kata_debug.logs.since import first_offset_since, line_time

T0 = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)


def log(minutes: list[int], continuation_every: int = 0) -> tuple[bytes, list[int]]:
    """logrus lines at T0 + m minutes (sorted), some followed by unstamped continuation lines."""
    parts: list[bytes] = []
    starts: list[int] = []
    size = 0
    for i, m in enumerate(minutes):
        starts.append(size)
        stamp = (T0 + timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
        entry = f'time="{stamp}" level=info msg="event {i}" pid=1\n'.encode()
        if continuation_every and i % continuation_every == 0:
            entry += b"    goroutine 1 [running]:\n"
        parts.append(entry)
        size += len(entry)
    return b"".join(parts), starts


def test_the_timestamp_forms_runtimes_write() -> None:
    assert line_time(b'time="2026-11-28T01:02:03.123456789Z" level=info') == datetime(
        2026, 11, 28, 1, 2, 3, 123456, tzinfo=UTC
    )
    assert line_time(b"2026-11-28T01:02:03+01:00 stderr F x") == datetime(2026, 11, 28, 0, 2, 3, tzinfo=UTC)
    assert line_time(b'{"time":"2026-11-28T01:02:03Z","msg":"x"}') == datetime(2026, 11, 28, 1, 2, 3, tzinfo=UTC)
    assert line_time(b"    goroutine 1 [running]:") is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 5000), max_size=400).map(sorted), st.integers(-10, 5010), st.integers(0, 3))
def test_the_first_entry_within_since_is_found(minutes: list[int], since_min: int, cont: int) -> None:
    data, starts = log(minutes, cont)
    since = T0 + timedelta(minutes=since_min)
    expected = next(
        (s for s, m in zip(starts, minutes) if T0 + timedelta(minutes=m, seconds=0.123456) >= since), len(data)
    )
    if minutes and expected == starts[0]:
        expected = 0
    assert first_offset_since(io.BytesIO(data), len(data), since) == expected


def test_a_large_log_is_searched_not_read() -> None:
    data, starts = log(list(range(0, 200_000, 2)))  # ~8 MiB, one entry every two minutes
    since = T0 + timedelta(minutes=150_001)

    class Counting(io.BytesIO):
        read_bytes = 0

        def readline(self, size: int | None = -1) -> bytes:
            line = super().readline(size)
            Counting.read_bytes += len(line)
            return line

    fh = Counting(data)
    offset = first_offset_since(fh, len(data), since)
    assert offset == starts[75_001]
    assert Counting.read_bytes < 1024 * 1024, "a few probes and one short scan, not the whole file"


def test_a_file_without_timestamps_is_not_cut() -> None:
    data = b"plain line\n" * 1000
    assert first_offset_since(io.BytesIO(data), len(data), T0) == 0
