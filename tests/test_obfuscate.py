"""`--obfuscate-hosts`: one pseudonym per hostname, IP and MAC across a whole bundle, the
reverse map only in the `--obfuscate-map` file, and look-alikes left alone."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kata_debug.collect.runner import CollectOptions, run_collection
from kata_debug.redact.obfuscate import Obfuscator, split_map_lines
from kata_debug.redact.options import OBFUSCATE_STDIN, ObfuscateOptions
from kata_debug.redact.redactor import Redactor
from tests.bundles import Bundle, read_bundle
from tests.conftest import REPO, kata_debug
from tests.hostroots import add_task, kata_node, oci_spec

IP = "10.20.30.40"
IP6 = "fd00:1234::42"
MAC = "52:54:00:ab:34:56"
HOST = "kata-node-1"  # tests.hostroots writes it to /etc/hostname

LOOKALIKES = [
    "kata-runtime 3.2.0.1",
    "version 1.2.3.4",
    "v1.2.3.4",
    "1.2.3.4-rc1",
    "oid 1.3.6.1.4.1",
    "took 10.5.1s",
    "listen 127.0.0.1:8080",
    "bind 0.0.0.0",
    "ll 169.254.0.1",
    "mask 255.255.255.0",
    "lo ::1",
    "ll6 fe80::1",
    "any ::",
    "path kata_agent::rpc",
    "mod a::b",
    "at 10:22:33",
    "ts 2026-12-06T10:22:33.123456789Z",
    "uuid 6f1c2c1e-0000-4000-8000-000000000001",
    "sid 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "zero 00:00:00:00:00:00",
    "bcast ff:ff:ff:ff:ff:ff",
    "mcast 224.0.0.251",
]


def test_lookalikes_survive_and_nothing_is_recorded_for_them() -> None:
    ob = Obfuscator.new([HOST])
    for text in LOOKALIKES:
        assert ob.text(text) == text, text
    assert ob.map.pseudonyms == {}


@pytest.mark.parametrize(
    "text, original",
    [
        (f"ip {IP}", IP),
        (f"peer={IP}:10250", IP),
        (f"cidr {IP}/24", IP),
        (f"range {IP}-10.20.30.41", IP),
        (f"ip6 {IP6}/64", IP6),
        (f"[{IP6}]:443", IP6),
        (f"mac {MAC}", MAC),
        (f"ifname=eth0:{MAC}", MAC),
        (f"MAC {MAC.upper().replace(':', '-')}", MAC.upper().replace(":", "-")),
        (f"node {HOST} ready", HOST),
        (f"fqdn {HOST}.corp.example.com", HOST),
    ],
)
def test_addresses_and_known_hosts_become_pseudonyms_of_the_same_shape(text: str, original: str) -> None:
    ob = Obfuscator.new([HOST])
    out = ob.text(text)
    assert original not in out
    reverse = {o: p for p, o in ob.map.pseudonyms.items()}
    pseudo = reverse[original]
    assert pseudo in out
    if original in (IP,):
        assert ipaddress.IPv4Address(pseudo) in ipaddress.IPv4Network("240.0.0.0/4")
    elif original == IP6:
        assert ipaddress.IPv6Address(pseudo) in ipaddress.IPv6Network("2001:db8::/32")
        assert out.endswith("/64") or "]:443" in out
    elif original.lower().replace("-", ":") == MAC:
        octets = bytes.fromhex(re.sub("[:-]", "", pseudo))
        assert len(octets) == 6 and octets[0] & 0x02 and not octets[0] & 0x01, "locally administered unicast"
        assert pseudo == (pseudo.upper() if any(c.isupper() for c in original) else pseudo.lower()), "case kept"
    else:
        assert re.fullmatch(r"host-[0-9a-f]{8}", pseudo)
    if "/24" in text:
        assert out.endswith("/24"), "the prefix length stays"


def test_same_key_same_pseudonym_other_key_other_pseudonym() -> None:
    a = Obfuscator(b"k" * 32, [HOST])
    b = Obfuscator.from_spec(a.spec())  # what a scanner process or a node gets
    c = Obfuscator(b"x" * 32, [HOST])
    text = f"{HOST} {IP} {MAC} {IP6}"
    assert a.text(text) == b.text(text) != c.text(text)


def test_a_domain_of_a_known_fqdn_hides_its_other_hosts_too() -> None:
    ob = Obfuscator.new(["n1.corp.example.com"])
    out = ob.text("n1.corp.example.com talks to db.corp.example.com in corp.example.com")
    assert "corp.example.com" not in out and "n1" not in out and "db." not in out
    assert len(set(re.findall(r"domain-[0-9a-f]{8}\.example", out))) == 1


def test_redactor_redacts_then_pseudonymises_text_json_and_streams_once() -> None:
    ob = Obfuscator(b"k" * 32, [HOST])
    r = Redactor(hosts=ob)
    line = f"password=hunter2 from {IP}\n".encode()
    assert (
        r.bytes(line) == r.stream().feed(line) == f"password=*** from {ob.ipv4(ipaddress.IPv4Address(IP))}\n".encode()
    )
    value = {HOST: {"env": ["TOKEN=abc"], "addr": IP, "args": ["--host", HOST]}}
    out = r.json_value(value)
    p_host = ob.host(HOST)
    assert out == {
        p_host: {"env": ["TOKEN=***"], "addr": ob.ipv4(ipaddress.IPv4Address(IP)), "args": ["--host", p_host]}
    }
    # Redaction off, pseudonyms on: still pseudonymised; both off: untouched.
    assert IP not in Redactor(enabled=False, hosts=ob).text(f"ip {IP}")
    assert Redactor(enabled=False).text(f"ip {IP}") == f"ip {IP}"


def test_node_map_line_is_taken_out_of_stderr() -> None:
    ob = Obfuscator.new([HOST])
    ob.text(f"{HOST} {IP}")
    stderr = b"warning: something\n" + ob.map_line()
    kept, maps = split_map_lines(stderr)
    assert kept == b"warning: something\n"
    assert maps[0]["pseudonyms"] == ob.map.pseudonyms


def test_map_records_collisions_instead_of_hiding_them() -> None:
    ob = Obfuscator.new()
    ob.merge({"240.0.0.1": "10.0.0.1"})
    ob.merge({"240.0.0.1": "10.0.0.2"})
    assert ob.map.conflicts == {"240.0.0.1": ["10.0.0.1", "10.0.0.2"]}


def test_the_map_is_bounded() -> None:
    ob = Obfuscator(b"k" * 32, max_entries=10)
    ob.text(" ".join(f"10.0.{i // 250}.{i % 250 + 1}" for i in range(100)))
    assert len(ob.map.pseudonyms) == 10 and ob.map.not_recorded == 90


# -- a whole node bundle -------------------------------------------------------------------


def _plant(root: Path, journal_dirs: list[Path]) -> None:
    """The same IP, MAC and hostname in a shim log, an OCI spec, the host facts and the journal."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    log = root / "var/log/containerd.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(
        f'time="{now}" level=error msg="dial {IP}:1024 failed on {HOST}: tap0 {MAC}" sandbox=sb0123456789\n'
        + "".join(f'time="{now}" level=info msg="{t}" sandbox=sb0123456789\n' for t in LOOKALIKES)
    )
    add_task(
        root,
        "k8s.io",
        "ctrnet0000001",
        oci_spec(
            ctype="container",
            sandbox_id="sb0123456789",
            extra_annotations={"example.com/peer": f"{IP} {MAC} {HOST}", "example.com/v6": IP6},
        ),
    )
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc/cmdline").write_text(
        f"BOOT_IMAGE=/vmlinuz ip={IP}::10.20.30.1:255.255.255.0:{HOST}:eth0:none ifname=eth0:{MAC}\n"
    )
    for src in journal_dirs:
        for f in src.glob("*/*.journal"):
            dest = root / "var/log/journal" / f.parent.name / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f.read_bytes())


