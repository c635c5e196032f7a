"""The container rootfs never reached the guest: one agent error, three causes.

`failed to mount /run/kata-containers/shared/containers/<id>/rootfs ... ENOENT` is a
Firecracker-without-devmapper problem with containerd, a containers/storage mount option
with CRI-O, and a snapshotter problem with guest-pull handlers; the CRI, the hypervisor and
the handler in the bundle decide which.
"""

from __future__ import annotations

import re

from kata_debug.analyze.analyzer import Analyzer
from kata_debug.analyze.base import Evidence, Finding, Signature
from kata_debug.analyze.common import DOCS, ISSUES, fact, finding, hypervisors, uses_crio
from kata_debug.analyze.evidence import EvidenceView

ENOENT = Signature.of(
    "rootfs.enoent",
    ("with error: ENOENT",),
    r"failed to mount \\*\"?/run/kata-containers/shared/containers/(?P<cid>[^/\"\\]+)/rootfs\\*\"? to \\*\"?/run/kata-containers/[^/\"\\]+/rootfs\\*\"?, with error: ENOENT",
)
UNPACK = Signature.of(
    "guestpull.unpack",
    ("failed to get reader from content store", "snapshotter not loaded: nydus"),
    r"error unpacking image: failed to extract layer sha256:[0-9a-f]{64}: failed to get reader from content store|snapshotter not loaded: nydus",
)
DEVMAPPER = Signature.of(
    "devmapper.error", ("snapshotter not loaded: devmapper",), r"snapshotter not loaded: devmapper"
)

_COCO = re.compile(r"coco|snp|tdx|sev|se\b|cca", re.IGNORECASE)
_SKIP_MOUNT_HOME = re.compile(r"""^\s*skip_mount_home\s*=\s*["']?true["']?""", re.MULTILINE)


