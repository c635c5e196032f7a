"""The node's own log files: kernel, syslog, kubelet and audit, read as the node wrote them.

Nodes without a persistent journal (or with rsyslog beside it) keep the kernel's and the
kubelet's story in plain files: `/var/log/kern.log`, `/var/log/syslog` or
`/var/log/messages`, `/var/log/kubelet.log`; SELinux and AppArmor denials that stop a VM
from starting are in `/var/log/audit/audit.log`. Three things make them unlike the runtimes'
logs:

- syslog (`Nov 28 00:00:01`) and klog (`I1128 00:00:01.123456`) stamps carry neither year
  nor zone: they are the node's wall clock, so they are read in the node's own time zone
  (`/etc/localtime` under the host root, not the collector's) and in the year that puts
  them no later than a day from now;
- syslog files hold every daemon's lines: only the kernel's and those of the identifiers
  shim-logs reads from the journal are wanted (the rest is noise and other people's data);
- audit records are kept per event: an event with an AVC record keeps all its records (the
  SYSCALL names the binary, PROCTITLE the command line). `proctitle=` is the command line
  hex-encoded, NULs between arguments: it is decoded here, before redaction, so a password
  on a command line is masked instead of shipped as hex.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import BinaryIO
from zoneinfo import ZoneInfo

from kata_debug.logs.since import Stamp, line_time
from kata_debug.node.hostroot import HostRoot

_MONTHS = {m: i for i, m in enumerate(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), 1)}
# `Nov 28 00:00:01` / `Nov  8 00:00:01` (RFC 3164, rsyslog's traditional format).
_SYSLOG = re.compile(rb"([A-Z][a-z]{2}) ([ \d]\d) (\d\d):(\d\d):(\d\d)")
# klog: `I1128 00:00:01.123456` (severity, month, day, time; microseconds).
_KLOG = re.compile(rb"[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?")
# `type=AVC msg=audit(1764288001.123:4567): ...`: the event's time and serial.
_AUDIT = re.compile(rb"type=(\S+) msg=audit\((\d+)(?:\.(\d+))?:(\d+)\)")
#: Audit record types that make an event worth keeping: SELinux/AppArmor denials.
AVC_TYPES = frozenset({b"AVC", b"USER_AVC", b"SELINUX_ERR", b"USER_SELINUX_ERR", b"1400", b"1107"})
_PROCTITLE = re.compile(rb"(?<![\w-])proctitle=([0-9A-F]+)(?=\s|$)")
# Events still being assembled (records of concurrent events may interleave).
_OPEN_EVENTS = 64


@dataclass(frozen=True)
class NodeZone:
    """The node's time zone, and what the summary says about where it came from."""

    zone: tzinfo
    name: str


def node_zone(host: HostRoot) -> NodeZone:
    """The node's time zone from `/etc/localtime` under the host root; UTC when it has none.

    Reads the TZif data itself (a DaemonSet mounts the file, not the symlink), and names
    the zone by the symlink's target where there is one (`Europe/Berlin`).
    """
    link = host.root / "etc/localtime"
    name = "/etc/localtime"
    try:
        target = os.readlink(link)
        if "zoneinfo/" in target:
            name = target.rsplit("zoneinfo/", 1)[1]
    except OSError:
        pass
    try:
        with host.open("/etc/localtime") as fh:  # walked in the root, never followed out of it
            zone: tzinfo = ZoneInfo.from_file(fh, key=None if name == "/etc/localtime" else name)
    except FileNotFoundError:
        return NodeZone(UTC, "UTC (no /etc/localtime)")
    except (OSError, ValueError) as exc:
        return NodeZone(UTC, f"UTC (/etc/localtime unreadable: {exc})")
    return NodeZone(zone, name)


def _in_year(zone: tzinfo, now: datetime, month: int, day: int, h: int, m: int, s: int, us: int) -> datetime | None:
    """A year-less wall-clock time on the node: this year's, unless that is over a day ahead
    (then last year's: a December line read in January)."""
    year = now.astimezone(zone).year
    try:
        t = datetime(year, month, day, h, m, s, us, tzinfo=zone)
        if t > now + timedelta(days=1):
            t = t.replace(year=year - 1)
    except ValueError:  # Feb 29 in a year without one
        return None
    return t.astimezone(UTC)


def syslog_stamp(zone: tzinfo, now: datetime) -> Stamp:
    """Reads `Nov 28 00:00:01 host ...` in the node's zone, and RFC 3339 stamps as written."""

    def stamp(line: bytes) -> datetime | None:
        m = _SYSLOG.match(line)
        if m is None:
            return line_time(line)  # rsyslog's high-precision format names its offset
        month = _MONTHS.get(m[1])
        if month is None:
            return None
        return _in_year(zone, now, month, int(m[2]), int(m[3]), int(m[4]), int(m[5]), 0)

    return stamp


