"""Benchmark the redactor alone on shim-log-like text: MB/s of this tree's redactor and of
the one on another git revision (default `main`), measured in the same session.

    python bench/redact.py                     # 64 MiB, 3 runs each, vs main
    python bench/redact.py --mib 256 --base HEAD~3
    python bench/redact.py --redact-config rules.yaml   # also: this tree with operator rules
    python bench/redact.py --obfuscate-hosts   # also: redaction + pseudonyms (--obfuscate-hosts)

Text: Kata shim debug lines (console output, container events, 64-hex sandbox ids), with
one line in a thousand carrying a credential (so the slow path is measured too). Streamed in
1 MiB chunks ending on lines, as the log scanner feeds it. Target: >= 100 MB/s.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kata_debug.redact.obfuscate import Obfuscator  # noqa: E402
from kata_debug.redact.redactor import Redactor  # noqa: E402
from kata_debug.redact.user_rules import UserRules, load_user_rules  # noqa: E402

_SECRETS = [
    "Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
    "pulling https://robot:Rb0tPassw0rd@registry.example/v2/app",
    "password=hunter2 user=admin",
    "token ghp_R8sJ2kL9mQ4vX7nB1cD5fG3hT6wY0zA2eU8i",
]


def shim_log(mib: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    subsystems = ["sandbox", "qemu", "kata_agent", "virtiofsd", "cgroups", "hypervisor"]
    sandboxes = [f"{rng.getrandbits(256):064x}" for _ in range(50)]
    lines: list[str] = []
    total = 0
    while total < mib << 20:
        n = rng.randrange(1_000_000)
        sid = rng.choice(sandboxes)
        if rng.random() < 0.7:
            line = (
                f'time="2026-11-28T10:{n % 60:02d}:{n % 59:02d}.{n:06d}Z" level=debug msg="reading guest console" '
                f"pid={1000 + n % 5000} sandbox={sid} source=virtcontainers subsystem={rng.choice(subsystems)} "
                f'vmconsole="[ {n / 1000:.6f}] virtio_blk virtio{n % 8}: [vd{chr(97 + n % 26)}] {n * 512} 512-byte logical blocks"\n'
            )
        else:
            line = (
                f'time="2026-11-28T10:{n % 60:02d}:{n % 59:02d}.{n:06d}Z" level=info msg="container started" '
                f"id={rng.getrandbits(128):032x} namespace=k8s.io runtime=io.containerd.kata.v2 pid={n} sandbox={sid}\n"
            )
        if rng.random() < 0.001:
            line = line[:-1] + f' err="{rng.choice(_SECRETS)}"\n'
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()


def chunks(data: bytes, size: int = 1 << 20) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        end = data.find(b"\n", pos + size)
        end = len(data) if end < 0 else end + 1
        out.append(data[pos:end])
        pos = end
    return out


def load_redactor(rev: str) -> type:
    """The Redactor class of `rev` (the package's redact/ directory at that revision)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-redact-"))
    files = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", "--name-only", rev, "kata_debug/redact/"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    pkg = tmp / "oldredact"
    pkg.mkdir()
    for f in files:
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{f}"], check=True, capture_output=True).stdout
        (pkg / Path(f).name).write_bytes(src.replace(b"kata_debug.redact.", b"oldredact."))
    sys.path.insert(0, str(tmp))
    spec = importlib.util.find_spec("oldredact.redactor")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["oldredact.redactor"] = mod
    spec.loader.exec_module(mod)
    return mod.Redactor


def measure(make: Callable[[], object], parts: list[bytes], repeat: int) -> tuple[float, float, bytes]:
    """(wall MB/s, CPU MB/s, output): CPU time is the steadier figure on a shared machine."""
    size = sum(len(p) for p in parts)
    wall, cpu = [], []
    out = b""
    for _ in range(repeat):
        stream = make().stream()  # type: ignore[attr-defined]
        start, start_cpu = time.perf_counter(), time.process_time()
        out = b"".join(stream.feed(p) for p in parts)
        wall.append(size / (time.perf_counter() - start) / 1e6)
        cpu.append(size / max(1e-9, time.process_time() - start_cpu) / 1e6)
    return statistics.median(wall), statistics.median(cpu), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--base", default="main", help="git revision to compare with")
    ap.add_argument("--redact-config", metavar="FILE", help="also measure this tree with these operator rules")
    ap.add_argument(
        "--obfuscate-hosts",
        action="store_true",
        help="also measure redaction + pseudonyms (with --redact-config: with the rules too)",
    )
    args = ap.parse_args()
    parts = chunks(shim_log(args.mib))
    old = load_redactor(args.base)
    old_wall, old_cpu, _ = measure(old, parts, args.repeat)
    new_wall, new_cpu, out = measure(Redactor, parts, args.repeat)
    leaks = sum(out.count(s) for s in (b"hunter2", b"Rb0tPassw0rd", b"ghp_R8sJ", b"c2lnbmF0dXJl"))
    print(f"input: {args.mib} MiB shim-log-like text, 1 MiB chunks, median of {args.repeat}")
    print(f"redactor at {args.base}: {old_wall:7.1f} MB/s wall, {old_cpu:7.1f} MB/s per CPU-second")
    print(f"redactor here: {new_wall:7.1f} MB/s wall, {new_cpu:7.1f} MB/s per CPU-second (target >= 100)")
    print(f"planted secrets left in this tree's output: {leaks}")
    rules: UserRules | None = None
    if args.redact_config:
        rules = load_user_rules(args.redact_config)
        user_wall, user_cpu, _ = measure(lambda: Redactor(rules=rules), parts, args.repeat)
        print(
            f"redactor here + {len(rules.rules)} --redact-config rules: {user_wall:7.1f} MB/s wall, "
            f"{user_cpu:7.1f} MB/s per CPU-second"
        )
    if args.obfuscate_hosts:
        also = "" if rules is None else " + the rules"
        same_wall, same_cpu, _ = measure(
            lambda: Redactor(rules=rules, hosts=Obfuscator.new(["node-a1"])), parts, args.repeat
        )
        print(
            f"redactor{also} + --obfuscate-hosts, same text: {same_wall:7.1f} MB/s wall, {same_cpu:7.1f} MB/s per CPU-second"
        )
        # One line in 50 names the node and a peer address, as kubelet/CNI lines do.
        lines = b"".join(parts).split(b"\n")
        for i in range(0, len(lines), 50):
            lines[i] += b" peer=10.244.1.17:1024 host=node-a1.corp.example.com mac=52:54:00:ab:cd:ef"
        oparts = chunks(b"\n".join(lines))
        ob_wall, ob_cpu, _ = measure(
            lambda: Redactor(rules=rules, hosts=Obfuscator.new(["node-a1.corp.example.com"])), oparts, args.repeat
        )
        print(
            f"redactor{also} + --obfuscate-hosts, 1 line in 50 with an IP, a MAC and an FQDN: {ob_wall:7.1f} MB/s wall, {ob_cpu:7.1f} MB/s per CPU-second"
        )


if __name__ == "__main__":
    main()