class RootfsAnalyzer(Analyzer):
    name = "rootfs-sharing"
    causes = ("firecracker-needs-devmapper", "crio-skip-mount-home", "guest-pull-misconfigured")
    reads = ("kata-config/files/*", "host/files/etc/containers/*", "host/files/etc/crio/*")
    signatures = (ENOENT, UNPACK, DEVMAPPER)

    def analyze(self, view: EvidenceView) -> list[Finding]:
        enoent = view.matches(ENOENT.name)
        unpack = view.matches(UNPACK.name)
        out: list[Finding] = []
        guest_pull = self._guest_pull_facts(view)
        if unpack or (enoent and guest_pull):
            out.append(
                finding(
                    view,
                    "guest-pull-misconfigured",
                    "error",
                    "A guest-pull handler's image layers were handled by the wrong snapshotter on the host",
                    "Guest-pull (CoCo) handlers need containerd's nydus snapshotter for that runtime so layers are "
                    "pulled in the guest; the image was unpacked (or expected) on the host instead. Not "
                    "firecracker-needs-devmapper or crio-skip-mount-home: the handler is a guest-pull one.",
                    'Configure the guest-pull handler with the nydus snapshotter (snapshotter = "nydus" on that '
                    "containerd runtime, or kata-deploy's snapshotter/pull-type mappings) and remove images already "
                    "unpacked by overlayfs (crictl rmi) so they are pulled through nydus. Refs: "
                    f"{ISSUES}8407, {DOCS}how-to/how-to-pull-images-in-guest-with-kata.md",
                    unpack + enoent,
                    guest_pull,
                    confirmed=bool(guest_pull),
                )
            )
            return out
        if not enoent:
            return out
        if uses_crio(view):
            storage = self._storage_conf(view)
            facts: list[Evidence] = []
            confirmed = False
            if storage is not None:
                path, text = storage
                confirmed = _SKIP_MOUNT_HOME.search(text) is None
                facts.append(
                    fact(
                        view,
                        path,
                        "[storage.options.overlay] skip_mount_home not set to true"
                        if confirmed
                        else "skip_mount_home = true is set",
                    )
                )
            out.append(
                finding(
                    view,
                    "crio-skip-mount-home",
                    "error",
                    "CRI-O's storage keeps its mounts private, so the rootfs never reaches the Kata shim",
                    "Since Kata 3.3 the shim runs in its own mount namespace; containers/storage makes its overlay "
                    "home a private mount unless skip_mount_home = true, so the container rootfs is not shared "
                    "into the guest and the agent gets ENOENT. The CRI is CRI-O, so this is not "
                    "firecracker-needs-devmapper.",
                    'Set skip_mount_home = "true" under [storage.options.overlay] in /etc/containers/storage.conf '
                    f"and restart CRI-O. Refs: {ISSUES}9878, https://github.com/kata-containers/kata-containers/pull/10000",
                    enoent,
                    facts,
                    confirmed=confirmed,
                )
            )
        elif "firecracker" in hypervisors(view) or self._fc_handlers(view):
            block, facts = self._fc_snapshotters(view)
            if block:
                # Every Firecracker runtime already gets devmapper: the ENOENT has another cause.
                return out
            out.append(
                finding(
                    view,
                    "firecracker-needs-devmapper",
                    "error",
                    "Firecracker needs a block-device rootfs: the runtime's snapshotter is not devmapper",
                    "Firecracker has no shared file system, so Kata-fc needs the container rootfs as a block "
                    "device (containerd's devmapper snapshotter); with overlayfs nothing reaches the guest and the "
                    "agent gets ENOENT. The CRI is containerd and the hypervisor Firecracker, so this is not "
                    "crio-skip-mount-home.",
                    'Configure containerd\'s devmapper snapshotter (a thin pool) and set snapshotter = "devmapper" '
                    "on the kata-fc runtime (kata-deploy: SNAPSHOTTER_HANDLER_MAPPING). Refs: "
                    f"{ISSUES}6785, {ISSUES}8764, {DOCS}how-to/how-to-use-kata-containers-with-firecracker.md",
                    enoent + view.matches(DEVMAPPER.name),
                    [
                        fact(view, f"kata-config/files{p}", f"[hypervisor.{n}]")
                        for p, n, _ in view.hypervisor_sections()
                        if n == "firecracker"
                    ]
                    + facts,
                    confirmed="firecracker" in hypervisors(view) or bool(facts),
                )
            )
        return out

    def _fc_handlers(self, view: EvidenceView) -> list[dict[str, object]]:
        return [h for h in self._handlers(view) if h.get("kata") and "fc" in str(h.get("name"))]

    def _fc_snapshotters(self, view: EvidenceView) -> tuple[bool, list[Evidence]]:
        """(every Firecracker runtime uses devmapper and the plugin is configured, facts saying
        which runtime uses which snapshotter). Per-runtime `snapshotter` wins over the CRI default."""
        merged = [c for c in (view.facts.get("containerd") or {}).get("merged") or [] if isinstance(c, dict)]
        live = [c for c in merged if not c.get("template")]
        default = next((c.get("default_snapshotter") for c in live if c.get("default_snapshotter")), None)
        devmapper = any(c.get("devmapper") for c in live)
        facts: list[Evidence] = []
        block = bool(self._fc_handlers(view))
        for h in self._fc_handlers(view):
            snap = str(h.get("snapshotter") or default or "overlayfs")
            member = f"host/files{h.get('source')}"
            where = member if view.has(member) else "host/facts.json"
            if snap != "devmapper":
                block = False
                how = "" if h.get("snapshotter") else " (the CRI default: no per-runtime snapshotter)"
                facts.append(fact(view, where, f"runtimes.{h.get('name')} snapshotter = {snap}{how}"))
        if block and not devmapper:
            block = False
            facts.append(
                fact(
                    view,
                    "host/facts.json",
                    'snapshotter = "devmapper" but no [plugins."io.containerd.snapshotter.v1.devmapper"]',
                )
            )
        return block, facts

    @staticmethod
    def _handlers(view: EvidenceView) -> list[dict[str, object]]:
        return [h for h in (view.facts.get("containerd") or {}).get("runtime_handlers") or [] if isinstance(h, dict)]

    def _guest_pull_facts(self, view: EvidenceView) -> list[Evidence]:
        out = []
        for h in self._handlers(view):
            name = str(h.get("name"))
            if h.get("kata") and _COCO.search(name):
                snap = h.get("snapshotter")
                out.append(
                    fact(
                        view,
                        "host/facts.json",
                        f"containerd runtime handler {name} (guest-pull): snapshotter = {snap or 'the CRI default'}"
                        + ("" if snap == "nydus" else ", not nydus: its layers are unpacked on the host"),
                    )
                )
        for path, name, section in view.hypervisor_sections():
            if section.get("shared_fs") == "none" or (view.runtime_section().get("experimental_force_guest_pull")):
                out.append(fact(view, f"kata-config/files{path}", f"[hypervisor.{name}] shared_fs = none (guest pull)"))
        return out

    @staticmethod
    def _storage_conf(view: EvidenceView) -> tuple[str, str] | None:
        for path in ("host/files/etc/containers/storage.conf",):
            text = view.text(path)
            if text is not None:
                return view.shown(path), text
        return None
