"""An option the user typed is "given", even when typed with its default value.

Options that only mean something together with another one (`--parallel` with `--cluster`,
`--upload-retries` with `--upload`) are refused on their own. The check asks click where
the value came from, so `--parallel 8` (the default) is refused like `--parallel 3`: the
user asked for something the command would silently not do.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import kata_debug


def one_line_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize(
    ("option", "default"),
    [("--parallel", "8"), ("--node-timeout", "600"), ("--parallel", "3")],
)
def test_cluster_options_without_cluster_are_refused_even_at_their_default(
    tmp_path: Path, option: str, default: str
) -> None:
    bundle = tmp_path / "b.tar.gz"
    proc = kata_debug("collect", "-o", str(bundle), option, default)
    assert proc.returncode == 2
    assert one_line_error(proc) == f"kata-debug: error: {option}: only valid with --cluster"
    assert not bundle.exists()


@pytest.mark.parametrize(
    "args",
    [["--upload-retries", "5"], ["--upload-method", "PUT"], ["--upload-timeout", "60"], ["--upload-retries", "9"]],
)
def test_upload_options_without_upload_are_refused_even_at_their_default(tmp_path: Path, args: list[str]) -> None:
    bundle = tmp_path / "b.tar.gz"
    proc = kata_debug("collect", "-o", str(bundle), *args)
    assert proc.returncode == 2
    assert "only valid with --upload" in one_line_error(proc)
    assert not bundle.exists()


def test_live_cluster_options_with_manifest_paths_are_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "p.yaml"
    manifest.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: a}]}\n")
    for args, message in (
        (["-n", "default"], "--namespace default: only for a live cluster"),
        (["--context", ""], "--context : only for a live cluster"),
        (["-A"], "--all-namespaces: only for a live cluster"),
    ):
        proc = kata_debug("limits", *args, str(manifest))
        assert proc.returncode == 2, args
        assert message in one_line_error(proc), args
