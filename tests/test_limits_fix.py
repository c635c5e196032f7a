"""`--fix` edits: the smallest text change that turns a request into a limit, verified, or nothing."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from kata_debug.sizing.fix import FileFix, fix_text
from kata_debug.sizing.inputs import parse_text
from kata_debug.sizing.limits import analyse
from tests.conftest import kata_debug


def fix(text: str, name: str = "m.yaml") -> FileFix:
    docs, err = parse_text(text, name, name)
    assert err is None
    report = analyse(docs)
    return fix_text(name, text, [(e.doc.index, f) for e in report.entries for f in e.findings if f.fix])


POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  runtimeClassName: kata
  containers:
  - name: a
    resources:
"""


def test_rename_keeps_everything_else_byte_for_byte() -> None:
    text = POD + '      "requests":   # sized for prod\n        cpu: "2"\n        memory: 1Gi # peak\n'
    f = fix(text)
    assert f.fixed == POD + '      limits:   # sized for prod\n        cpu: "2"\n        memory: 1Gi # peak\n'
    assert [x.resource for x in f.applied] == ["cpu", "memory"]


def test_moving_into_an_existing_limits_block_uses_its_indentation() -> None:
    text = (
        POD
        + "      limits:\n          memory: 1Gi\n      requests:\n        cpu: 500m  # burst\n        memory: 512Mi\n"
    )
    f = fix(text)
    assert f.fixed == POD + (
        "      limits:\n          memory: 1Gi\n          cpu: 500m  # burst\n      requests:\n        memory: 512Mi\n"
    )


def test_windows_line_endings_survive() -> None:
    text = (POD + "      requests:\n        cpu: 1\n        ephemeral-storage: 1Gi\n").replace("\n", "\r\n")
    f = fix(text)
    assert "\r\n      limits:\r\n        cpu: 1\r\n" in f.fixed
    assert "\n" not in f.fixed.replace("\r\n", "")


def test_only_the_document_with_the_finding_changes() -> None:
    svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s  # requests: none here\n"
    text = svc + "---\n" + POD + "      requests:\n        cpu: 1\n"
    f = fix(text)
    assert f.fixed == svc + "---\n" + POD + "      limits:\n        cpu: 1\n"
    assert f.diff().startswith("--- a/m.yaml\n+++ b/m.yaml\n")


def test_unsafe_shapes_are_skipped_with_a_reason() -> None:
    text = POD + "      limits:\n      requests:\n        cpu: 1\n"  # limits: null
    f = fix(text)
    assert not f.changed and "limits is empty" in f.skipped[0][1]
    inline = POD + "      requests: {cpu: 1}\n"
    f = fix(inline)
    assert not f.changed and "flow style" in f.skipped[0][1]


def test_json_manifests_are_reported_not_rewritten(tmp_path: Path) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {
            "runtimeClassName": "kata",
            "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "1"}}}],
        },
    }
    path = tmp_path / "p.json"
    path.write_text(json.dumps(pod, indent=2))
    res = kata_debug("limits", "--fix", str(path))
    assert path.read_text() == json.dumps(pod, indent=2)
    assert "JSON manifests are not rewritten by --fix" in res.stdout.decode() + res.stderr.decode()


def test_fixed_text_is_exactly_the_intended_data() -> None:
    text = POD + "      requests:\n        cpu: 1\n        memory: 64Mi\n      limits:\n        memory: 128Mi\n"
    f = fix(text)
    res = yaml.safe_load(f.fixed)["spec"]["containers"][0]["resources"]
    assert res == {"requests": {"memory": "64Mi"}, "limits": {"memory": "128Mi", "cpu": 1}}
