"""Lay out the package as it is installed, for tools that walk directories.

pyproject maps `kata_debug.collectors` -> `collectors/` and `kata_debug.forwarder` ->
`forwarder/`. Python resolves that through setuptools' editable finder, but import-linter
(grimp) and mypy read the tree on disk and would see neither subpackage inside `kata_debug/`.
This copies the three folders into DEST/kata_debug the way `pip install .` arranges them,
so those tools check exactly what users import.

Usage: python3 scripts/stage_package.py DEST
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAPPED = {"collectors": "collectors", "forwarder": "forwarder"}


def stage(dest: Path) -> Path:
    pkg = dest / "kata_debug"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "kata_debug", pkg, ignore=ignore)
    for sub, folder in MAPPED.items():
        shutil.copytree(REPO / folder, pkg / sub, ignore=ignore)
    return pkg


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 scripts/stage_package.py DEST")
    print(stage(Path(sys.argv[1])))