def _everything(bundle: Bundle) -> bytes:
    return (
        b"\n".join([*bundle.members.values(), *(n.encode() for n in bundle.members)])
        + json.dumps(bundle.manifest).encode()
    )


def _assert_no_original(data: bytes) -> None:
    low = data.lower()
    for original in (IP, MAC, MAC.replace(":", "-"), IP6):
        assert original.encode() not in low, original
    assert not re.search(rb"(?<![\w.-])" + HOST.encode() + rb"(?![\w-])", data), HOST


async def test_one_pseudonym_per_value_across_log_spec_facts_and_journal(journald: None, tmp_path: Path) -> None:
    marker = f"obfuscate-{datetime.now(UTC).timestamp()}"
    line = f'level=error msg="{marker} peer {IP} mac {MAC} host {HOST}" sandbox=sb0123456789'
    subprocess.run(["systemd-cat", "-t", "kata"], input=line.encode() + b"\n", check=True, timeout=10)
    subprocess.run(["journalctl", "--sync"], capture_output=True, timeout=30)
    root = kata_node(tmp_path / "host")
    _plant(root, [d for d in (Path("/run/log/journal"), Path("/var/log/journal")) if d.is_dir()])
    out = tmp_path / "b.tar.gz"
    result = await run_collection(
        CollectOptions(
            host_root=root,
            output=str(out),
            collectors=["oci-specs", "host", "shim-logs"],
            since=timedelta(hours=1),
            obfuscate=ObfuscateOptions(enabled=True),
        )
    )
    bundle = read_bundle(out)
    map_path = Path(str(out) + ".map.json")
    assert stat.S_IMODE(map_path.stat().st_mode) == 0o600
    omap: dict[str, Any] = json.loads(map_path.read_text())
    reverse = {o.lower(): p for p, o in omap["pseudonyms"].items()}
    p_ip, p_mac, p_host, p_ip6 = reverse[IP], reverse[MAC], reverse[HOST], reverse[IP6]
    assert omap["conflicts"] == {}
    assert result.node == p_host and bundle.manifest["node"] == p_host

    log = bundle.members["shim-logs/files/var/log/containerd.log"].decode()
    spec = bundle.json("oci-specs/containerd/k8s.io/ctrnet0000001/config.json")
    facts = bundle.members["host/files/proc/cmdline"].decode()
    journal = bundle.members["shim-logs/journal/journal.log"].decode()
    journal_line = next(x for x in journal.splitlines() if marker in x)
    assert f"{p_ip}:1024" in log and p_mac in log and p_host in log
    assert spec["annotations"]["example.com/peer"] == f"{p_ip} {p_mac} {p_host}"
    assert spec["annotations"]["example.com/v6"] == p_ip6
    assert f"ip={p_ip}::" in facts and f":{p_host}:eth0" in facts and f"ifname=eth0:{p_mac}" in facts
    assert f"peer {p_ip} mac {p_mac} host {p_host}" in journal_line
    for text in LOOKALIKES:
        assert text in log, text
    assert "255.255.255.0" in facts
    _assert_no_original(_everything(bundle))


