"""Open node files under a host root, the way a chroot would, one descriptor at a time.

In a DaemonSet the node's filesystem is mounted at `/host`, and it is full of absolute
symlinks (`/etc/kata-containers -> /opt/kata/share/...`). Following them naively would read
the *container's* files or escape the root entirely, so every lookup walks the path one
component at a time from a descriptor of the root, opening each component relative to its
parent's descriptor with `O_NOFOLLOW`; a symlink met on the way is read and its target
walked the same way, absolute targets re-rooted and `..` clamped at the root, like
openat2(RESOLVE_IN_ROOT).

The file that is read is the descriptor the walk ended on: size, type and content all come
from that one open file, so a file swapped for a symlink (or a directory for a link) while
a collector works can never lead it outside the root. Nothing here opens a resolved path
string again; `resolve` exists only for what cannot be opened (Unix sockets to connect to,
binaries to execute) and for display.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_MAX_LINKS = 40
_CLOEXEC = os.O_CLOEXEC
#: Walking through a directory needs no read permission on it, only search: O_PATH.
_THROUGH = os.O_PATH | os.O_DIRECTORY | _CLOEXEC
#: A file to read: never block on a FIFO, never become the controlling terminal.
_READ_FILE = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | _CLOEXEC
_READ_DIR = os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC
_LOOK = os.O_PATH | _CLOEXEC


@dataclass(frozen=True)
class HostItemError:
    """One node path that could not be read (a looping link, no permission): a per-item failure."""

    path: str
    reason: str


def describe(exc: OSError) -> str:
    """One short reason for an OSError, for an `items_failed` entry."""
    if exc.errno == errno.ELOOP:
        return "too many levels of symbolic links"
    return exc.strerror or str(exc)


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


@dataclass(frozen=True)
class HostRoot:
    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> HostRoot:
        return cls(Path(os.path.abspath(root)))

    def _node(self, path: str | os.PathLike[str]) -> str:
        """A node path for `path`: a `str` is one already; a `Path` is a location under the root."""
        return path if isinstance(path, str) else self.node_path(Path(path))

    def _walk(self, path: str | os.PathLike[str], final: int) -> tuple[int, list[str]]:
        """Open node path `path` with flags `final`; returns the descriptor and where it is.

        Every component is opened relative to its parent's descriptor with O_NOFOLLOW; a
        component that is a symlink (ELOOP or ENOTDIR from O_NOFOLLOW) is read with
        readlinkat and its target spliced into the walk, so the kernel never follows a
        link for us. The second value is the node-side components of the result.
        """
        node = self._node(path)
        todo = _parts(node)
        stack: list[tuple[int, str]] = [(os.open(self.root, _THROUGH), "")]  # (descriptor, component)
        links = 0

        def here() -> list[str]:
            return [c for _, c in stack[1:]]

        def follow(part: str, parent: int) -> None:
            """Splice the target of link `part` into the walk (absolute: from the root)."""
            nonlocal todo, links
            links += 1
            if links > _MAX_LINKS:
                raise OSError(errno.ELOOP, f"too many levels of symbolic links resolving {node}")
            target = os.readlink(part, dir_fd=parent)
            if target.startswith("/"):
                while len(stack) > 1:
                    os.close(stack.pop()[0])
            todo = _parts(target) + todo

        try:
            while todo:
                part = todo.pop(0)
                if part == "..":
                    if len(stack) > 1:
                        os.close(stack.pop()[0])
                    continue
                parent = stack[-1][0]
                flags = final if not todo else _THROUGH
                try:
                    fd = os.open(part, flags | os.O_NOFOLLOW, dir_fd=parent)
                except OSError as exc:
                    # O_NOFOLLOW on a link: ELOOP, or ENOTDIR when a directory was asked for.
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    try:
                        follow(part, parent)
                    except OSError as again:
                        if again.errno == errno.EINVAL:  # not a link: the first error stands
                            raise exc from None
                        raise
                    continue
                if flags & os.O_PATH and not flags & os.O_DIRECTORY and stat.S_ISLNK(os.fstat(fd).st_mode):
                    os.close(fd)  # O_PATH|O_NOFOLLOW opens a link itself instead of failing
                    follow(part, parent)
                    continue
                if not todo:
                    return fd, here() + [part]
                stack.append((fd, part))
            # The walk ended on a directory already held (the root, `..`, a link to a directory).
            return os.open(".", final, dir_fd=stack[-1][0]), here()
        finally:
            for fd, _ in stack:
                os.close(fd)

    # -- opening -------------------------------------------------------------------------

    def open(self, path: str | os.PathLike[str]) -> BinaryIO:
        """Open a node file for reading, resolved in the root; only a regular file opens.

        A `str` is a node path (`/run/...`); a `Path` is a location under the root (from a
        listing), turned back into a node path and walked again from the root.
        """
        fd, _ = self._walk(path, _READ_FILE)
        return _regular(fd, self._node(path))

    @contextmanager
    def open_dir(self, path: str | os.PathLike[str]) -> Iterator[HostDir]:
        """A node directory held open: list it and open its entries relative to its descriptor."""
        fd, where = self._walk(path, _READ_DIR)
        try:
            yield HostDir(self, fd, "/" + "/".join(where))
        finally:
            os.close(fd)

    def read_bytes(self, path: str | os.PathLike[str], limit: int | None = None) -> bytes:
        with self.open(path) as fh:
            return fh.read(-1 if limit is None else limit)

    def read_text(self, path: str | os.PathLike[str], limit: int | None = None) -> str:
        return self.read_bytes(path, limit).decode("utf-8", "replace")

    # -- looking -------------------------------------------------------------------------

    def stat(self, path: str | os.PathLike[str]) -> os.stat_result:
        """stat() of what a node path leads to (links followed inside the root)."""
        fd, _ = self._walk(path, _LOOK)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def _mode(self, path: str | os.PathLike[str]) -> int | None:
        """File type bits, or None when the path leads nowhere (missing, a loop, no permission)."""
        try:
            return self.stat(path).st_mode
        except OSError:
            return None

    def exists(self, path: str | os.PathLike[str]) -> bool:
        return self._mode(path) is not None

    def is_file(self, path: str | os.PathLike[str]) -> bool:
        mode = self._mode(path)
        return mode is not None and stat.S_ISREG(mode)

    def is_dir(self, path: str | os.PathLike[str]) -> bool:
        mode = self._mode(path)
        return mode is not None and stat.S_ISDIR(mode)

    def listdir(self, path: str | os.PathLike[str]) -> list[str]:
        """Sorted entry names, or [] when the directory does not exist.

        Any other failure (a link loop, no permission) raises OSError: the caller records
        it as a failed item instead of taking it for an empty directory.
        """
        try:
            with self.open_dir(path) as d:
                return d.names()
        except (FileNotFoundError, NotADirectoryError):
            return []

    def first_file(self, paths: Sequence[str]) -> Path | None:
        """Where (under the root) the first of `paths` that is a file on the node is: a tool to execute."""
        for p in paths:
            if self.is_file(p):
                return self.resolve(p)
        return None

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """The location under the root a node path leads to, for what cannot be opened (sockets).

        Walks the path like `open` does; a missing component ends the walk (the rest is
        appended unresolved), so the result still gives a clean "not found". Never open the
        result for reading: use `open`, which reads through the descriptor it resolved.
        """
        node = self._node(path)
        todo = _parts(node)
        done: list[str] = []
        links = 0
        while todo:
            part = todo.pop(0)
            if part == "..":
                if done:
                    done.pop()
                continue
            candidate = self.root.joinpath(*done, part)
            try:
                is_link = candidate.is_symlink()
            except OSError:
                is_link = False
            if not is_link:
                done.append(part)
                continue
            links += 1
            if links > _MAX_LINKS:
                raise OSError(errno.ELOOP, f"too many levels of symbolic links resolving {node}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            todo = _parts(target) + todo
        return self.root.joinpath(*done)

    def node_path(self, real: Path) -> str:
        """The node-side path (`/run/...`) of a location under the root."""
        rel = os.path.relpath(real, self.root)
        return "/" if rel == "." else "/" + rel


@dataclass(frozen=True)
class HostDir:
    """A node directory open as a descriptor; its entries are opened relative to it.

    `path` is the node path the walk ended on (links resolved), used to re-root a link
    found among the entries.
    """

    host: HostRoot
    fd: int
    path: str

    def names(self) -> list[str]:
        return sorted(os.listdir(self.fd))

    def child(self, name: str) -> str:
        """The node path of entry `name`."""
        _check_name(name)
        return self.path.rstrip("/") + "/" + name

    def lstat(self, name: str) -> os.stat_result:
        """The entry itself (a link is a link), relative to the open directory."""
        _check_name(name)
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def open(self, name: str) -> BinaryIO:
        """Open regular file `name` in this directory; a symlink entry is resolved in the root."""
        _check_name(name)
        try:
            fd = os.open(name, _READ_FILE | os.O_NOFOLLOW, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            return self.host.open(self.child(name))  # a link: walked from the root like any node path
        return _regular(fd, self.child(name))

    @contextmanager
    def open_dir(self, name: str) -> Iterator[HostDir]:
        """Subdirectory `name`; a symlink entry is resolved in the root."""
        _check_name(name)
        try:
            fd = os.open(name, _READ_DIR | os.O_NOFOLLOW, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            with self.host.open_dir(self.child(name)) as d:
                yield d
            return
        try:
            yield HostDir(self.host, fd, self.child(name))
        finally:
            os.close(fd)


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"not a directory entry name: {name!r}")


def _regular(fd: int, what: str) -> BinaryIO:
    """Wrap a descriptor opened non-blocking if it is a regular file; OSError("not a regular file") if not.

    A FIFO, socket or device planted where a config or state file should be would block a
    plain `open()` forever (a FIFO without a writer) or stream without end (a device), and
    a worker thread stuck in it keeps the process from ever exiting. Opening non-blocking
    first never waits, and `fstat` on the open descriptor checks the very file we read.
    """
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", what)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_regular(real: str | os.PathLike[str]) -> BinaryIO:
    """Open a path of this machine (not a node path) if it is a regular file.

    For a node file use `HostRoot.open`: this follows links wherever they lead. Kept for
    callers that open files of their own (spools, temp files) with the same FIFO guard.
    """
    fd = os.open(real, _READ_FILE)
    return _regular(fd, str(real))
