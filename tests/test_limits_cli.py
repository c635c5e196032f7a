"""`kata-debug limits` as users run it: a separate process, files, stdin, exit codes, --fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO, kata_debug
from tests.limits_helpers import AFTER, BEFORE, FIX_FILES, container, pod


def run_stdin(text: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "kata_debug", "limits", *args],
        input=text.encode(),
        capture_output=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def one_line_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, proc.stderr.decode()
    assert lines[0].startswith("kata-debug: error: "), lines[0]
    assert "Traceback" not in proc.stderr.decode()
    return lines[0]


def test_json_is_exactly_one_object_and_warnings_exit_1() -> None:
    proc = kata_debug("limits", "--format", "json", str(BEFORE))
    assert proc.returncode == 1, proc.stderr.decode()
    out = json.loads(proc.stdout)  # the whole stdout is one JSON document
    assert set(out) == {"workloads", "summary"}
    assert out["summary"]["warnings"] > 0 and out["summary"]["exit_code"] == 1
    by_source = {w["source"] for w in out["workloads"]}
    assert any(s.endswith("test-deploy-kata-qemu.yaml#0") for s in by_source)  # path#docindex


def test_clean_manifests_exit_0_with_a_readable_table() -> None:
    proc = kata_debug(
        "limits", str(AFTER / "tests__integration__kubernetes__runtimeclass_workloads__k8s-policy-deployment.yaml")
    )
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "Deployment/policy-redis-deployment" in out
    assert "1->2 vCPU, 2048->2848 MiB" in out
    assert "1 Kata workload(s): 0 warning(s), 0 info" in out


def test_a_narrow_terminal_folds_the_file_names_and_cuts_nothing() -> None:
    """At 60 columns rich would shrink every column to a letter and end the runtime class and
    findings with `…`; the table keeps those whole and folds only source and workload names."""
    files = sorted(str(p) for p in BEFORE.glob("tools__packaging__kata-deploy__examples__*"))
    proc = kata_debug("limits", *files, env={"COLUMNS": "60"})
    assert proc.returncode == 1, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "…" not in out
    table = [line for line in out.splitlines() if line.startswith("│")]
    cells = [[c.strip() for c in line.strip("│").split("│")] for line in table]
    assert {"kata-dragonball", "kata-qemu"} <= {c[2] for c in cells}
    assert "runtime-rs / static" in {c[3] for c in cells}
    assert all(len(c[0]) <= 20 for c in cells), "the source column folds at its floor"
    assert len({len(line) for line in table}) == 1


def test_explain_shows_the_reasoning() -> None:
    proc = run_stdin(yaml.safe_dump(pod(container(limits={"cpu": "500m", "memory": "800Mi"}))), "--explain", "-")
    out = proc.stdout.decode()
    assert "vCPUs = ceil(1 + 0.5) = 2" in out and "memory = 2048 + floor(838860800 B / MiB) = 2848 MiB" in out


def test_stdin_and_runtime_option() -> None:
    proc = run_stdin(
        yaml.safe_dump(pod(container(limits={"cpu": "500m", "memory": "800Mi"}))),
        "--format",
        "json",
        "--runtime",
        "rs",
        "-",
    )
    assert proc.returncode == 0
    vm = json.loads(proc.stdout)["workloads"][0]["vm"]
    assert (vm["runtime"], vm["mode"], vm["vcpus"], vm["memory_mib"]) == ("rs", "static", 1, 832)


def test_directories_are_walked_for_manifest_suffixes(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    (tmp_path / "a" / "b" / "p.yaml.in").write_text(yaml.safe_dump(pod(name="templ")))
    (tmp_path / "a" / "q.json").write_text(json.dumps(pod(name="json")))
    (tmp_path / "a" / "r.yml").write_text(yaml.safe_dump(pod(name="yml")))
    (tmp_path / "notes.txt").write_text("kind: Pod\n")
    (tmp_path / ".git" / "x.yaml").write_text(yaml.safe_dump(pod(name="hidden")))
    proc = kata_debug("limits", "--format", "json", str(tmp_path))
    names = [w["name"] for w in json.loads(proc.stdout)["workloads"]]
    assert sorted(names) == ["json", "templ", "yml"]


def test_unreadable_input_is_exit_2_with_one_line_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Pod\nmetadata:\n  name: [unclosed\n")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(pod(name="fine")))
    proc = kata_debug("limits", "--format", "json", str(bad), str(good))
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert str(bad) in line and "not valid YAML" in line and "line " in line
    out = json.loads(proc.stdout)
    assert [w["name"] for w in out["workloads"]] == ["fine"]
    assert out["summary"]["input_errors"][0]["source"] == str(bad)
    proc = kata_debug("limits", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2 and "no such file" in one_line_error(proc)


def test_bad_options_are_one_line_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(pod()))
    cases = [
        (["--host-cpus", "0", str(f)], "--host-cpus 0"),
        (["--fix", "-"], "--fix"),
        (["--dry-run", str(f)], "--dry-run"),
        (["-n", "apps", str(f)], "--namespace apps"),
        (["--config", str(tmp_path / "none.toml"), str(f)], "no such file"),
    ]
    for args, expect in cases:
        proc = kata_debug("limits", *args)
        assert proc.returncode == 2, args
        assert expect in one_line_error(proc), args
    (tmp_path / "c.toml").write_text("[hypervisor.qemu\n")
    proc = kata_debug("limits", "--config", str(tmp_path / "c.toml"), str(f))
    assert proc.returncode == 2 and "not valid TOML" in one_line_error(proc)


def copy_fix_files(tmp_path: Path) -> list[Path]:
    out = []
    for name in FIX_FILES:
        dst = tmp_path / name
        shutil.copy(BEFORE / name, dst)
        out.append(dst)
    return out


def test_fix_turns_upstream_before_manifests_into_after(tmp_path: Path) -> None:
    files = copy_fix_files(tmp_path)
    os.chmod(files[0], 0o640)
    proc = kata_debug("limits", "--fix", *map(str, files))
    assert proc.returncode == 0, proc.stderr.decode()  # no warnings remain
    diff = proc.stdout.decode()
    assert "-          requests:\n+          limits:" in diff
    assert f"fixed {len(FIX_FILES) + 1} finding(s) in {len(FIX_FILES)} file(s)" in proc.stderr.decode()
    for f in files:
        want = (AFTER / f.name).read_text()
        assert list(yaml.safe_load_all(f.read_text())) == list(yaml.safe_load_all(want)), f.name
        assert f.read_text() == want, f.name  # comments, order and formatting preserved byte for byte
    assert files[0].stat().st_mode & 0o777 == 0o640


def test_fix_dry_run_only_prints_the_diff(tmp_path: Path) -> None:
    files = copy_fix_files(tmp_path)
    proc = kata_debug("limits", "--fix", "--dry-run", *map(str, files))
    assert proc.returncode == 1  # the files still have their warnings
    assert "+          limits:" in proc.stdout.decode()
    assert "would fix" in proc.stderr.decode()
    for f in files:
        assert f.read_text() == (BEFORE / f.name).read_text()


def test_fix_json_reports_the_diff_and_what_was_skipped(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  runtimeClassName: kata\n"
        "  containers:\n  - name: a\n    resources:\n      requests: {cpu: 100m}\n"
        "  - name: b\n    resources:\n      requests:\n        memory: 64Mi  # keep\n"
        "      limits:\n        cpu: 1\n"
    )
    proc = kata_debug("limits", "--fix", "--format", "json", str(f))
    out = json.loads(proc.stdout)
    fix = out["fix"]["files"][0]
    assert [x["container"] for x in fix["applied"]] == ["b"]
    assert fix["skipped"][0]["container"] == "a" and "flow style" in fix["skipped"][0]["reason"]
    assert "+        memory: 64Mi  # keep" in fix["diff"]
    assert proc.returncode == 1  # container a still requests without a limit
    assert yaml.safe_load(f.read_text())["spec"]["containers"][1]["resources"] == {
        "limits": {"cpu": 1, "memory": "64Mi"}
    }


def test_fix_limitrange_default_request_becomes_default(tmp_path: Path) -> None:
    f = tmp_path / "lr.yaml"
    f.write_text(
        "# team defaults\napiVersion: v1\nkind: LimitRange\nmetadata:\n  name: lr\nspec:\n  limits:\n"
        "  - defaultRequest:  # was requests only\n      cpu: 500m\n    type: Container\n"
    )
    proc = kata_debug("limits", "--fix", str(f))
    assert proc.returncode == 0, proc.stderr.decode()
    assert f.read_text() == (
        "# team defaults\napiVersion: v1\nkind: LimitRange\nmetadata:\n  name: lr\nspec:\n"
        "  limits:\n  - default:  # was requests only\n      cpu: 500m\n    type: Container\n"
    )


def test_only_missing_inputs_is_one_error_line_and_no_report(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "kata_debug", "limits", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr.strip() == f"kata-debug: error: {tmp_path / 'missing.yaml'}: no such file or directory"


def test_a_directory_without_manifests_is_an_input_error_not_a_clean_report(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing to see\n")
    res = subprocess.run(
        [sys.executable, "-m", "kata_debug", "limits", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().startswith(f"kata-debug: error: {tmp_path}: no manifests in this directory")
