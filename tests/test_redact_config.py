"""`--redact-config FILE`: the operator's own rules, applied on top of the defaults everywhere a
bundle gets text, each counted under `user:<name>`; a bad file is one line and exit 2."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from kata_debug.agent.capture import CaptureConfig
from kata_debug.cli import redact_config
from kata_debug.cluster.run import run_cluster_collection
from kata_debug.errors import UsageError
from kata_debug.forwarder.file_sink import FileSink
from kata_debug.forwarder.spans import Origin
from kata_debug.logs.scan_client import ScannerProcess
from kata_debug.redact.redactor import Redactor
from kata_debug.redact.user_rules import RULES_STDIN, UserRules, load_user_rules, parse_rules
from tests.agent_wire import sample_span
from tests.bundles import read_bundle
from tests.conftest import kata_debug
from tests.fake_kube_exec import ClusterFake
from tests.hostroots import add_task, kata_node, oci_spec
from tests.kata_cluster import AGENT_NS, build
from tests.redaction_corpus import CASES, LOOKALIKES, USER_CASES, USER_LOOKALIKES, USER_RULES, Case
from tests.test_redaction_corpus import run_place

RULES = """\
version: 1
rules:
  - name: ticket
    description: our ticket numbers
    regex: 'TCK-[0-9]{6}'
  - name: tenant
    regex: 'tenant=([a-z]+-[0-9]+)'
  - name: corp-session
    keys: [X-Corp-Session, corp.session, corp_session_id]
  - name: lab-password
    literals: ['Winter2026!lab']
"""
# What each rule must remove (and nothing of it may be left anywhere in a bundle).
SECRETS = [b"TCK-482913", b"acme-77", b"sessA1b2c3", b"Winter2026!lab", b"spanSess99"]
# Harmless text next to them that must survive as it is.
HARMLESS = [b"TCK-12 is too short", b"tenant=ACME", b"corp-session renewed", b"lab password rotated"]


def rules_file(tmp: Path, text: str = RULES, name: str = "rules.yaml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def log_lines(sid: str) -> list[str]:
    return [
        f'level=error msg="ticket TCK-482913 opened" sandbox={sid}',
        f'level=info msg="request tenant=acme-77 ok" sandbox={sid}',
        f"level=info msg=proxy X-Corp-Session: sessA1b2c3 sandbox={sid}",
        f'level=warn msg="login with Winter2026!lab failed" sandbox={sid}',
        f'level=info msg="TCK-12 is too short; tenant=ACME; corp-session renewed; lab password rotated" sandbox={sid}',
    ]


def user_node(root: Path) -> Path:
    """The standard Kata node plus a container whose spec, log and spans carry the rules' secrets."""
    kata_node(root)
    add_task(
        root,
        "k8s.io",
        "ctrUSER000001",
        oci_spec(
            ctype="container",
            sandbox_id="sb0123456789",
            extra_annotations={"example.com/ticket": "TCK-482913"},
        )
        | {
            "process": {
                "args": [
                    "/app",
                    "--corp_session_id",
                    "sessA1b2c3",
                    "--db=Winter2026!lab",
                    "--tenant",
                    "tenant=acme-77",
                ],
                "env": ["PATH=/usr/bin"],
                "cwd": "/",
            }
        },
    )
    log = root / "var/lib/rancher/k3s/agent/containerd/containerd.log"
    log.parent.mkdir(parents=True)
    log.write_text("\n".join(log_lines("sb0123456789")) + "\n")
    origin = Origin.make(
        "sb0123456789", "test", (("service.name", "kata-agent"),), (("kata.sandbox.id", "sb0123456789"),)
    )
    sink = FileSink(root / "var/lib/kata-debug/traces/spans.jsonl", max_bytes=1 << 20, backups=1)
    span = sample_span(0)
    span.attributes += [("corp.session", "spanSess99"), ("db.statement", "login Winter2026!lab")]
    assert sink.export([(span, origin)])
    sink.shutdown()
    return root


def everything(bundle: Any) -> bytes:
    return b"".join(bundle.members.values())


