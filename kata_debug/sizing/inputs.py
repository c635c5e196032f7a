"""Manifest input for `kata-debug limits`: files, directories, stdin -> documents.

Parsing uses PyYAML's C loader (the slowest part of a lint over thousands of manifests is
the YAML parser, so it must be the fast one); `--fix` re-reads the files it edits with the
round-trip loader. A file that does not parse is an input error naming the file and line;
the documents before the error are still analysed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from kata_debug.sizing.limits import Document, InputError

SUFFIXES = (".yaml", ".yml", ".json", ".yaml.in", ".yml.in")
STDIN = "-"

try:
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - libyaml is a declared expectation, not a requirement
    _Loader = yaml.SafeLoader


def expand(paths: list[str]) -> tuple[list[str], list[InputError]]:
    """Files to read, in order: given files as-is, directories walked (sorted, dot-dirs skipped)."""
    files: list[str] = []
    errors: list[InputError] = []
    for p in paths:
        if p == STDIN:
            files.append(p)
            continue
        path = Path(p)
        if path.is_dir():
            found: list[str] = []
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(os.path.join(root, n) for n in names if n.endswith(SUFFIXES))
            if not found:  # a typo'd or wrong directory must not pass as "no warnings"
                errors.append(InputError(p, f"no manifests in this directory ({', '.join(SUFFIXES)})"))
            files.extend(sorted(found))
        elif path.is_file():
            files.append(p)
        elif path.exists():
            errors.append(InputError(p, "not a regular file or directory"))
        else:
            errors.append(InputError(p, "no such file or directory"))
    return files, errors


def parse_text(text: str, name: str, path: str | None) -> tuple[list[Document], InputError | None]:
    """Documents of one YAML or JSON stream; `source` is `name`, or `name#i` for multi-document files."""
    raw: list[Any] = []
    error: InputError | None = None
    if name.endswith(".json"):
        try:
            raw = [json.loads(text)]
        except ValueError as exc:
            error = InputError(name, f"not valid JSON: {exc}")
    else:
        try:
            for doc in yaml.load_all(text, Loader=_Loader):
                raw.append(doc)
        except yaml.YAMLError as exc:
            error = InputError(name, f"not valid YAML: {_yaml_error(exc)}")
    present = [(i, d) for i, d in enumerate(raw) if d is not None]
    multi = len(present) > 1 or (error is not None and present)
    docs = [Document(f"{name}#{i}" if multi else name, path, i, d) for i, d in present]
    return docs, error


def _yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(problem)


def read_file(name: str, stdin: Any = None) -> tuple[list[Document], InputError | None]:
    """Read and parse one file (or stdin for `-`). Blocking."""
    try:
        if name == STDIN:
            data = stdin.read() if stdin is not None else b""
        else:
            with open(name, "rb") as fh:
                data = fh.read()
    except OSError as exc:
        return [], InputError(name, f"cannot read: {exc.strerror or exc}")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            return [], InputError(name, f"not UTF-8 text (byte {exc.start})")
    else:
        text = data
    return parse_text(text, name, None if name == STDIN else name)


def load(paths: list[str], stdin: Any = None) -> tuple[list[Document], list[InputError]]:
    """All documents of all inputs, and every input error (blocking; run it in a thread)."""
    files, errors = expand(paths)
    docs: list[Document] = []
    for f in files:
        got, err = read_file(f, stdin)
        docs.extend(got)
        if err is not None:
            errors.append(err)
    return docs, errors
