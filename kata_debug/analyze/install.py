"""Is Kata installed and wired up on this node at all, and was the bundle collected with enough rights?

These are the questions the end of `collect` used to answer with its own checklist; they
are findings now, so `collect`, `diagnose BUNDLE` and the HTML report give one answer, from
the bundle alone: the host collector records whether a Kata configuration exists, the
containerd handlers, and who collected (`host/facts.json`).

A node without Kata that runs no Kata pods is not broken, so `kata-not-installed` is a
warning that says so, and the host-capability findings stay silent there (they are about
nodes meant to run Kata).
"""

from __future__ import annotations

from typing import Any

from kata_debug.analyze.analyzer import Analyzer
from kata_debug.analyze.base import Evidence, Finding
from kata_debug.analyze.common import DOCS, ISSUES, containerd_handlers, fact, finding, uses_crio
from kata_debug.analyze.evidence import EvidenceView

_FACTS = "host/facts.json"
#: `cri-config`'s signatures for a CRI refusing a handler (matched for every analyzer).
CRI_HANDLER_SIGNATURES = ("handler.containerd", "handler.crio")
_SUMMARY = "kata-config/summary.json"
NO_CONFIG = (
    "no Kata configuration (configuration*.toml) in /etc/kata-containers, /usr/share/defaults/kata-containers "
    "or /opt/kata/share/defaults/kata-containers"
)

#: What a root run reads that another user usually cannot: said once, not per failed file.
ROOT_WOULD_ADD = (
    "run as root for a complete bundle: Kata runtime state (/run/vc, /run/kata), containerd task "
    "bundles (OCI specs), the shim monitor sockets, other users' qemu command lines (the VM sizes "
    "actually applied) and the system journal are readable only by root"
)

_INSTALL_FIX = (
    "If this node is not meant to run Kata, nothing is wrong: keep Kata pods off it (a nodeSelector or the "
    "RuntimeClass scheduling.nodeSelector). Otherwise install Kata (kata-deploy on Kubernetes, or the release "
    "packages) and check with `kata-runtime check`. "
    f"Refs: {DOCS}install/README.md, https://github.com/kata-containers/kata-containers/tree/main/tools/packaging/kata-deploy."
)
_HANDLER_FIX = (
    'Add a runtime for Kata to containerd\'s CRI plugin ([plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata] '
    'with runtime_type = "io.containerd.kata.v2"; version 3 configs use "io.containerd.cri.v1.runtime"), '
    "restart containerd, and make the RuntimeClass handler name that runtime. kata-deploy does this for you. "
    f"Refs: {ISSUES}10809, {DOCS}how-to/containerd-kata.md"
)


def kata_installed(view: EvidenceView) -> bool | None:
    """A Kata configuration exists on the node (True), none does (False), or the bundle cannot say (None).

    The host facts say it exactly (a file in the search paths, or one a handler names that
    exists); the kata-config summary answers for bundles collected without the host facts.
    """
    kata: Any = view.facts.get("kata")
    if isinstance(kata, dict):
        return bool(kata.get("config_in_effect") or kata.get("configs") or kata.get("handler_configs"))
    s = view.kata_summary
    if not s:
        return None
    return bool(s.get("in_effect") or s.get("found"))


class KataInstallAnalyzer(Analyzer):
    name = "kata-install"
    causes = ("kata-not-installed", "runtime-handler-missing", "collected-without-root")
    reads = ()

    def analyze(self, view: EvidenceView) -> list[Finding]:
        if view.cluster and not view.facts:
            return []
        found = [self._not_root(view)]
        installed = kata_installed(view)
        if installed is False:
            found.append(self._not_installed(view))
        elif installed:
            found.append(self._no_handler(view))
        return [f for f in found if f is not None]

    def _not_installed(self, view: EvidenceView) -> Finding:
        path = _SUMMARY if view.kata_summary else _FACTS
        lacks = [str(m) for m in view.facts.get("missing") or [] if str(m)]
        kata_handlers = [h.get("name") for h in containerd_handlers(view) if h.get("kata")]
        facts = [fact(view, path, NO_CONFIG)] + [fact(view, _FACTS, m) for m in lacks]
        if kata_handlers:
            title = (
                f"containerd has a Kata handler ({', '.join(map(str, kata_handlers))}) but Kata has no configuration "
                "here: every sandbox using it will fail"
            )
        else:
            title = "Kata Containers is not installed on this node"
        return finding(
            view,
            "kata-not-installed",
            "warning",
            title,
            "No Kata configuration file exists where Kata installs them or at a path a containerd handler names"
            + (", so the Kata shim cannot start a sandbox" if kata_handlers else "")
            + ". A node without Kata that runs no Kata pods is not broken: this only matters if Kata pods are meant "
            "to run here." + " Not hypervisor-asset-missing: there is no configuration whose paths could be wrong.",
            _INSTALL_FIX + (f" To run Kata, this node also lacks: {'; '.join(lacks)}." if lacks else ""),
            facts=facts,
            confirmed=True,
        )

    def _no_handler(self, view: EvidenceView) -> Finding | None:
        """Kata is installed but containerd cannot reach it: no sandbox failed yet, so a warning.

        When the CRI has already refused a handler, `cri-config` reports the error with the
        log lines; this one stays silent then (one cause, one finding).
        """
        if not view.facts.get("containerd") or uses_crio(view) or view.matches(*CRI_HANDLER_SIGNATURES):
            return None
        handlers = containerd_handlers(view)
        if any(h.get("kata") for h in handlers):
            return None
        configs = (view.facts.get("containerd") or {}).get("configs") or []
        evidence: list[Evidence] = [
            fact(view, _FACTS, "no Kata runtime handler in the containerd config"),
            fact(
                view,
                _FACTS,
                f"containerd configs read: {', '.join(configs)}"
                if configs
                else "no containerd config file on the node",
            ),
        ]
        return finding(
            view,
            "runtime-handler-missing",
            "warning",
            "Kata is installed but containerd has no Kata runtime handler: Kata pods cannot start on this node",
            "A Kata configuration exists, but none of containerd's CRI runtimes is Kata (runtime_type "
            "io.containerd.kata.v2), so a RuntimeClass naming a Kata handler is refused with `no runtime for ... is "
            "configured`. No such failure is in the logs yet. Not shim-not-found: containerd never gets as far as "
            "looking for the shim.",
            _HANDLER_FIX,
            facts=evidence,
            confirmed=True,
        )

    def _not_root(self, view: EvidenceView) -> Finding | None:
        run: Any = view.facts.get("collection")
        if not isinstance(run, dict) or run.get("euid") in (0, None) or run.get("host_root_is_slash") is not True:
            return None
        return finding(
            view,
            "collected-without-root",
            "info",
            "Collected without root: root-only evidence is missing from this bundle",
            "The collection ran on the node itself as user id "
            f"{run.get('euid')}; what only root can read is absent, so a finding that needs it may be missing too. "
            "A copied host root (--host-root DIR) is read as it is and is not affected.",
            ROOT_WOULD_ADD,
            facts=[fact(view, _FACTS, f"collected by user id {run.get('euid')} with --host-root /")],
            confirmed=True,
        )
