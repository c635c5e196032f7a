"""The collector registry: names come from the classes, order is fixed, a broken module stays contained."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kata_debug.collect import runner
from kata_debug.collect.runner import CollectOptions, run_collection
from kata_debug.collectors import _CLASSES, REGISTRY, CollectorRegistry
from tests.bundles import read_bundle
from tests.hostroots import kata_node

ORDER = ["host", "kata-config", "oci-specs", "sandboxes", "resource-limits", "shim-logs", "agent-traces", "captures"]


def test_registry_is_keyed_by_each_class_name_in_bundle_order() -> None:
    assert list(REGISTRY) == ORDER
    assert [REGISTRY.load(name).name for name in REGISTRY] == ORDER
    assert "no-such" not in REGISTRY and len(REGISTRY) == len(ORDER)
    with pytest.raises(KeyError):
        REGISTRY.load("no-such")


def test_a_collector_is_named_after_its_module_so_a_broken_module_keeps_its_name() -> None:
    for ref in _CLASSES:
        module = ref.partition(":")[0]
        assert REGISTRY.load(module.replace("_", "-")).name == module.replace("_", "-"), ref


def test_a_class_named_otherwise_than_its_module_is_refused_when_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    from kata_debug.collectors import host, oci_specs

    monkeypatch.setattr(oci_specs, "Misnamed", host.HostCollector, raising=False)
    misnamed = CollectorRegistry(("host:HostCollector", "oci_specs:Misnamed"))
    assert list(misnamed) == ["host", "oci-specs"]
    with pytest.raises(TypeError, match="named 'host', not 'oci-specs'"):
        misnamed.load("oci-specs")


def test_listing_and_validating_names_imports_no_collector_module() -> None:
    """`collect -c shim-logs` must not pay start-up time for the other collectors' imports."""
    code = (
        "import sys\n"
        "from kata_debug.collectors import REGISTRY\n"
        "assert list(REGISTRY) and 'shim-logs' in REGISTRY and len(REGISTRY) == 8\n"
        "REGISTRY.load('host')\n"
        "print(sorted(m for m in sys.modules if m.startswith('kata_debug.collectors.') and m != 'kata_debug.collectors.base'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['kata_debug.collectors.host']"


async def test_a_collector_module_that_cannot_be_imported_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = CollectorRegistry(("host:HostCollector", "no_such_module:Gone", "oci_specs:OciSpecsCollector"))
    assert list(broken) == ["host", "no-such-module", "oci-specs"], "listed, under its module's name"
    monkeypatch.setattr(runner, "REGISTRY", broken)
    result = await run_collection(
        CollectOptions(host_root=kata_node(tmp_path / "host"), output=str(tmp_path / "b.tar"))
    )
    assert result.exit_code == 3
    manifest = read_bundle(tmp_path / "b.tar").manifest
    status = {c["name"]: (c["status"], c["error"]) for c in manifest["collectors"]}
    assert status["host"][0] == status["oci-specs"][0] == "ok"
    assert status["no-such-module"][0] == "failed"
    assert status["no-such-module"][1].startswith(
        "ModuleNotFoundError: No module named 'kata_debug.collectors.no_such_module'"
    )
