"""The command line's conventions, as a new user meets them (README "Command-line conventions").

Every command that prints a report takes `--format text|json`; `-o/--output` is always a
file; old spellings still work with a note; help shows what an option takes, never a Python
type; and the end of `collect` says what the node lacks and what to do next. The CLI runs
as a separate process, as a user would run it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kata_debug.cli.options import parse_since
from kata_debug.errors import UsageError
from tests.conftest import kata_debug
from tests.fake_kube import FakeKube
from tests.hostroots import kata_node

COMMANDS = [
    [],
    ["collect"],
    ["collectors"],
    ["limits"],
    ["upload"],
    ["forward"],
    ["node-agent"],
    ["trace"],
    ["trace", "decode"],
    ["diagnose"],
    ["report"],
]


def one_line_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "kata-debug")
def test_help_shows_what_options_take_not_python_types(command: list[str]) -> None:
    proc = kata_debug(*command, "--help", env={"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.decode()
    for python_type in ("<bool>", "<str>", "<int>", "<float>", "<path>", "<list["):
        assert python_type not in text, f"{python_type} in `{' '.join(command)} --help`"
    for click_type in ("TEXT", "INTEGER", "FLOAT", "BOOLEAN"):
        assert not re.search(rf"\b{click_type}\b", text), f"{click_type} in `{' '.join(command)} --help`"


def _option_line(help_text: str, option: str) -> str:
    return next(line for line in help_text.splitlines() if re.search(rf"{option}\b(?!-)", line))


def test_help_metavars_say_what_goes_there() -> None:
    root = kata_debug("--help", env={"COLUMNS": "200"}).stdout.decode()
    version = _option_line(root, "--version").split("--version", 1)[1].split("Print")[0]
    assert version.strip() == ""  # a flag: no value
    assert "--install-completion" in root  # shell completion (typer's add_completion)
    collect = kata_debug("collect", "--help", env={"COLUMNS": "200"}).stdout.decode()
    assert "NAME" in _option_line(collect, "--collector")
    assert "[text|json]" in _option_line(collect, "--format")
    assert "--output-format" not in collect  # the old spelling is hidden
    node_agent = kata_debug("node-agent", "--help", env={"COLUMNS": "200"}).stdout.decode()
    assert "[debug|info|warning|error]" in _option_line(node_agent, "--log-level")


def test_help_at_80_columns_names_arguments_as_written_and_wraps_prose() -> None:
    usage = {
        ("report",): "Usage: kata-debug report [OPTIONS] BUNDLE",
        ("upload",): "Usage: kata-debug upload [OPTIONS] BUNDLE URL",
        ("diagnose",): "Usage: kata-debug diagnose [OPTIONS] [BUNDLE]",
        ("limits",): "Usage: kata-debug limits [OPTIONS] [PATH ...|-]",
        ("trace", "decode"): "Usage: kata-debug trace decode [OPTIONS] INPUT",
    }
    for command, line in usage.items():
        text = kata_debug(*command, "--help", env={"COLUMNS": "80"}).stdout.decode()
        assert line in text, text
    # A paragraph of the description is wrapped to the terminal, not cut at the docstring's
    # own line ends (which left "server" or "until" alone on a line).
    for command in (["limits"], ["node-agent"]):
        text = kata_debug(*command, "--help", env={"COLUMNS": "80"}).stdout.decode()
        prose = [line.strip() for line in text.split("╭", 1)[0].splitlines()[3:] if line.strip()]
        assert len(prose) > 2, text
        assert not [line for line in prose if " " not in line], text


@pytest.mark.parametrize(
    ("command", "option", "metavar"),
    [
        (["collect"], "--pod-timeout", "SECONDS"),
        (["diagnose"], "--host-root", "DIR"),
        (["diagnose"], "--since", "DURATION|TIME"),
        (["diagnose"], "--output", "FILE"),
        (["diagnose"], "--timeout", "SECONDS"),
        (["report"], "--output", "FILE"),
        (["report"], "--format", "[text|json]"),
        (["limits"], "--kubeconfig", "FILE"),
        (["limits"], "--config", "FILE"),
        (["limits"], "--host-cpus", "N"),
        (["forward"], "--host-root", "DIR"),
        (["forward"], "--stats-interval", "DURATION"),
        (["node-agent"], "--shutdown-timeout", "DURATION"),
        (["node-agent"], "--idle-timeout", "DURATION"),
        (["node-agent"], "--buffer-budget", "SIZE"),
        (["forward"], "--max-connections", "N"),
    ],
)
def test_metavars_say_what_the_option_takes(command: list[str], option: str, metavar: str) -> None:
    text = kata_debug(*command, "--help", env={"COLUMNS": "200"}).stdout.decode()
    row = next(line.strip("│ ").split() for line in text.splitlines() if line.strip("│ ").startswith(f"{option} "))
    assert (row[2] if row[1].startswith("-") else row[1]) == metavar, row  # after a short option, if any


def test_float_defaults_print_as_people_write_them() -> None:
    text = kata_debug("collect", "--help", env={"COLUMNS": "200"}).stdout.decode()
    assert "[default: 60]" in _option_line(text, "--timeout")
    assert ".0]" not in text


def test_report_takes_format_and_its_old_output_format_with_a_note(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    bundle = tmp_path / "b.tar.gz"
    assert kata_debug("collect", "--host-root", str(root), "-o", str(bundle), "-c", "host").returncode in (0, 3)
    new = kata_debug("report", str(bundle), "-o", str(tmp_path / "a.html"), "--format", "json")
    assert new.returncode == 0, new.stderr
    assert json.loads(new.stdout)["output"] == str(tmp_path / "a.html")
    old = kata_debug("report", str(bundle), "-o", str(tmp_path / "b.html"), "--output-format", "json")
    assert old.returncode == 0, old.stderr
    assert json.loads(old.stdout)["output"] == str(tmp_path / "b.html")
    assert old.stderr.decode() == "kata-debug: note: --output-format is deprecated; use --format\n"


@pytest.mark.parametrize("command", [[], ["trace"]], ids=["kata-debug", "trace"])
def test_no_arguments_print_help_once(command: list[str]) -> None:
    proc = kata_debug(*command)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().count("Usage:") == 1
    assert proc.stderr == b""


def test_every_report_command_takes_format_json(tmp_path: Path) -> None:
    collectors = kata_debug("collectors", "--format", "json")
    assert collectors.returncode == 0, collectors.stderr
    listed = json.loads(collectors.stdout)["collectors"]
    assert {"host", "kata-config", "agent-traces"} <= {c["name"] for c in listed}
    assert all(c["reads"] for c in listed)

    manifest = tmp_path / "pod.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  runtimeClassName: kata\n"
        "  containers: [{name: c, image: x, resources: {limits: {cpu: '1', memory: 1Gi}}}]\n"
    )
    limits = kata_debug("limits", "--format", "json", str(manifest))
    assert json.loads(limits.stdout)["workloads"], limits.stderr
    text = kata_debug("limits", "--format", "text", str(manifest))
    assert "Kata VM sizes" in text.stdout.decode()
    old = kata_debug("limits", "--format", "table", str(manifest))
    assert old.stdout == text.stdout  # the old name still works ...
    assert "--format table is deprecated; use --format text" in old.stderr.decode()  # ... and says so


def test_old_output_format_still_works_with_a_note_and_conflicts_are_refused(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    out = tmp_path / "b.tar.gz"
    proc = kata_debug("collect", "--host-root", str(root), "-o", str(out), "-c", "host", "--output-format", "json")
    assert proc.returncode in (0, 3), proc.stderr
    assert json.loads(proc.stdout)["bundle"] == str(out)
    assert "kata-debug: note: --output-format is deprecated; use --format" in proc.stderr.decode()

    both = kata_debug("collect", "--output-format", "json", "--format", "text", "-o", str(tmp_path / "c.tar.gz"))
    assert both.returncode == 2
    assert one_line_error(both) == "kata-debug: error: --output-format: the old name of --format; give only --format"
    assert not (tmp_path / "c.tar.gz").exists()


# ---- --since ------------------------------------------------------------------------------


def test_since_takes_a_duration_with_a_unit_or_an_rfc3339_time() -> None:
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    assert parse_since("90m", now=now) == timedelta(minutes=90)
    assert parse_since("1h30m", now=now) == timedelta(minutes=90)
    assert parse_since("2026-12-05T10:00:00Z", now=now) == timedelta(hours=2)
    assert parse_since("2026-12-05T11:00:00+01:00", now=now) == timedelta(hours=2)
    for bad, why in (
        ("90", "a bare number has no unit (use e.g. 90s, 90m, 90h)"),
        ("2026-12-05T10:00:00", "the time needs a UTC offset"),
        ("2026-12-06T10:00:00Z", "is in the future"),
        ("2026-13-05T10:00:00Z", "not an RFC 3339 time"),
        ("yesterday", "not a duration or time"),
    ):
        with pytest.raises(UsageError, match=re.escape(why)):
            parse_since(bad, now=now)


def test_a_bare_number_for_since_is_one_usage_line(tmp_path: Path) -> None:
    proc = kata_debug("collect", "--since", "90", cwd=tmp_path)
    assert proc.returncode == 2
    assert one_line_error(proc) == (
        "kata-debug: error: --since '90': a bare number has no unit (use e.g. 90s, 90m, 90h)"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("option", "value"), [("--timeout", "-1"), ("--deadline", "0"), ("--timeout", "nan")])
def test_a_bad_number_of_seconds_is_quoted_as_typed(tmp_path: Path, option: str, value: str) -> None:
    proc = kata_debug("collect", option, value, cwd=tmp_path)
    assert proc.returncode == 2
    assert one_line_error(proc) == f"kata-debug: error: {option} {value}: must be a positive number of seconds"
    assert list(tmp_path.iterdir()) == []


# ---- compression --------------------------------------------------------------------------


def test_compression_follows_the_output_name(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    for name, magic in (("b.tar.zst", b"\x28\xb5\x2f\xfd"), ("b.tar.gz", b"\x1f\x8b"), ("b.tar", None)):
        out = tmp_path / name
        proc = kata_debug("collect", "--host-root", str(root), "-o", str(out), "-c", "host")
        assert proc.returncode in (0, 3), proc.stderr
        head = out.read_bytes()[:4]
        if magic is None:
            assert tarfile.is_tarfile(out) and head not in (b"\x28\xb5\x2f\xfd",) and head[:2] != b"\x1f\x8b"
        else:
            assert head.startswith(magic), name


def test_a_compression_that_contradicts_the_output_name_is_refused(tmp_path: Path) -> None:
    proc = kata_debug("collect", "-o", str(tmp_path / "b.tar.zst"), "--compression", "gzip")
    assert proc.returncode == 2
    assert one_line_error(proc) == (
        f"kata-debug: error: --compression gzip: conflicts with --output {tmp_path / 'b.tar.zst'} (a zstd name)"
    )
    assert list(tmp_path.iterdir()) == []


# ---- the end of collect ---------------------------------------------------------------------


def ready_node(root: Path) -> Path:
    """A node with everything Kata needs: config, containerd handler, devices, vmx, modules, cgroup v2."""
    kata_node(root)
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_text(
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-qemu]\n'
        'runtime_type = "io.containerd.kata.v2"\n'
    )
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc/cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu vmx sse\n")
    (root / "proc/modules").write_text("vhost_vsock 24576 0 - Live 0x0\nkvm_intel 1 0 - Live 0x0\n")
    (root / "dev").mkdir(exist_ok=True)
    for dev in ("kvm", "vhost-vsock"):
        (root / "dev" / dev).write_text("")
    (root / "sys/fs/cgroup").mkdir(parents=True)
    (root / "sys/fs/cgroup/cgroup.controllers").write_text("cpu memory\n")
    return root


def test_collect_on_a_node_without_kata_says_what_is_missing(tmp_path: Path) -> None:
    """The end of collect states what the node lacks, through diagnose's findings (one mechanism),
    and `diagnose BUNDLE` gives the same answer from the bundle alone."""
    root = tmp_path / "bare"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("plain-node\n")
    bundle = tmp_path / "b.tar.gz"
    proc = kata_debug("collect", "--host-root", str(root), "-o", str(bundle), "-c", "host", env={"COLUMNS": "120"})
    assert proc.returncode in (0, 3), proc.stderr
    out = proc.stdout.decode()
    assert "  warning kata-not-installed: Kata Containers is not installed on this node" in out
    assert "cannot run Kata sandboxes as it is" not in out  # the old separate list is gone
    flat = " ".join(line.strip() for line in out.splitlines())
    for gap in (
        "/dev/kvm not present",
        "/dev/vhost-vsock not present",
        "no Kata runtime handler in the containerd config",
    ):
        assert gap in flat.split("this node also lacks:")[1], gap

    doc = json.loads(
        kata_debug(
            "collect", "--host-root", str(root), "-o", str(tmp_path / "j.tar.gz"), "-c", "host", "--format", "json"
        ).stdout
    )
    assert "node_readiness" not in doc
    (found,) = doc["findings"]
    assert found["id"] == "kata-not-installed" and found["severity"] == "warning"
    texts = [e["text"] for e in found["evidence"]]
    assert texts[0] == (
        "no Kata configuration (configuration*.toml) in /etc/kata-containers, "
        "/usr/share/defaults/kata-containers or /opt/kata/share/defaults/kata-containers"
    )
    assert "/dev/kvm not present" in texts
    assert "not broken" in found["explanation"]

    diagnosed = kata_debug("diagnose", str(bundle), "--format", "json")
    assert diagnosed.returncode == 0, diagnosed.stderr  # a warning: a node without Kata is not broken
    again = json.loads(diagnosed.stdout)["findings"]
    assert [(f["id"], f["severity"], f["title"]) for f in again] == [(found["id"], "warning", found["title"])]


def test_collect_on_a_ready_node_lists_nothing_missing(tmp_path: Path) -> None:
    root = ready_node(tmp_path / "host")
    proc = kata_debug("collect", "--host-root", str(root), "-o", str(tmp_path / "b.tar.gz"), "-c", "host")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert "findings: none" in out, out
    assert "kata-not-installed" not in out and "note:" not in out


@pytest.mark.parametrize("width", [40, 200])
def test_notes_and_commands_are_never_cut_whatever_the_width(tmp_path: Path, width: int) -> None:
    root = ready_node(tmp_path / "host")
    out = tmp_path / "b.tar.gz"
    proc = kata_debug(
        "collect", "--host-root", str(root), "-o", str(out), "-c", "agent-traces", env={"COLUMNS": str(width)}
    )
    text = proc.stdout.decode()
    assert "…" not in text
    lines = text.splitlines()
    note = next(line for line in lines if line.startswith("agent-traces: "))
    assert note.endswith("or the node agent to record agent traces)")  # whole, on one logical line
    assert "`kata-debug forward --export file:///var/lib/kata-debug/traces/spans.jsonl`" in note
    nxt = next(line for line in lines if line.startswith("next: "))
    assert f"kata-debug upload {out} URL" in nxt


def test_the_last_lines_give_size_sha256_and_the_next_step(tmp_path: Path) -> None:
    import hashlib

    root = ready_node(tmp_path / "host")
    out = tmp_path / "b.tar.gz"
    proc = kata_debug("collect", "--host-root", str(root), "-o", str(out), "-c", "host", env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.decode().strip().splitlines()[-2:]
    data = out.read_bytes()
    size = f"{len(data) / 1024:.1f} KiB" if len(data) >= 1024 else f"{len(data)} B"
    assert last[0] == f"bundle: {out} ({size}, sha256 {hashlib.sha256(data).hexdigest()})"
    assert last[1].startswith(f"next: send it to your Kata vendor or maintainer: kata-debug upload {out} URL")
    assert "diagnose" not in proc.stdout.decode()  # not until the command exists


def test_output_dash_prints_the_same_size_and_sha256_line_on_stderr(tmp_path: Path) -> None:
    """Streamed to stdout, the bundle cannot be read back: its size and sha256 are computed as it is written."""
    import hashlib

    root = ready_node(tmp_path / "host")
    proc = kata_debug("collect", "--host-root", str(root), "-o", "-", "-c", "host", env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    data = proc.stdout
    size = f"{len(data) / 1024:.1f} KiB" if len(data) >= 1024 else f"{len(data)} B"
    last = proc.stderr.decode().strip().splitlines()[-1]
    assert last == f"bundle: - ({size}, sha256 {hashlib.sha256(data).hexdigest()})"
    doc = kata_debug("collect", "--host-root", str(root), "-o", "-", "-c", "host", "--format", "json")
    summary = json.loads(doc.stderr)
    assert summary["bundle_bytes"] == len(doc.stdout)
    assert summary["bundle_sha256"] == hashlib.sha256(doc.stdout).hexdigest()


def test_truncation_by_max_log_size_shows_in_the_table(tmp_path: Path) -> None:
    root = ready_node(tmp_path / "host")
    log = root / "var/log/containerd.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(f'time="2099-01-01T00:00:{i % 60:02d}Z" level=info msg="line {i}"\n' for i in range(4000)))
    proc = kata_debug(
        "collect",
        "--host-root",
        str(root),
        "-o",
        str(tmp_path / "b.tar.gz"),
        "-c",
        "shim-logs",
        "--max-log-size",
        "16K",
        env={"COLUMNS": "160"},
    )
    text = proc.stdout.decode()
    assert "cut by --max-log-size" in text, text
    row = next(line for line in text.splitlines() if "shim-logs" in line)
    assert re.search(r"\d+\.\d KiB \(\d+ log\(s\)\)", row), row


def test_non_root_runs_say_once_what_root_would_add() -> None:
    """The note comes from the `collected-without-root` finding, printed once under the findings."""
    import io

    from rich.console import Console

    from kata_debug.analyze.base import Evidence, Finding
    from kata_debug.analyze.diagnose import Diagnosis
    from kata_debug.analyze.install import ROOT_WOULD_ADD
    from kata_debug.cli.app import _print_summary
    from kata_debug.collect.runner import CollectResult

    note = Finding(
        "collected-without-root",
        "info",
        "Collected without root",
        "why",
        ROOT_WOULD_ADD,
        [Evidence("host/facts.json", None, "collected by user id 1000 with --host-root /")],
    )
    diagnosis = Diagnosis("b.tar.gz", False, ["n1"], [note], [])
    result = CollectResult("b.tar.gz", "n1", collectors=[], redactions={}, interrupted=None, diagnosis=diagnosis)
    buf = io.StringIO()
    _print_summary(result, Console(file=buf, width=60), None, uploaded=False)
    text = buf.getvalue()
    assert text.count("note: run as root for a complete bundle") == 1
    assert "findings: none" in text  # an info finding is not a problem to fix


# ---- upload -------------------------------------------------------------------------------


def test_upload_of_a_directory_says_it_needs_a_file(tmp_path: Path) -> None:
    proc = kata_debug("upload", str(tmp_path), "http://127.0.0.1:9/x")
    assert proc.returncode == 2
    assert one_line_error(proc) == (
        f"kata-debug: error: BUNDLE {tmp_path}: is a directory; upload needs one file (a bundle from `kata-debug collect`)"
    )


@pytest.mark.parametrize(
    ("args", "env", "conflict"),
    [
        (["-H", "Authorization: Basic eA=="], {}, "--header Authorization"),
        ([], {"KATA_DEBUG_UPLOAD_TOKEN": "tok"}, "$KATA_DEBUG_UPLOAD_TOKEN is set"),
    ],
)
def test_credentials_in_the_url_and_another_authorization_is_a_usage_line(
    tmp_path: Path, args: list[str], env: dict[str, str], conflict: str
) -> None:
    f = tmp_path / "b.tar.gz"
    f.write_bytes(b"x")
    proc = kata_debug("upload", str(f), "http://user:secret@127.0.0.1:9/x", *args, env=env)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert line == f"kata-debug: error: URL http://127.0.0.1:9/x: has credentials in the URL and {conflict}; give one"
    assert "secret" not in line


# ---- fits the ecosystem -------------------------------------------------------------------


async def test_kubectl_runs_kata_debug_as_a_plugin(tmp_path: Path) -> None:
    scripts = Path(sys.executable).parent
    assert (scripts / "kubectl-kata_debug").is_file(), "the package installs the kubectl-kata_debug script"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "apps", "uid": "u1"},
        "spec": {
            "runtimeClassName": "kata",
            "containers": [{"name": "c", "image": "x", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}],
        },
        "status": {"phase": "Running"},
    }
    rc = {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "kata"}, "handler": "kata"}
    async with FakeKube().add(pod, rc) as fk:
        kc = fk.kubeconfig(tmp_path / "kubeconfig", namespace="apps")
        proc = await asyncio.create_subprocess_exec(
            "kubectl",
            "kata-debug",
            "limits",
            "-A",
            "--format",
            "json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ['PATH']}", "KUBECONFIG": str(kc)},
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    names = [w["name"] for w in json.loads(out)["workloads"]]
    assert "web" in names


# ---- trace decode / forward -----------------------------------------------------------------


def test_trace_decode_format_is_the_deprecated_name_of_wire_format() -> None:
    from tests.test_trace_cli import FIXTURES

    capture = str(FIXTURES / "json/stream.json.bin")
    new = kata_debug("trace", "decode", capture, "--wire-format", "json")
    old = kata_debug("trace", "decode", capture, "--format", "json")
    assert new.returncode == old.returncode == 0
    assert old.stdout == new.stdout
    assert old.stderr.decode().splitlines()[0] == "kata-debug: note: --format is deprecated; use --wire-format"
    both = kata_debug("trace", "decode", capture, "--format", "json", "--wire-format", "json")
    assert both.returncode == 2
    assert one_line_error(both) == "kata-debug: error: --format: the old name of --wire-format; give only --wire-format"


def test_forward_refuses_a_file_export_into_a_missing_directory(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/no/such/dir/spans.jsonl"
    proc = kata_debug("forward", "--listen", "tcp://127.0.0.1:0", "--export", uri)
    assert proc.returncode == 2
    assert one_line_error(proc) == f"kata-debug: error: --export {uri}: directory {tmp_path}/no/such/dir does not exist"


def _forward_briefly(*args: str, env: dict[str, str]) -> str:
    """Start `forward`, stop it with SIGTERM once it listens, return its log."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "kata_debug", "forward", *args],
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + 60
    while b"listening on" not in seen and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, (seen + rest).decode()
    return (seen + rest).decode()


def test_forward_without_an_export_or_endpoint_says_where_spans_go() -> None:
    env = {v: "" for v in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")}
    log = _forward_briefly("--listen", "tcp://127.0.0.1:0", env=env)
    assert (
        "no OTLP endpoint configured (--export or OTEL_EXPORTER_OTLP_ENDPOINT): "
        "sending to the OTLP default, http://localhost:4318"
    ) in log


def test_forward_dash_l_is_the_deprecated_name_of_listen(tmp_path: Path) -> None:
    log = _forward_briefly("-l", "tcp://127.0.0.1:0", "--export", "stdout", env={})
    assert "kata-debug: note: -l is deprecated; use --listen" in log
    assert "listening on tcp://127.0.0.1:" in log
