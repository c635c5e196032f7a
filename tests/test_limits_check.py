"""`check_limits`: the `kata-debug limits` pipeline as a library call, without the command line."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import yaml

from kata_debug.errors import UsageError
from kata_debug.sizing.check import LimitsRequest, check_limits
from kata_debug.sizing.fix_files import write_atomically
from tests.limits_helpers import BEFORE, FIX_FILES, container, pod


async def test_manifests_from_a_stream_are_analysed_without_touching_the_process_stdin() -> None:
    text = yaml.safe_dump(pod(container(requests={"cpu": "500m"})))
    result = await check_limits(LimitsRequest(paths=("-",)), stdin=io.BytesIO(text.encode()))
    assert result.fix is None and result.notes == []
    assert result.report.exit_code() == 1  # a request without a limit does not size the VM
    assert [e.name for e in result.report.entries if e.kata] == ["web"]


async def test_fix_rewrites_the_files_and_reports_what_they_now_say(tmp_path: Path) -> None:
    name = FIX_FILES[0]
    path = tmp_path / name
    shutil.copy(BEFORE / name, path)
    plain = tmp_path / "z-ok.yaml"
    plain.write_text(yaml.safe_dump(pod(container(limits={"cpu": "1"}), name="fine")))
    before = await check_limits(LimitsRequest(paths=(str(path), str(plain))))
    assert before.report.exit_code() == 1

    dry = await check_limits(LimitsRequest(paths=(str(path), str(plain)), fix=True, dry_run=True))
    assert dry.fix is not None and dry.fix.dry_run and dry.fix.applied >= 1
    assert path.read_text() == (BEFORE / name).read_text(), "a dry run writes nothing"
    assert dry.report.exit_code() == 1, "a dry run reports the files as they are"

    done = await check_limits(LimitsRequest(paths=(str(path), str(plain)), fix=True))
    assert done.fix is not None and done.fix.changed_files == 1
    assert path.read_text() == done.fix.files[0].fixed
    assert done.report.exit_code() == 0, "the report is recomputed from the rewritten file"
    assert [e.doc.path for e in done.report.entries][-1] == str(plain), "input order is kept"


async def test_no_readable_input_at_all_is_a_usage_error_not_an_empty_report(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"missing\.yaml: .*\(and 1 more input error\(s\)\)"):
        await check_limits(LimitsRequest(paths=(str(tmp_path / "missing.yaml"), str(tmp_path / "gone.yaml"))))


def test_a_failed_write_leaves_the_original_file_and_no_temporary_one(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("kind: Pod\n")
    with pytest.raises(UnicodeEncodeError):
        write_atomically(str(path), "kind: Pod\nname: \ud800\n")  # a lone surrogate cannot be written as UTF-8
    assert path.read_text() == "kind: Pod\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml"]
