"""Every host path resolves under the host root; symlinks never lead outside it."""

from pathlib import Path

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
