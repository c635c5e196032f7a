"""The collector registry: names come from the classes, order is fixed, a broken module stays contained."""

from __future__ import annotations

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
        assert module.replace("_", "-") in REGISTRY, f"{ref}: class name differs from its module name"


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
