"""What `pip install .` puts into site-packages: one import name and every subpackage.

`collectors/` and `forwarder/` are top-level folders of the repository but must install as
`kata_debug.collectors` and `kata_debug.forwarder`: PyPI has unrelated `collectors` and
`forwarder` distributions, so generic top-level names would collide.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from tests.conftest import REPO

_PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
_SETUPTOOLS = _PYPROJECT["tool"]["setuptools"]


def _packages_on_disk() -> set[str]:
    """Every folder with an `__init__.py`, named as pyproject's package-dir maps it."""
    roots = {"kata_debug": REPO / "kata_debug"}
    roots.update({name: REPO / folder for name, folder in _SETUPTOOLS["package-dir"].items()})
    found = set()
    for name, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            found.add(".".join((name, *rel)))
    return found


def test_every_package_folder_is_listed_for_installation() -> None:
    assert set(_SETUPTOOLS["packages"]) == _packages_on_disk()


def test_the_wheel_has_one_top_level_import_name(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("kata_debug-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"kata_debug"}
    assert "kata_debug/collectors/base.py" in names and "kata_debug/forwarder/spans.py" in names
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["kata_debug"]
