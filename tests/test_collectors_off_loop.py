"""Collectors and the cluster run never touch the filesystem on the event-loop thread.

A host root can be a slow or hung mount (NFS, a FUSE-backed `/host`, a wedged
`/run/vc`); a single `stat` on the loop would freeze every other collector, the progress
display and the deadline with it. So all filesystem calls made from collector code must
run in worker threads. The guard below wraps the calls pathlib and the collectors use and
records any made on the loop thread from a frame in `collectors/`, the host-root walker,
or (for `collect --cluster`, which streams many nodes to disk at once) the cluster, bundle
and Kubernetes client code.
"""

from __future__ import annotations

import builtins
import io
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kata_debug.cluster.options import ClusterOptions
from kata_debug.cluster.run import run_cluster_collection
from kata_debug.collect.runner import CollectOptions, run_collection
from kata_debug.collectors import REGISTRY
from tests.fake_kube_exec import ClusterFake
from tests.hostroots import kata_node
from tests.kata_cluster import build

_WATCHED = ("stat", "lstat", "listdir", "scandir", "readlink", "open", "replace", "rename", "unlink")
_OURS = (
    "/collectors/",
    "/kata_debug/node/hostroot.py",
    "/kata_debug/cluster/",
    "/kata_debug/bundle/",
    "/kata_debug/kube/",
)


def watch_loop_fs(
    monkeypatch: pytest.MonkeyPatch, ours: tuple[str, ...], loop_threads: tuple[str, ...] = ()
) -> list[str]:
    """Record filesystem calls made on this (the loop's) thread, or on a thread named in
    `loop_threads` (another event loop's, e.g. the node agent's `capture`), from a frame whose
    file path contains one of `ours`; the list fills as they happen. Other threads are not watched."""
    loop_thread = threading.get_ident()
    calls: list[str] = []

    def watch(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == loop_thread or threading.current_thread().name in loop_threads:
                frame = sys._getframe(1)  # no traceback module: it stats source files itself
                while frame is not None:
                    code = frame.f_code.co_filename
                    if code.startswith("<frozen importlib"):
                        break  # importing our own modules, not reading the node
                    if code.endswith(f"asyncio{os.sep}events.py"):
                        break  # a callback's start: below it is what runs the loop (a thread's entry), not a caller
                    if any(p in code for p in ours):
                        calls.append(f"{name}({args[0] if args else ''!s}) at {Path(code).name}:{frame.f_lineno}")
                        break
                    frame = frame.f_back
            return fn(*args, **kwargs)

        return guarded

    for name in _WATCHED:
        monkeypatch.setattr(os, name, watch(f"os.{name}", getattr(os, name)))
    monkeypatch.setattr(io, "open", watch("open", io.open))
    monkeypatch.setattr(builtins, "open", watch("open", builtins.open))
    return calls


@pytest.fixture
def loop_fs_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return watch_loop_fs(monkeypatch, _OURS)


async def test_every_collector_does_its_filesystem_work_in_worker_threads(
    tmp_path: Path, loop_fs_calls: list[str]
) -> None:
    root = kata_node(tmp_path / "host")
    result = await run_collection(
        CollectOptions(host_root=root, output=str(tmp_path / "b.tar.gz"), collectors=list(REGISTRY))
    )
    ran = {r.name for r in result.collectors if r.status in ("ok", "partial", "skipped")}
    assert {"host", "sandboxes", "kata-config", "oci-specs", "agent-traces"} <= ran, result.collectors
    assert loop_fs_calls == [], "\n".join(sorted(set(loop_fs_calls)))


async def test_a_cluster_run_does_its_filesystem_work_in_worker_threads(
    tmp_path: Path, loop_fs_calls: list[str]
) -> None:
    async with ClusterFake() as fake:
        build(fake, tmp_path, ["kata-a", "kata-b"])
        kubeconfig = fake.kubeconfig(tmp_path / "kubeconfig")
        loop_fs_calls.clear()  # the fake and its fixtures are not under test
        result = await run_cluster_collection(
            ClusterOptions(
                kubeconfig=str(kubeconfig),
                output=str(tmp_path / "cluster.tar.gz"),
                node_args=["--collector", "oci-specs"],
            )
        )
    assert [(n.name, n.status) for n in result.nodes] == [("kata-a", "ok"), ("kata-b", "ok")]
    assert (tmp_path / "cluster.tar.gz").is_file() and result.items_failed == []
    assert loop_fs_calls == [], "\n".join(sorted(set(loop_fs_calls)))