def klog_stamp(zone: tzinfo, now: datetime) -> Stamp:
    """Reads klog's `I1128 00:00:01.123456` in the node's zone; JSON/logfmt kubelet logs as written."""

    def stamp(line: bytes) -> datetime | None:
        m = _KLOG.match(line)
        if m is None:
            return line_time(line)
        us = int((m[6] or b"0").ljust(6, b"0")[:6])
        return _in_year(zone, now, int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), us)

    return stamp


def audit_stamp(line: bytes) -> datetime | None:
    """An audit record's time: seconds since the epoch, so no zone to guess."""
    m = _AUDIT.match(line)
    if m is None:
        return None
    return datetime.fromtimestamp(int(m[2]) + int((m[3] or b"0").ljust(6, b"0")[:6]) / 1e6, UTC)


def syslog_filter(identifiers: Sequence[str]) -> Callable[[list[bytes]], Iterable[bytes]]:
    """Keeps the lines whose syslog tag is `kernel` or one of `identifiers` (`kata[123]: ...`)."""
    tags = b"|".join(re.escape(i.encode()) for i in ("kernel", *identifiers))
    line = re.compile(
        rb"(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\S+) \S+ (?:" + tags + rb")(?:\[\d+\])?: "
    )
    return lambda lines: filter(line.match, lines)


def decode_proctitle(record: bytes) -> bytes:
    """`proctitle=2F62696E...` -> `proctitle=/bin/sh -c ...`: the argv, spaces between
    arguments, bytes outside printable ASCII as `\\xNN` so the record stays one line."""

    def decoded(m: re.Match[bytes]) -> bytes:
        hexed = m[1]
        if len(hexed) % 2:
            return m[0]
        argv = bytes.fromhex(hexed.decode()).rstrip(b"\0").split(b"\0")
        text = b" ".join(argv)
        return b"proctitle=" + re.sub(rb"[^\x20-\x7e]", lambda c: b"\\x%02x" % c[0][0], text)

    return _PROCTITLE.sub(decoded, record)


class AuditEvents:
    """Keeps the audit events that hold an AVC record, all their records, proctitle decoded.

    Fed lines in file order; an event is decided when its `EOE` record comes, when more
    than `_OPEN_EVENTS` later events have started, or at the end (`flush`). Kept events
    come out in the order their first record was written.
    """

    def __init__(self) -> None:
        self._open: OrderedDict[bytes, tuple[list[bytes], bool]] = OrderedDict()

    def feed(self, lines: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for line in lines:
            m = _AUDIT.search(line)
            if m is None:
                continue  # not a record (a torn line): nothing to attach it to
            serial = m[4]
            if serial not in self._open:
                self._open[serial] = ([], False)
            records, avc = self._open[serial]
            if m[1] == b"EOE":
                del self._open[serial]
                if avc or m[1] in AVC_TYPES:
                    out += records
                continue
            records.append(decode_proctitle(line) if m[1] == b"PROCTITLE" else line)
            if m[1] in AVC_TYPES and not avc:
                self._open[serial] = (records, True)
            while len(self._open) > _OPEN_EVENTS:
                _, (old, old_avc) = self._open.popitem(last=False)
                if old_avc:
                    out += old
        return out

    def flush(self) -> list[bytes]:
        out = [line for records, avc in self._open.values() if avc for line in records]
        self._open.clear()
        return out


_CHUNK = 1 << 20


def filter_window(src: BinaryIO, start: int, out: BinaryIO, keep: Callable[[list[bytes]], Iterable[bytes]]) -> int:
    """Copy the lines from `start` to the end of `src` that `keep` keeps; returns lines read.

    Works on 1 MiB of whole lines at a time: the line split and the regex run in C.
    """
    src.seek(start)
    read = 0
    while chunk := src.read(_CHUNK):
        # At most a chunk more to finish the last line: a file that is one endless line is
        # read (and filtered, as pieces that are no syslog line) a bounded piece at a time.
        chunk += src.readline(_CHUNK)
        lines = chunk.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        read += len(lines)
        kept = list(keep(lines))
        if kept:
            out.write(b"\n".join(kept) + b"\n")
    return read


def filter_audit(src: BinaryIO, start: int, out: BinaryIO) -> int:
    """`filter_window` for audit.log: AVC events whole, proctitle decoded."""
    events = AuditEvents()
    read = filter_window(src, start, out, events.feed)
    rest = events.flush()
    if rest:
        out.write(b"\n".join(rest) + b"\n")
    return read
