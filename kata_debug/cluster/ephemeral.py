"""Create, wait for and delete the short-lived collector pods of one cluster run.

A collector pod can root every node (hostPath, DAC_READ_SEARCH), so none may outlive the run
that made it: each is deleted in a `finally` that also runs on failure, timeout and Ctrl-C
(SIGINT/SIGTERM cancel the node workers, whose deletes are shielded from that cancellation),
and its name is chosen before the create is sent, so a create whose answer never arrived is
deleted too. What a run killed outright leaves behind is ended by the kubelet at the pod's
`activeDeadlineSeconds`, and deleted by the next run (`remove_leftovers`).
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kata_debug.cluster.collector_pod import (
    LEFTOVER_GRACE,
    RUN_LABEL,
    SELECTOR,
    active_deadline,
    collector_pod,
    pod_name,
)
from kata_debug.cluster.objects import name_of
from kata_debug.cluster.options import ClusterOptions
from kata_debug.kube.client import KubeError, KubeSession

#: Waiting reasons the kubelet does not recover from without a change: fail now, not at --pod-timeout.
FATAL_WAITING = frozenset(
    {
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "CrashLoopBackOff",
    }
)
POLL_FIRST, POLL_MAX = 0.2, 2.0
DELETE_TIMEOUT = 15.0


class PodStartError(Exception):
    """The collector pod could not be created or never ran; the message names the pod and why."""


@dataclass
class PodState:
    """What a pod's status says about whether the collection can start in it."""

    running: bool
    fatal: str | None  # it will never run: why
    why_not: str  # why it is not running yet (for the timeout message)


def _since_epoch(stamp: str) -> float | None:
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def pod_state(pod: dict[str, Any]) -> PodState:
    """Read a pod's phase, container states and scheduling condition like `kubectl describe`."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    containers = status.get("containerStatuses") or []
    if phase in ("Failed", "Succeeded"):
        detail = status.get("reason") or phase
        for c in containers:
            term = (c.get("state") or {}).get("terminated") or {}
            if term:
                detail = f"{detail}: container {term.get('reason') or 'terminated'} (exit {term.get('exitCode')})"
        message = status.get("message")
        return PodState(False, f"{detail}" + (f": {message}" if message else ""), phase)
    for c in containers:
        waiting = (c.get("state") or {}).get("waiting")
        if waiting:
            reason = waiting.get("reason") or "waiting"
            text = reason + (f": {waiting['message']}" if waiting.get("message") else "")
            return PodState(False, text if reason in FATAL_WAITING else None, text)
    if phase == "Running" and containers and all((c.get("state") or {}).get("running") for c in containers):
        return PodState(True, None, "Running")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return PodState(False, None, f"{cond.get('reason') or 'not scheduled'}: {cond.get('message') or ''}")
    return PodState(False, None, phase)


def _create_error(exc: KubeError, namespace: str) -> str:
    if exc.status == 403:
        return (
            f"cannot create pods in namespace {namespace} (HTTP 403: {exc.message}); "
            f"bind the Role kata-debug-ephemeral (deploy/ephemeral-rbac.yaml)"
        )
    if exc.status == 404:
        return f"namespace {namespace} not found (HTTP 404: {exc.message}); create it or pass --agent-namespace"
    return f"cannot create the collector pod: HTTP {exc.status}: {exc.message}" if exc.status else exc.message


class CollectorPods:
    """The collector pods of one run: one per node, each labelled with the run's id."""

    def __init__(self, session: KubeSession, opts: ClusterOptions) -> None:
        self.session = session
        self.opts = opts
        self.run_id = secrets.token_hex(3)
        self.deadline = active_deadline(opts.pod_timeout, opts.node_timeout)
        self.collection = f"/api/v1/namespaces/{opts.agent_namespace}/pods"

    def name(self, node: str) -> str:
        return pod_name(node, self.run_id)

    async def start(self, node: str) -> str:
        """Create the node's pod and wait until its container runs; returns its name.

        Raises PodStartError when it is refused, fails or is not running within
        --pod-timeout. The caller deletes the pod (`remove`) whatever happens.
        """
        body = collector_pod(node, self.opts.agent_namespace, self.opts.image, self.run_id, self.deadline)
        name = name_of(body)
        try:
            await self.session.create(self.collection, body)
        except KubeError as exc:
            raise PodStartError(_create_error(exc, self.opts.agent_namespace)) from None
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.opts.pod_timeout
        delay = POLL_FIRST
        why_not = "Pending"
        while True:
            try:
                pod = await self.session.get(f"{self.collection}/{name}")
            except KubeError as exc:
                if exc.status in (0, 401, 403, 404):
                    raise PodStartError(f"collector pod {name}: {exc.message}") from None
            else:
                state = pod_state(pod)
                if state.running:
                    return name
                if state.fatal is not None:
                    raise PodStartError(f"collector pod {name} cannot run: {state.fatal}")
                why_not = state.why_not
            left = give_up - loop.time()
            if left <= 0:
                raise PodStartError(
                    f"collector pod {name} not running within --pod-timeout {self.opts.pod_timeout:g}s ({why_not})"
                )
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, POLL_MAX)

    async def remove(self, name: str) -> str | None:
        """Delete a pod now (no grace period); returns why it failed, None when gone.

        Shielded: a cancelled caller (Ctrl-C) still waits for the delete to be sent.
        """
        task = asyncio.ensure_future(self._delete(name))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait([task], timeout=DELETE_TIMEOUT)
            raise

    async def _delete(self, name: str) -> str | None:
        try:
            await self.session.delete(f"{self.collection}/{name}", [("gracePeriodSeconds", 0)], timeout=DELETE_TIMEOUT)
        except KubeError as exc:
            if exc.status == 404:
                return None
            return f"HTTP {exc.status}: {exc.message}" if exc.status else exc.message
        return None

    async def remove_leftovers(self) -> tuple[list[str], str | None]:
        """Delete collector pods earlier runs left behind: (names deleted, why listing failed).

        Only pods that cannot belong to a run still in progress: finished ones, and ones older
        than their own deadline plus a grace period (the kubelet has ended them, or their node
        is gone). A concurrent run's pods are left alone.
        """
        try:
            pods = await self.session.list(self.collection, [("labelSelector", SELECTOR)])
        except KubeError as exc:
            return [], f"HTTP {exc.status}: {exc.message}" if exc.status else exc.message
        now = datetime.now(UTC).timestamp()
        stale: list[str] = []
        for pod in pods:
            meta = pod.get("metadata") or {}
            if (meta.get("labels") or {}).get(RUN_LABEL) == self.run_id:
                continue
            phase = (pod.get("status") or {}).get("phase")
            created = _since_epoch(str(meta.get("creationTimestamp") or ""))
            deadline = (pod.get("spec") or {}).get("activeDeadlineSeconds")
            expired = (
                created is not None
                and isinstance(deadline, int)
                and now > created + timedelta(seconds=deadline + LEFTOVER_GRACE).total_seconds()
            )
            if phase in ("Succeeded", "Failed") or expired:
                stale.append(name_of(pod))
        results = await asyncio.gather(*(self._delete(n) for n in stale))
        return [n for n, err in zip(stale, results) if err is None], None