def test_the_rules_remove_a_regex_a_key_and_a_literal_from_specs_log_files_and_spans_counted_per_rule(
    tmp_path: Path,
) -> None:
    root = user_node(tmp_path / "host")
    out = tmp_path / "b.tar.gz"
    res = kata_debug(
        "collect",
        "--host-root",
        str(root),
        "--output",
        str(out),
        "--since",
        "36500d",
        "--redact-config",
        str(rules_file(tmp_path)),
        *("-c", "oci-specs", "-c", "shim-logs", "-c", "agent-traces"),
    )
    assert res.returncode == 0, res.stderr
    bundle = read_bundle(out)
    raw = everything(bundle)
    for secret in SECRETS:
        assert secret not in raw, secret
    spec = bundle.json("oci-specs/containerd/k8s.io/ctrUSER000001/config.json")
    assert spec["process"]["args"] == ["/app", "--corp_session_id", "***", "--db=***", "--tenant", "tenant=***"]
    assert spec["annotations"]["example.com/ticket"] == "***"
    log = bundle.members["shim-logs/files/var/lib/rancher/k3s/agent/containerd/containerd.log"]
    assert b'msg="ticket *** opened"' in log and b"tenant=*** ok" in log and b"X-Corp-Session: ***" in log
    assert b"login with *** failed" in log
    for harmless in HARMLESS:
        assert harmless in log, harmless
    spans = bundle.members["agent-traces/spans.jsonl"]
    assert b'{"key":"corp.session","value":{"stringValue":"***"}}' in spans
    assert b'"stringValue":"login ***"' in spans
    counts = bundle.manifest["redactions"]
    assert counts["user:ticket"] == 2 and counts["user:tenant"] == 2
    assert counts["user:corp-session"] == 3 and counts["user:lab-password"] == 3
    assert counts["oci-env"] >= 1, "the built-in rules still run"


