"""`kata-debug node-agent` as the DaemonSet runs it: sandboxes come and go, spans flow, SIGTERM flushes.

The agent is the real CLI in its own process, the node a synthetic host root, the guest side
the fixture frame streams written into the hybrid vsock sockets the agent creates, and the
backend a loopback OTLP receiver.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from kata_debug.agent.service import AgentConfig, spool_target
from tests.bundles import read_bundle
from tests.hostroots import kata_node
from tests.otlp_receiver import OtlpHttpReceiver, free_port
from tests.test_trace_wire import FIXTURES

REPO = Path(__file__).resolve().parents[1]
SID = "sb0123456789"  # kata_node's sandbox: pod web-0 in namespace default
JSON_STREAM = (FIXTURES / "json" / "stream.json.bin").read_bytes()
BINCODE_STREAM = (FIXTURES / "bincode" / "stream.bincode.bin").read_bytes()
JSON_SPANS = len((FIXTURES / "json" / "expected.jsonl").read_text().splitlines())
BINCODE_SPANS = len((FIXTURES / "bincode" / "expected.jsonl").read_text().splitlines())


@pytest.fixture
def short_tmp() -> Any:
    """Unix socket paths must stay under 108 bytes: pytest's tmp_path is too deep."""
    d = Path(tempfile.mkdtemp(prefix="kna-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def vsock_port() -> int:
    return 30000 + free_port() % 20000


class Agent:
    """The node agent process and what it logs."""

    def __init__(self, proc: asyncio.subprocess.Process, state: Path) -> None:
        self.proc = proc
        self.state = state
        self.stderr = b""

    async def ready(self, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {(await self.proc.stderr.read()).decode()}")  # type: ignore[union-attr]
            try:
                state = json.loads(self.state.read_text())
                if state["ready"]:
                    return state
            except (FileNotFoundError, ValueError):
                pass
            await asyncio.sleep(0.05)
        raise AssertionError("agent not ready")

    async def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(self.proc.communicate(), 30)
        self.stderr = err
        assert self.proc.returncode is not None
        return self.proc.returncode

    async def kill(self) -> None:
        """Cleanup after a failed test: kill the agent if it is still running."""
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def start_agent(
    root: Path, state: Path, *args: str, env: dict[str, str] | None = None, cwd: Path = REPO
) -> Agent:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kata_debug",
        "node-agent",
        "--host-root",
        str(root),
        "--state-file",
        str(state),
        "--stats-interval",
        "0",
        *args,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), "NODE_NAME": "kata-node-7", **(env or {})},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    return Agent(proc, cwd / state)  # a relative --state-file is relative to the agent's cwd


def start_vmm(path: Path) -> socket.socket:
    """What a hybrid-vsock VMM leaves on the node: its listening Unix socket."""
    path.parent.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen()
    return s


async def until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def guest_sends(trace_socket: Path, stream: bytes) -> None:
    """The guest agent's trace connection, as the VMM delivers it to `<uds>_10240`."""
    await until(trace_socket.exists)
    _, writer = await asyncio.open_unix_connection(str(trace_socket))
    for i in range(0, len(stream), 4096):  # arrives in pieces, frames split anywhere
        writer.write(stream[i : i + 4096])
        await writer.drain()
    writer.close()
    await writer.wait_closed()


def spooled_spans(spool: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(resource attributes, span) for every span in the OTLP/JSON lines spool."""
    out = []
    for f in sorted(spool.glob("spans.jsonl*")):
        for line in f.read_text().splitlines():
            for rs in json.loads(line)["resourceSpans"]:
                res = {a["key"]: next(iter(a["value"].values())) for a in rs["resource"]["attributes"]}
                for ss in rs["scopeSpans"]:
                    out.extend((res, s) for s in ss["spans"])
    return out


async def test_agent_follows_sandboxes_exports_tagged_spans_spools_them_and_stops_cleanly(short_tmp: Path) -> None:
    root = kata_node(short_tmp / "h")
    http = await OtlpHttpReceiver().start()
    vmms: list[socket.socket] = []
    agent = await start_agent(
        root, short_tmp / "state.json", "--export", http.export_uri, "--vsock-port", str(vsock_port())
    )
    try:
        state = await agent.ready()
        assert state["vsock"] == "listening"
        listening = [c for c in psutil.Process(agent.proc.pid).net_connections(kind="inet") if c.status == "LISTEN"]
        assert listening == [], "no network port: the only ingress is vsock and hybrid vsock"

        # A Cloud Hypervisor sandbox starts: the agent attaches clh.sock_10240 before the guest's first span.
        clh = root / f"run/vc/vm/{SID}/clh.sock"
        vmms.append(start_vmm(clh))
        await guest_sends(Path(f"{clh}_10240"), JSON_STREAM)
        got = await http.wait_for_spans(JSON_SPANS)
        assert {r.resource["kata.sandbox.id"] for r in got} == {SID}
        assert {(r.resource["k8s.pod.name"], r.resource["k8s.namespace.name"]) for r in got} == {("web-0", "default")}
        assert {r.resource["k8s.node.name"] for r in got} == {"kata-node-7"}

        # A Firecracker sandbox appears (agent <= 3.28: bincode); the CLH one goes away.
        fc = root / "run/vc/firecracker/fc1/root/kata.hvsock"
        vmms.append(start_vmm(fc))
        await guest_sends(Path(f"{fc}_10240"), BINCODE_STREAM)
        got = await http.wait_for_spans(JSON_SPANS + BINCODE_SPANS)
        assert sum(1 for r in got if r.resource["kata.sandbox.id"] == "fc1") == BINCODE_SPANS
        vmms[0].close()
        shutil.rmtree(root / f"run/vc/vm/{SID}")
        await until(lambda: len(json.loads(agent.state.read_text())["listeners"]) == 2, timeout=30)
        assert not Path(f"{clh}_10240").exists()

        assert await agent.stop() == 0, agent.stderr.decode()
    finally:
        await agent.kill()
        await http.stop()
        for s in vmms:
            s.close()
    log = agent.stderr.decode()
    assert "final counters:" in log and f"spans={JSON_SPANS + BINCODE_SPANS}" in log
    assert not Path(f"{fc}_10240").exists(), "listeners are closed and their sockets removed on exit"
    assert json.loads(agent.state.read_text())["ready"] is False

    # Every span is also in the node spool, where `kata-debug collect` finds it.
    spool = root / "var/lib/kata-debug/traces"
    spans = spooled_spans(spool)
    assert len(spans) == JSON_SPANS + BINCODE_SPANS
    assert {res["kata.sandbox.id"] for res, _ in spans} == {SID, "fc1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kata_debug",
        "collect",
        "--host-root",
        str(root),
        "-c",
        "agent-traces",
        "--output",
        str(short_tmp / "b.tar.gz"),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    bundle = read_bundle(short_tmp / "b.tar.gz")
    assert bundle.members["agent-traces/spans.jsonl"] == (spool / "spans.jsonl").read_bytes()


async def test_without_vsock_the_agent_says_so_once_and_hybrid_vsock_still_flows(short_tmp: Path) -> None:
    root = kata_node(short_tmp / "h")
    port = vsock_port()
    taken = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    taken.bind((socket.VMADDR_CID_ANY, port))
    taken.listen()
    http = await OtlpHttpReceiver().start()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{http.port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    agent = await start_agent(root, short_tmp / "state.json", "--vsock-port", str(port), env=env)
    vmm = None
    try:
        state = await agent.ready()
        assert state["vsock"].startswith(f"cannot bind vsock port {port}")
        vmm = start_vmm(root / f"run/vc/vm/{SID}/clh.sock")
        await guest_sends(root / f"run/vc/vm/{SID}/clh.sock_10240", JSON_STREAM)
        got = await http.wait_for_spans(JSON_SPANS)  # default export: the OTEL_EXPORTER_OTLP_* variables
        assert {r.resource["kata.sandbox.id"] for r in got} == {SID}
        assert await agent.stop() == 0
    finally:
        await agent.kill()
        await http.stop()
        taken.close()
        if vmm is not None:
            vmm.close()
    lines = [ln for ln in agent.stderr.decode().splitlines() if "vsock" in ln.lower() and "hvsock" not in ln]
    assert len(lines) == 1 and "vsock trace ingress off" in lines[0] and "hybrid vsock" in lines[0], lines


async def test_spool_stays_under_its_cap_however_many_spans_arrive(short_tmp: Path) -> None:
    root = kata_node(short_tmp / "h")
    spool = root / "spool"  # --spool-dir is a node path, under --host-root
    cap = 1 << 20  # 4 files of 256 KiB; one stream of fixture spans is ~100 KiB of OTLP/JSON
    agent = await start_agent(
        root,
        short_tmp / "state.json",
        "--spool-dir",
        "/spool",
        "--spool-size",
        "1M",
        "--vsock-port",
        str(vsock_port()),
    )
    vmm = None
    live = spool / "spans.jsonl"

    def mark() -> tuple[int, int] | None:
        try:
            st = live.stat()
        except FileNotFoundError:  # between a rotation's rename and the new file
            return None
        return st.st_ino, st.st_size

    try:
        await agent.ready()
        vmm = start_vmm(root / f"run/vc/vm/{SID}/clh.sock")
        for _ in range(14):
            before = mark()
            await guest_sends(root / f"run/vc/vm/{SID}/clh.sock_10240", JSON_STREAM)
            await until(lambda before=before: mark() not in (before, None))  # written (the agent batches for 0.2 s)
        assert await agent.stop() == 0
    finally:
        await agent.kill()
        if vmm is not None:
            vmm.close()
    files = sorted(spool.glob("spans.jsonl*"))
    assert [f.name for f in files] == ["spans.jsonl", "spans.jsonl.1", "spans.jsonl.2", "spans.jsonl.3"]
    biggest_line = max(len(ln) for f in files for ln in f.read_bytes().splitlines())
    assert sum(f.stat().st_size for f in files) <= cap + biggest_line
    assert f"spans={14 * JSON_SPANS}" in agent.stderr.decode()
    assert len(spooled_spans(spool)) < 14 * JSON_SPANS, "the oldest spans were rotated away"


async def test_bad_input_is_one_line_and_exit_2(short_tmp: Path) -> None:
    (short_tmp / "a-file").write_text("")
    for args, message in [
        (["--export", "ftp://x"], "--export ftp://x: unknown exporter"),
        (["--spool-dir", "/a-file/spool"], f"--spool-dir /a-file/spool ({short_tmp}/a-file/spool): cannot write"),
        (["--spool-dir", "/../escape"], "--spool-dir /../escape: a node path may not contain '..'"),
        (["--export", "file:///no/such/dir/s.jsonl"], "--export file:///no/such/dir/s.jsonl: directory"),
        (["--spool-size", "lots"], "--spool-size 'lots': not a size"),
    ]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kata_debug",
            "node-agent",
            "--host-root",
            str(short_tmp),
            *args,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 2, err.decode()
        lines = err.decode().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"kata-debug: error: {message}"), err.decode()


@pytest.mark.parametrize("spool_name", ["spool", "spool?max_bytes=1", "spool#1", "spool dir %41"])
async def test_relative_paths_and_uri_characters_in_paths_spool_where_they_say(
    short_tmp: Path, spool_name: str
) -> None:
    """`--host-root h --spool-dir <name>` from the directory the agent was started in: <name> under h, byte for byte."""
    kata_node(short_tmp / "h")
    agent = await start_agent(
        Path("h"), Path("state.json"), "--spool-dir", spool_name, "--vsock-port", str(vsock_port()), cwd=short_tmp
    )
    vmm = None
    try:
        state = await agent.ready()
        spool = short_tmp / "h" / spool_name
        assert state["spool"] == str(spool / "spans.jsonl")
        vmm = start_vmm(short_tmp / f"h/run/vc/vm/{SID}/clh.sock")
        await guest_sends(short_tmp / f"h/run/vc/vm/{SID}/clh.sock_10240", JSON_STREAM)
        await until(lambda: (spool / "spans.jsonl").exists() and (spool / "spans.jsonl").stat().st_size > 0)
        assert await agent.stop() == 0, agent.stderr.decode()
    finally:
        await agent.kill()
        if vmm is not None:
            vmm.close()
    assert len(spooled_spans(short_tmp / "h" / spool_name)) == JSON_SPANS
    assert sorted(p.name for p in short_tmp.iterdir()) == sorted(["h", "state.json"])


def test_the_spool_target_is_the_absolute_path_itself_not_a_parsed_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = AgentConfig(host_root=Path("hr"), spool_bytes=4 << 20).absolute()
    target = spool_target(cfg)
    assert target.kind == "file" and target.path == str(tmp_path / "hr/var/lib/kata-debug/traces/spans.jsonl")
    assert (target.max_bytes, target.backups) == (1 << 20, 3)
    odd = spool_target(AgentConfig(host_root=tmp_path, spool_dir=Path("a?b=1#c")))
    assert odd.path == str(tmp_path / "a?b=1#c" / "spans.jsonl")
    assert "a%3Fb%3D1%23c" in odd.uri or "a%3Fb=1%23c" in odd.uri, "the name in logs is a quoted URI"
