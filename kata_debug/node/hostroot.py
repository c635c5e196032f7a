"""Resolve node paths under a host root, the way a chroot would.

In a DaemonSet the node's filesystem is mounted at `/host`, and it is full of absolute
symlinks (`/etc/kata-containers -> /opt/kata/share/...`). Following them naively would read
the *container's* files or escape the root entirely, so every lookup walks the path one
component at a time and re-roots absolute link targets, clamping `..` at the root, like
openat2(RESOLVE_IN_ROOT). No collector ever opens a host path any other way.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_MAX_LINKS = 40


@dataclass(frozen=True)
class HostRoot:
    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> HostRoot:
        return cls(Path(os.path.abspath(root)))

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """Return the real location of node path `path` under the root.

        A missing component ends the walk (the rest is appended unresolved), so callers can
        still use the result with `exists()` and get a clean "not found".
        """
        parts = [p for p in str(path).split("/") if p not in ("", ".")]
        resolved: list[str] = []
        links = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            candidate = self.root.joinpath(*resolved, part)
            try:
                is_link = candidate.is_symlink()
            except OSError:
                is_link = False
            if not is_link:
                resolved.append(part)
                continue
            links += 1
            if links > _MAX_LINKS:
                raise OSError(f"too many levels of symbolic links resolving {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
        return self.root.joinpath(*resolved)

    def exists(self, path: str) -> bool:
        return self.resolve(path).exists()

    def first_file(self, paths: Sequence[str]) -> Path | None:
        """The real location of the first of `paths` that is a file on the node (a tool's install paths)."""
        for p in paths:
            real = self.resolve(p)
            if real.is_file():
                return real
        return None

    def open(self, path: str | Path) -> BinaryIO:
        """Open a node file for reading, resolved in the root; only a regular file opens.

        A `str` is a node path (`/run/...`). A `Path` is a location already under the root
        (from a listing): it is turned back into a node path and resolved again, so a
        symlink in its last component cannot lead outside the root either.
        """
        real = self.resolve(path if isinstance(path, str) else self.node_path(path))
        return open_regular(real)

    def read_bytes(self, path: str | Path, limit: int | None = None) -> bytes:
        with self.open(path) as fh:
            return fh.read(-1 if limit is None else limit)

    def read_text(self, path: str | Path, limit: int | None = None) -> str:
        return self.read_bytes(path, limit).decode("utf-8", "replace")

    def listdir(self, path: str) -> list[str]:
        """Sorted entry names, or [] when the directory does not exist."""
        try:
            return sorted(os.listdir(self.resolve(path)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def node_path(self, real: Path) -> str:
        """The node-side path (`/run/...`) of a location under the root."""
        rel = os.path.relpath(real, self.root)
        return "/" if rel == "." else "/" + rel


def open_regular(real: str | os.PathLike[str]) -> BinaryIO:
    """Open `real` for reading if it is a regular file; OSError("not a regular file") if not.

    A FIFO, socket or device planted where a config or state file should be would block a
    plain `open()` forever (a FIFO without a writer) or stream without end (a device), and
    a worker thread stuck in it keeps the process from ever exiting. Opening non-blocking
    first never waits, and `fstat` on the open descriptor checks the very file we read.
    """
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(real))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