def test_every_rule_is_listed_in_the_manifest_even_when_it_matched_nothing(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    out = tmp_path / "b.tar.gz"
    res = kata_debug(
        "collect",
        "--host-root",
        str(root),
        "-o",
        str(out),
        "-c",
        "kata-config",
        "--redact-config",
        str(rules_file(tmp_path)),
    )
    assert res.returncode == 0, res.stderr
    counts = read_bundle(out).manifest["redactions"]
    assert {k: v for k, v in counts.items() if k.startswith("user:")} == {
        "user:corp-session": 0,
        "user:lab-password": 0,
        "user:tenant": 0,
        "user:ticket": 0,
    }


@pytest.mark.journald
def test_the_rules_apply_to_shim_logs_read_from_the_journal(journald: None, tmp_path: Path) -> None:
    sid = uuid.uuid4().hex
    subprocess.run(
        ["systemd-cat", "-t", "kata"], input="\n".join(log_lines(sid)).encode() + b"\n", check=True, timeout=10
    )
    out = tmp_path / "b.tar.gz"
    path = str(rules_file(tmp_path))
    for _ in range(20):  # journald indexes asynchronously
        res = kata_debug("collect", "-o", str(out), "-c", "shim-logs", "--since", "10m", "--redact-config", path)
        assert res.returncode == 0, res.stderr
        bundle = read_bundle(out)
        if sid in bundle.json("shim-logs/sandboxes.json")["sandboxes"]:
            break
    journal = bundle.members["shim-logs/journal/journal.log"]
    mine = b"\n".join(line for line in journal.split(b"\n") if sid.encode() in line)
    assert len(mine.split(b"\n")) == 5
    for secret in SECRETS[:4]:
        assert secret not in journal, secret
    for harmless in HARMLESS:
        assert harmless in mine, harmless
    counts = bundle.manifest["redactions"]
    assert all(counts[f"user:{r}"] >= 1 for r in ("ticket", "tenant", "corp-session", "lab-password"))


async def test_the_log_scanner_process_applies_the_rules_it_is_passed(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text("\n".join(log_lines("sb-a")) + "\n")
    rules = load_user_rules(rules_file(tmp_path))
    scanner = await ScannerProcess.start()
    assert scanner is not None
    try:
        with log.open("rb") as fh:
            await scanner.send([(fh, 1 << 30, "a")], known=[], redact=True, rules=rules)
        result = await scanner.next_file()
        await scanner.finish()
        assert result.output is not None
        data = Path(result.output).read_bytes()
    finally:
        await scanner.close()
    assert data.count(b"***") == 4 and all(s not in data for s in SECRETS)
    assert all(h in data for h in HARMLESS)
    assert result.redactions == {
        "user:ticket": 1,
        "user:tenant": 1,
        "user:corp-session": 1,
        "user:lab-password": 1,
    }


def test_structured_json_honours_user_key_names_kubernetes_objects_and_persist_state() -> None:
    r = Redactor(rules=load_rules_text(RULES))
    pod = {
        "metadata": {"annotations": {"corp.session": "sessA1b2c3", "note": "ticket TCK-482913"}},
        "spec": {"tolerations": [{"key": "corp_session_id", "operator": "Exists"}]},
        "status": {"corp_session_id": "sessA1b2c3", "message": "Winter2026!lab"},
    }
    out = r.json_value(pod)
    assert out["metadata"]["annotations"] == {"corp.session": "***", "note": "ticket ***"}
    assert out["spec"]["tolerations"] == [{"key": "corp_session_id", "operator": "Exists"}], "a key name survives"
    assert out["status"] == {"corp_session_id": "***", "message": "***"}
    persist = {"Cmd": {"Args": ["sh", "-c", "curl --corp_session_id sessA1b2c3"], "Envs": [{"Var": "X", "Value": "y"}]}}
    assert "sessA1b2c3" not in json.dumps(r.json_value(persist))
    assert r.counts["user:corp-session"] == 3 and r.counts["user:ticket"] == 1 and r.counts["user:lab-password"] == 1


def test_a_disabled_redactor_ignores_the_rules() -> None:
    r = Redactor(enabled=False, rules=load_rules_text(RULES))
    assert r.text("TCK-482913") == "TCK-482913" and r.counts == {}


def load_rules_text(text: str) -> UserRules:
    import yaml

    return parse_rules(yaml.safe_load(text), "test")


def test_a_user_regex_runs_in_linear_time_on_a_long_hostile_line() -> None:
    r = Redactor(rules=load_rules_text("rules:\n  - name: x\n    regex: 'a[ab]*c'\n"))
    line = "a" + "b" * 2_000_000
    assert r.text(line) == line


BAD = [
    ("rules: [", "not valid YAML at line"),
    ("- just a list", "expected a mapping with a `rules` list"),
    ("rules: []\n", "`rules` must be a non-empty list"),
    ("rulez: []\n", "unknown key 'rulez'"),
    ("version: 2\nrules: [{name: a, literals: [abcdef]}]\n", "version 2 is not supported"),
    ("rules: [{name: Bad Name, literals: [abcdef]}]\n", "rule 1: `name` must be"),
    ("rules: [{name: a, literals: [abcdef], color: red}]\n", "rule 'a': unknown key 'color'"),
    ("rules: [{name: a}]\n", "rule 'a': give exactly one of regex, keys, literals (got none)"),
    ("rules: [{name: a, regex: x+, literals: [abcdef]}]\n", "give exactly one of"),
    ("rules: [{name: a, literals: ['']}]\n", "rule 'a': literal '' is shorter than 4 characters"),
    ("rules: [{name: a, literals: []}]\n", "`literals` must be a non-empty list of strings"),
    ("rules: [{name: a, keys: ['has space']}]\n", "is not a key name"),
    ("rules: [{name: a, regex: '(unclosed'}]\n", "rule 'a': bad regex: missing )"),
    ("rules: [{name: a, regex: '(?<=x)y'}]\n", "rule 'a': RE2 (the redactor's engine) refuses the regex"),
    ("rules: [{name: a, regex: '(x+)+y'}]\n", "rule 'a': catastrophic regex"),
    ("rules: [{name: a, regex: 'x*'}]\n", "rule 'a': the regex can match the empty string"),
    ("rules: [{name: a, literals: [abcdef]}, {name: a, literals: [ghijkl]}]\n", "rule 'a': the name is used twice"),
]


@pytest.mark.parametrize(("text", "needle"), BAD, ids=[n for _, n in BAD])
def test_a_bad_rules_file_is_refused_naming_the_file_and_the_rule(tmp_path: Path, text: str, needle: str) -> None:
    path = rules_file(tmp_path, text)
    with pytest.raises(UsageError) as info:
        load_user_rules(path)
    message = str(info.value)
    assert message.startswith(f"--redact-config {path}: ") and needle in message, message
    assert "\n" not in message


def test_every_command_refuses_a_bad_rules_file_in_one_line_exit_2_before_writing_anything(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    work = tmp_path / "work"
    work.mkdir()
    bad = rules_file(tmp_path, "rules: [{name: a, regex: '(x+)+y'}]\n", "bad.yaml")
    cases = [
        ["collect", "--host-root", str(root), "-o", str(work / "b.tar.gz"), "--redact-config", str(bad)],
        ["collect", "--host-root", str(root), "--redact-config", str(bad)],
        ["collect", "--host-root", str(root), "--redact-config", str(tmp_path / "missing.yaml")],
        ["collect", "--host-root", str(root), "--no-redact", "--redact-config", str(rules_file(tmp_path))],
        ["collect", "--cluster", "--kubeconfig", str(tmp_path / "kc"), "--redact-config", str(bad)],
        ["diagnose", "--host-root", str(root), "-o", str(work / "d.tar.gz"), "--redact-config", str(bad)],
        ["node-agent", "--host-root", str(root), "--redact-config", str(bad)],
        # a bundle is already redacted: rules for a collection that will not happen are refused
        ["diagnose", str(root), "--redact-config", str(rules_file(tmp_path, name="good.yaml"))],
    ]
    for args in cases:
        res = kata_debug(*args, cwd=work, timeout=120)
        err = res.stderr.decode()
        assert res.returncode == 2, (args, err)
        assert "--redact-config" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
    assert list(work.iterdir()) == [], "no bundle, no .partial"


def test_the_hidden_stdin_flag_is_spelled_the_same_in_the_cli_and_the_cluster_code() -> None:
    assert redact_config.RULES_STDIN == RULES_STDIN


def test_the_rules_cross_processes_unchanged() -> None:
    rules = load_rules_text(RULES)
    line = rules.stdin_line()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert UserRules.from_json(json.loads(line)) == UserRules(rules.rules, "--redact-config")


async def test_cluster_collection_hands_every_node_the_rules_on_stdin_never_in_its_command(tmp_path: Path) -> None:
    from kata_debug.cluster.options import ClusterOptions

    async with ClusterFake() as fake:
        cluster = build(fake, tmp_path, ["kata-a", "kata-b"])
        for root in cluster.roots.values():
            add_task(
                root,
                "k8s.io",
                "ctrUSER000001",
                oci_spec(ctype="container", sandbox_id="sb-x", extra_annotations={"example.com/ticket": "TCK-482913"}),
            )
        rules = load_rules_text(RULES)
        opts = ClusterOptions(
            kubeconfig=str(fake.kubeconfig(tmp_path / "kubeconfig")),
            output=str(tmp_path / "cluster.tar.gz"),
            node_args=["--collector", "oci-specs", "--all-runtimes"],
            redact_rules=rules,
            ephemeral=False,
        )
        # one node through its agent pod, the other through a collector pod made for the run
        agent_b = fake.pod(AGENT_NS, cluster.agent("kata-b"))
        assert agent_b is not None
        agent_b["status"]["phase"] = "Pending"
        await run_cluster_collection(opts)
        sessions = list(fake.exec.sessions)
    assert len(sessions) == 2 and cluster.agent("kata-a") in {s["pod"] for s in sessions}
    assert cluster.agent("kata-b") not in {s["pod"] for s in sessions}
    assert {n["via"] for n in read_bundle(tmp_path / "cluster.tar.gz").manifest["nodes"]} == {"agent", "ephemeral"}
    for s in sessions:
        assert RULES_STDIN in s["command"]
        assert not any("Winter2026" in a or "TCK-" in a for a in s["command"]), "no rule in the exec request"
        assert s["stdin"] == rules.stdin_line()
    bundle = read_bundle(tmp_path / "cluster.tar.gz")
    for node in ("kata-a", "kata-b"):
        inner = read_bundle(bundle.members[f"nodes/{node}/bundle.tar.gz"])
        spec = inner.json("oci-specs/containerd/k8s.io/ctrUSER000001/config.json")
        assert spec["annotations"]["example.com/ticket"] == "***"
        assert inner.manifest["redactions"]["user:ticket"] == 1
    assert bundle.manifest["redactions"]["user:ticket"] == 0, "listed for the laptop's own part too"


async def test_captures_written_by_the_node_agent_apply_the_rules(tmp_path: Path) -> None:
    from tests.test_capture import runtime_removes, sandbox_only, service, sid_, stop, wait_captures

    root = tmp_path / "node"
    sid = sid_()
    sandbox_only(root, sid)
    spec = oci_spec(
        ctype="sandbox", sandbox_id=sid, pod="crash-0", extra_annotations={"example.com/ticket": "TCK-482913"}
    )
    (root / "run/containerd/io.containerd.runtime.v2.task/k8s.io" / sid / "config.json").write_text(json.dumps(spec))
    rules = load_rules_text(RULES)
    svc = service(root, redact_rules=rules)
    assert isinstance(svc.cfg, CaptureConfig)
    runner = asyncio.create_task(svc.run())
    try:
        await asyncio.sleep(1.0)
        runtime_removes(root, sid)  # the sandbox vanishes: a capture
        found = await wait_captures(svc, 1, sandbox=sid)
    finally:
        await stop(runner)
    rec = next(r for r in found if r.sandbox == sid)
    bundle = read_bundle(svc.dir / rec.id)
    assert b"TCK-482913" not in everything(bundle)
    assert bundle.manifest["redactions"]["user:ticket"] >= 1


# -- the redaction corpus, with operator rules -------------------------------------------


def with_user_rules() -> Redactor:
    return Redactor(rules=parse_rules(USER_RULES, "corpus"))


@pytest.mark.parametrize("case", USER_CASES, ids=[c.id for c in USER_CASES])
def test_a_value_a_user_rule_names_does_not_reach_the_bundle_from_any_place(case: Case) -> None:
    for out in run_place(case, with_user_rules):
        leaked = [s for s in case.secrets if s in out]
        assert not leaked, f"leaked {leaked} in:\n{out}"
        destroyed = [k for k in case.keep if k not in out]
        assert not destroyed, f"destroyed {destroyed} in:\n{out}"


@pytest.mark.parametrize("case", USER_LOOKALIKES, ids=[c.id for c in USER_LOOKALIKES])
def test_text_close_to_a_user_rule_survives(case: Case) -> None:
    for out in run_place(case, with_user_rules):
        assert out == case.content


@pytest.mark.parametrize("case", CASES + LOOKALIKES, ids=[c.id for c in CASES + LOOKALIKES])
def test_user_rules_change_nothing_the_defaults_decide(case: Case) -> None:
    """Rules that match nothing in the built-in corpus leave every output as the defaults made it."""
    assert run_place(case, with_user_rules) == run_place(case)


def test_the_readme_example_is_a_valid_rules_file(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("#### Your own rules: `--redact-config FILE`") :]
    example = section[section.index("```yaml\n") + 8 : section.index("```\n", section.index("```yaml\n") + 8)]
    rules = load_user_rules(rules_file(tmp_path, example))
    assert [r.name for r in rules.rules] == ["ticket", "tenant", "corp-session", "lab-password"]
    r = Redactor(rules=rules)
    assert r.text("TCK-123456 tenant/acme-1 X-Corp-Session: s3ss Winter2026!lab") == (
        "*** tenant/*** X-Corp-Session: *** ***"
    )


def test_an_anchored_rule_matches_at_the_start_of_every_line_of_a_chunk() -> None:
    r = Redactor(rules=load_rules_text("rules:\n  - name: banner\n    regex: '^BANNER ([0-9]+)$'\n"))
    text = b"BANNER 1\nok BANNER 2\nBANNER 3\nBANNER 4 tail\n"
    assert r.stream().feed(text) == b"BANNER ***\nok BANNER 2\nBANNER ***\nBANNER 4 tail\n"
    assert r.counts["user:banner"] == 2
