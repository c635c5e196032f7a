"""Resolve node paths under a host root, the way a chroot would.

In a DaemonSet the node's filesystem is mounted at `/host`, and it is full of absolute
symlinks (`/etc/kata-containers -> /opt/kata/share/...`). Following them naively would read
the *container's* files or escape the root entirely, so every lookup walks the path one
component at a time and re-roots absolute link targets, clamping `..` at the root, like
openat2(RESOLVE_IN_ROOT). No collector ever opens a host path any other way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

_MAX_LINKS = 40


@dataclass(frozen=True)
class HostRoot:
    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> "HostRoot":
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

    def read_bytes(self, path: str, limit: int | None = None) -> bytes:
        with open(self.resolve(path), "rb") as fh:
            return fh.read(-1 if limit is None else limit)

    def read_text(self, path: str, limit: int | None = None) -> str:
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
