"""Every host path resolves under the host root; symlinks never lead outside it."""

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from kata_debug.node.hostroot import HostRoot


def test_absolute_symlink_is_re_rooted(tmp_path: Path) -> None:
    (tmp_path / "opt/kata/share").mkdir(parents=True)
    (tmp_path / "opt/kata/share/configuration.toml").write_text("x")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/kata-containers").symlink_to("/opt/kata/share")
    host = HostRoot.at(tmp_path)
    assert host.resolve("/etc/kata-containers/configuration.toml") == tmp_path / "opt/kata/share/configuration.toml"
    assert host.read_text("/etc/kata-containers/configuration.toml") == "x"


def test_dotdot_and_escaping_links_are_clamped_at_the_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("node passwd")
    (tmp_path / "run").mkdir()
    (tmp_path / "run/evil").symlink_to("../../../../etc/passwd")
    (tmp_path / "run/abs").symlink_to("/etc/passwd")
    host = HostRoot.at(tmp_path)
    for p in ("/run/evil", "/run/abs", "/../../etc/passwd"):
        assert host.resolve(p) == tmp_path / "etc/passwd"
        assert host.read_text(p) == "node passwd"


def test_symlink_loops_are_reported_not_followed_forever(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("/b")
    (tmp_path / "b").symlink_to("/a")
    host = HostRoot.at(tmp_path)
    try:
        host.resolve("/a/x")
    except OSError as exc:
        assert "symbolic links" in str(exc)
    else:
        raise AssertionError("loop not detected")


def test_missing_paths_resolve_for_a_clean_not_found(tmp_path: Path) -> None:
    host = HostRoot.at(tmp_path)
    assert not host.exists("/run/vc/sbs")
    assert host.listdir("/run/vc/sbs") == []
    assert host.node_path(tmp_path / "run/x") == "/run/x"


def _flipper(path: Path, real: bytes | None, outside: Path, stop: threading.Event) -> threading.Thread:
    """Swap `path` between a real file (a directory holding `f` when `real` is None) and a link to `outside`."""

    def put(make: Callable[[Path], None]) -> None:
        new, old = path.with_name(path.name + ".new"), path.with_name(path.name + ".old")
        make(new)
        os.rename(path, old)  # a moment with nothing there: an error for the reader, never a leak
        os.rename(new, path)
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()

    def real_dir(p: Path) -> None:
        p.mkdir()
        (p / "f").write_bytes(b"inside")

    def run() -> None:
        while not stop.is_set():
            put(lambda p: p.symlink_to(outside))
            put(real_dir if real is None else lambda p: p.write_bytes(real))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_file_swapped_for_an_outside_link_while_read_is_never_read_outside(tmp_path: Path) -> None:
    """Open and read are one descriptor: however the swap falls, the content is the node's or an error."""
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_bytes(b"OUTSIDE")
    target = root / "run/state.json"
    target.write_bytes(b"inside")
    host = HostRoot.at(root)
    stop = threading.Event()
    thread = _flipper(target, b"inside", secret, stop)
    seen: set[bytes] = set()
    try:
        for _ in range(3000):
            try:
                seen.add(host.read_bytes("/run/state.json"))
            except OSError:
                seen.add(b"<error>")
    finally:
        stop.set()
        thread.join()
    assert b"OUTSIDE" not in seen
    assert b"inside" in seen


def test_a_directory_swapped_for_an_outside_link_is_walked_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "run/d").mkdir(parents=True)
    (root / "run/d/f").write_bytes(b"inside")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(b"OUTSIDE")
    host = HostRoot.at(root)
    stop = threading.Event()
    thread = _flipper(root / "run/d", None, outside, stop)
    seen: set[bytes] = set()
    try:
        for _ in range(2000):
            try:
                seen.add(host.read_bytes("/run/d/f"))
                with host.open_dir("/run/d") as d:
                    seen.add(d.open("f").read())
            except OSError:
                seen.add(b"<error>")
    finally:
        stop.set()
        thread.join()
    assert b"OUTSIDE" not in seen
    assert b"inside" in seen


def test_listed_entries_that_are_links_are_resolved_in_the_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("node passwd")
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool/a.jsonl").symlink_to("/etc/passwd")
    (tmp_path / "spool/sub").symlink_to("/etc")
    host = HostRoot.at(tmp_path)
    with host.open_dir("/spool") as d:
        assert d.names() == ["a.jsonl", "sub"]
        assert d.open("a.jsonl").read() == b"node passwd"
        with d.open_dir("sub") as sub:
            assert sub.path == "/etc" and sub.open("passwd").read() == b"node passwd"
        for bad in ("..", "x/y", ""):
            with pytest.raises(ValueError):
                d.open(bad)


def test_a_loop_or_a_file_in_the_way_is_an_error_not_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to("/loop")
    (tmp_path / "file").write_text("x")
    host = HostRoot.at(tmp_path)
    with pytest.raises(OSError, match="symbolic links"):
        host.listdir("/loop")
    assert host.listdir("/file") == []  # not a directory: nothing there to list
    assert not host.exists("/loop") and not host.is_dir("/loop")
    assert host.is_file("/file") and not host.is_file("/")