def test_bundle_to_stdout_needs_a_map_file_and_an_existing_map_is_never_replaced(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    res = kata_debug("collect", "--host-root", str(root), "--obfuscate-hosts", "-o", "-", "-c", "kata-config")
    assert res.returncode == 2 and res.stdout == b""
    err = res.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and "--obfuscate-map" in err, err
    existing = tmp_path / "map.json"
    existing.write_text("keep me")
    res = kata_debug(
        "collect",
        "--host-root",
        str(root),
        "--obfuscate-hosts",
        "--obfuscate-map",
        str(existing),
        "-o",
        str(tmp_path / "b.tar.gz"),
        "-c",
        "kata-config",
    )
    assert res.returncode == 2 and "already exists" in res.stderr.decode()
    assert existing.read_text() == "keep me" and not (tmp_path / "b.tar.gz").exists()
    res = kata_debug("collect", "--host-root", str(root), "--obfuscate-map", str(tmp_path / "m.json"), "-c", "host")
    assert res.returncode == 2 and "only with --obfuscate-hosts" in res.stderr.decode()


def test_bundle_to_stdout_with_a_map_file(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    map_path = tmp_path / "m.json"
    res = kata_debug(
        "collect",
        "--host-root",
        str(root),
        "--obfuscate-hosts",
        "--obfuscate-map",
        str(map_path),
        "-o",
        "-",
        "-c",
        "oci-specs",
    )
    assert res.returncode == 0, res.stderr.decode()
    bundle = read_bundle(res.stdout)
    omap = json.loads(map_path.read_text())
    assert omap["pseudonyms"][bundle.manifest["node"]] == HOST
    _assert_no_original(_everything(bundle))


def test_the_summary_says_where_the_map_went(tmp_path: Path) -> None:
    """The map is the only way back to the real names and is never in the bundle, so the text
    summary names it under the bundle line (also when the bundle goes to stdout) and the JSON
    summary has it as `obfuscate_map`; without --obfuscate-hosts neither mentions a map."""
    root = kata_node(tmp_path / "host")
    bundle = tmp_path / "b.tar.gz"
    res = kata_debug("collect", "--host-root", str(root), "--obfuscate-hosts", "-o", str(bundle), "-c", "host")
    assert res.returncode == 0, res.stderr.decode()
    lines = res.stdout.decode().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("bundle: "))
    assert lines[at + 1].startswith(f"map: {bundle}.map.json (pseudonym -> original"), lines[at:]
    assert json.loads(Path(f"{bundle}.map.json").read_text())["pseudonyms"]

    mapped = tmp_path / "m.json"
    res = kata_debug(
        "collect",
        "--host-root",
        str(root),
        "--obfuscate-hosts",
        "--obfuscate-map",
        str(mapped),
        "-o",
        "-",
        "-c",
        "host",
    )
    assert res.returncode == 0 and read_bundle(res.stdout).manifest["node"] != HOST
    assert f"\nmap: {mapped} (" in res.stderr.decode()

    out = tmp_path / "j.tar.gz"
    res = kata_debug(
        "collect", "--host-root", str(root), "--obfuscate-hosts", "-o", str(out), "-c", "host", "--format", "json"
    )
    assert res.returncode == 0, res.stderr.decode()
    assert json.loads(res.stdout)["obfuscate_map"] == f"{out}.map.json"

    plain = tmp_path / "p.tar.gz"
    res = kata_debug("collect", "--host-root", str(root), "-o", str(plain), "-c", "host", "--format", "json")
    assert res.returncode == 0 and "obfuscate_map" not in json.loads(res.stdout)
    res = kata_debug("collect", "--host-root", str(root), "-o", str(tmp_path / "t.tar.gz"), "-c", "host")
    assert res.returncode == 0 and "\nmap: " not in res.stdout.decode()


# -- a cluster ------------------------------------------------------------------------------


async def test_cluster_pseudonyms_agree_across_nodes_and_the_laptop(tmp_path: Path) -> None:
    from tests.fake_kube_exec import ClusterFake
    from tests.kata_cluster import build
    from tests.test_cluster_collect import FAST, cli

    shared = "10.99.0.7"  # e.g. a registry both nodes pull from
    async with ClusterFake() as fake:
        cluster = build(fake, tmp_path, ["kata-a", "kata-b"])
        for name, root in cluster.roots.items():
            add_task(
                root,
                "k8s.io",
                "ctrpeer000001",
                oci_spec(ctype="container", sandbox_id=f"sb-{name}", extra_annotations={"example.com/peer": shared}),
            )
        out = tmp_path / "c.tar.gz"
        code, printed, err = await cli(
            "collect",
            "--cluster",
            "--kubeconfig",
            str(fake.kubeconfig(tmp_path / "kc")),
            "--output",
            str(out),
            "--obfuscate-hosts",
            *FAST,
        )
        sessions = list(fake.exec.sessions)
    assert code == 0, err.decode()
    assert f"map: {out}.map.json" in printed.decode(), "the summary says where the only way back went"
    omap = json.loads(Path(str(out) + ".map.json").read_text())
    reverse = {o: p for p, o in omap["pseudonyms"].items()}
    p_shared, p_a, p_b = reverse[shared], reverse["kata-a"], reverse["kata-b"]
    bundle = read_bundle(out)
    nodes = {n["name"]: n for n in bundle.manifest["nodes"]}
    assert set(nodes) == {p_a, p_b}, "the manifest names nodes by pseudonym"
    inner = {name: read_bundle(bundle.members[n["member"]]) for name, n in nodes.items()}
    for name, node_bundle in inner.items():
        spec = node_bundle.json("oci-specs/containerd/k8s.io/ctrpeer000001/config.json")
        assert spec["annotations"]["example.com/peer"] == p_shared, "one pseudonym on every node"
        assert node_bundle.manifest["node"] == name
    summaries = bundle.json("cluster/nodes.json")
    assert {s["name"] for s in summaries} >= {p_a, p_b}, "the laptop's objects use the nodes' pseudonyms"
    assert omap["pseudonyms"]["host-" + p_a.split("-", 1)[1]] == "kata-a"
    everything = _everything(bundle) + b"".join(_everything(b) for b in inner.values())
    for original in (shared, "192.0.2.10", "10.244.1.0"):
        assert original.encode() not in everything, original
    for name in (b"kata-a", b"kata-b"):
        # Pod names are not hosts (`kata-deploy-kata-a` stays); the name on its own is gone.
        assert not re.search(rb"(?<![\w.-])" + name + rb"(?![\w-])", everything), name
    assert b"kata-debug-obfuscate-map" not in everything, "the nodes' map lines never enter the bundle"
    _assert_key_only_on_stdin(sessions, {"kata-a": p_a, "kata-b": p_b})


def _assert_key_only_on_stdin(sessions: list[dict[str, Any]], pseudonyms: dict[str, str]) -> None:
    """Every node got the run's key in its stdin line, none in its exec command (the audit log's)."""
    assert len(sessions) == len(pseudonyms)
    keys = set()
    for s in sessions:
        assert OBFUSCATE_STDIN in s["command"]
        assert not any(a.startswith("--obfuscate-key") or a.startswith("--obfuscate-name") for a in s["command"])
        line = s["stdin"]
        assert isinstance(line, bytes) and line.endswith(b"\n") and line.count(b"\n") == 1
        member = json.loads(line)["obfuscate"]
        assert not any(member["key"] in a for a in s["command"]), "the key is not in the exec request"
        assert set(pseudonyms) <= set(member["names"])
        keys.add(member["key"])
    assert len(keys) == 1, "one key for the run"
    run_key = Obfuscator(bytes.fromhex(keys.pop()))
    for name, pseudonym in pseudonyms.items():
        assert run_key.host(name) == pseudonym, "the stdin key is the one that made the pseudonyms"


async def test_diagnose_still_finds_the_cause_in_a_pseudonymised_collection(tmp_path: Path) -> None:
    from tests.test_diagnose_cli import failing_node

    root = failing_node(tmp_path / "host")
    proc = kata_debug("diagnose", "--host-root", str(root), "--since", "87600h", "--obfuscate-hosts")
    assert proc.returncode == 2 and len(proc.stderr.decode().strip().splitlines()) == 1
    assert b"--obfuscate-map" in proc.stderr
    kept = tmp_path / "kept.tar.gz"
    proc = kata_debug(
        "diagnose", "--host-root", str(root), "--since", "87600h", "--output", str(kept), "--obfuscate-hosts",
        "--format", "json",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["findings"][0]["id"] == "shim-not-found", "the analyzers read pseudonymised evidence as well"
    omap = json.loads(Path(f"{kept}.map.json").read_text())
    assert list(omap["pseudonyms"].values()) == [HOST]
    assert HOST.encode() not in proc.stdout and HOST.encode() not in b"".join(read_bundle(kept).members.values())


async def test_cluster_sends_rules_and_key_on_one_stdin_line_to_agent_and_collector_pods(tmp_path: Path) -> None:
    """--redact-config and --obfuscate-hosts together: one JSON line on each node's stdin carries
    both, through an agent pod and a collector pod alike; each node applies both."""
    from kata_debug.cluster.options import ClusterOptions
    from kata_debug.cluster.run import run_cluster_collection
    from kata_debug.redact.user_rules import RULES_STDIN
    from tests.fake_kube_exec import ClusterFake
    from tests.kata_cluster import AGENT_NS, build
    from tests.test_redact_config import RULES, load_rules_text

    shared = "10.99.0.7"
    async with ClusterFake() as fake:
        cluster = build(fake, tmp_path, ["kata-a", "kata-b"])
        for root in cluster.roots.values():
            spec = oci_spec(
                ctype="container",
                sandbox_id="sb-x",
                extra_annotations={"example.com/ticket": "TCK-482913", "example.com/peer": shared},
            )
            add_task(root, "k8s.io", "ctrBOTH000001", spec)
        rules = load_rules_text(RULES)
        out = tmp_path / "cluster.tar.gz"
        opts = ClusterOptions(
            kubeconfig=str(fake.kubeconfig(tmp_path / "kubeconfig")),
            output=str(out),
            node_args=["--collector", "oci-specs", "--all-runtimes"],
            redact_rules=rules,
            obfuscate=ObfuscateOptions(enabled=True),
            ephemeral=False,
        )
        agent_b = fake.pod(AGENT_NS, cluster.agent("kata-b"))
        assert agent_b is not None
        agent_b["status"]["phase"] = "Pending"  # kata-b through a collector pod made for the run
        await run_cluster_collection(opts)
        sessions = list(fake.exec.sessions)
    bundle = read_bundle(out)
    assert {n["via"] for n in bundle.manifest["nodes"]} == {"agent", "ephemeral"}
    omap = json.loads(Path(f"{out}.map.json").read_text())
    reverse = {o: p for p, o in omap["pseudonyms"].items()}
    _assert_key_only_on_stdin(sessions, {"kata-a": reverse["kata-a"], "kata-b": reverse["kata-b"]})
    for s in sessions:
        assert RULES_STDIN in s["command"]
        assert not any("TCK-" in a or "Winter2026" in a for a in s["command"])
        doc = json.loads(s["stdin"])
        assert {k: v for k, v in doc.items() if k != "obfuscate"} == rules.to_json()
    for n in bundle.manifest["nodes"]:
        inner = read_bundle(bundle.members[n["member"]])
        spec = inner.json("oci-specs/containerd/k8s.io/ctrBOTH000001/config.json")
        assert spec["annotations"]["example.com/ticket"] == "***", "the rules applied on the node"
        assert spec["annotations"]["example.com/peer"] == reverse[shared], "one pseudonym on every node"
        assert inner.manifest["redactions"]["user:ticket"] == 1


def _node_collect(root: Path, line: bytes, *extra: str) -> subprocess.CompletedProcess[bytes]:
    """A node's collect as `collect --cluster` runs it: bundle on stdout, the stdin line given."""
    return subprocess.run(
        [sys.executable, "-m", "kata_debug", "collect", "--host-root", str(root), "-o", "-", *extra],
        input=line,
        capture_output=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_a_node_takes_the_run_key_and_names_from_stdin_and_hands_its_map_back_on_stderr(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    add_task(
        root,
        "k8s.io",
        "ctrSTDIN00001",
        oci_spec(ctype="container", sandbox_id="sb-x", extra_annotations={"example.com/peer": f"{IP} kata-peer-7"}),
    )
    key = bytes(range(32))
    line = json.dumps({"obfuscate": {"key": key.hex(), "names": ["kata-peer-7"]}}).encode() + b"\n"
    res = _node_collect(root, line, OBFUSCATE_STDIN, "-c", "oci-specs", "--all-runtimes")
    assert res.returncode == 0, res.stderr.decode()
    run_key = Obfuscator(key, ["kata-peer-7"])
    bundle = read_bundle(res.stdout)
    assert bundle.manifest["node"] == run_key.host(HOST)
    spec = bundle.json("oci-specs/containerd/k8s.io/ctrSTDIN00001/config.json")
    assert spec["annotations"]["example.com/peer"] == run_key.text(f"{IP} kata-peer-7")
    rest, maps = split_map_lines(res.stderr)
    assert len(maps) == 1 and maps[0]["pseudonyms"][run_key.host("kata-peer-7")] == "kata-peer-7"
    assert key.hex().encode() not in res.stdout + rest, "the key is in neither the bundle nor the log"
    assert not list(tmp_path.glob("*.map.json")) and not list(REPO.glob("*.map.json"))


@pytest.mark.parametrize(
    "flags, line, problem",
    [
        ([OBFUSCATE_STDIN], b"", "expected one JSON line"),
        ([OBFUSCATE_STDIN], b"not json\n", "not a JSON line"),
        ([OBFUSCATE_STDIN], b"[1]\n", "not a JSON object"),
        ([OBFUSCATE_STDIN], b'{"version": 1}\n', "no `obfuscate` member"),
        ([OBFUSCATE_STDIN], b'{"obfuscate": {"key": "abcd", "names": []}}\n', "not a key"),
        ([OBFUSCATE_STDIN], b'{"obfuscate": {"key": "' + b"zz" * 32 + b'"}}\n', "not a key"),
        ([OBFUSCATE_STDIN], b'{"obfuscate": {"key": "' + b"ab" * 32 + b'", "names": "n1"}}\n', "`names`"),
        ([OBFUSCATE_STDIN], b'{"obfuscate": {"key": "' + b"ab" * 32 + b'", "nam": []}}\n', "`key` and `names`"),
        (["--redact-rules-stdin"], b'{"obfuscate": {"key": "' + b"ab" * 32 + b'"}}\n', OBFUSCATE_STDIN),
    ],
)
def test_a_bad_stdin_line_is_one_line_and_no_bundle(
    tmp_path: Path, flags: list[str], line: bytes, problem: str
) -> None:
    root = kata_node(tmp_path / "host")
    res = _node_collect(root, line, *flags, "-c", "kata-config")
    err = res.stderr.decode().strip()
    assert res.returncode == 2 and res.stdout == b"", err
    assert len(err.splitlines()) == 1 and problem in err and "Traceback" not in err, err


def test_the_key_has_no_command_line_option_any_more(tmp_path: Path) -> None:
    root = kata_node(tmp_path / "host")
    res = _node_collect(root, b"", "--obfuscate-key", "ab" * 32, "-c", "kata-config")
    assert res.returncode == 2 and b"--obfuscate-key" in res.stderr and res.stdout == b""


def test_the_hidden_stdin_flag_is_spelled_the_same_in_the_cli_and_the_cluster_code() -> None:
    from kata_debug.cli import redact_config

    assert redact_config.OBFUSCATE_STDIN == OBFUSCATE_STDIN
