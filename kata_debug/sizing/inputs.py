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
    _Base: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - libyaml is a declared expectation, not a requirement
    _Base = yaml.SafeLoader


class _Loader(_Base):
    """The fast safe loader, noting keys given twice in one mapping.

    YAML loaders keep the last of two equal keys without a word, but kubectl's strict field
    validation refuses the object, so a lint must say so. The check costs one length
    comparison per mapping; only a mapping that lost keys is searched for the culprit.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        if len(mapping) != len(node.value):
            seen: set[Any] = set()
            for k, _v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else None
                if key is not None and key in seen:
                    self.duplicates.append(f"key {key!r} (line {k.start_mark.line + 1})")
                seen.add(key)
        return mapping


def _json_pairs(dups: list[str]) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            seen: set[str] = set()
            for k, _v in pairs:
                if k in seen:
                    dups.append(f"key {k!r}")
                seen.add(k)
        return out

    return hook


def is_object(doc: Any) -> bool:
    """A Kubernetes object (or List of them): a mapping naming its `kind`."""
    return isinstance(doc, dict) and isinstance(doc.get("kind"), str)


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
    raw: list[tuple[Any, list[str]]] = []
    error: InputError | None = None
    if name.endswith(".json"):
        dups: list[str] = []
        try:
            raw = [(json.loads(text, object_pairs_hook=_json_pairs(dups)), dups)]
        except ValueError as exc:
            error = InputError(name, f"not valid JSON: {exc}")
    else:
        loader = _Loader(text)
        try:
            while loader.check_data():
                loader.duplicates = []
                doc = loader.get_data()
                raw.append((doc, loader.duplicates))
        except yaml.YAMLError as exc:
            error = InputError(name, f"not valid YAML: {_yaml_error(exc)}")
        finally:
            loader.dispose()
    present = [(i, d, dups) for i, (d, dups) in enumerate(raw) if d is not None]
    multi = len(present) > 1 or (error is not None and present)
    docs = [Document(f"{name}#{i}" if multi else name, path, i, d, dups) for i, d, dups in present]
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


NO_OBJECTS = "holds no Kubernetes objects (no YAML/JSON mapping with a 'kind')"


def load(paths: list[str], stdin: Any = None) -> tuple[list[Document], list[InputError]]:
    """All documents of all inputs, and every input error (blocking; run it in a thread).

    A file named on the command line (or stdin) that parses but holds no Kubernetes object
    is an input error: `/etc/passwd` is one YAML string, and the empty stdin of a failed
    `helm template ... |` is no documents at all; neither may pass a lint as "nothing to
    report". Files found by walking a directory may hold other YAML (chart values).
    """
    files, errors = expand(paths)
    named = {p for p in paths if p == STDIN or not Path(p).is_dir()}
    docs: list[Document] = []
    for f in files:
        got, err = read_file(f, stdin)
        if err is not None:
            errors.append(err)
        elif f in named and not any(is_object(d.obj) for d in got):
            errors.append(InputError("stdin" if f == STDIN else f, NO_OBJECTS if got else f"empty: {NO_OBJECTS}"))
            continue
        docs.extend(got)
    if docs and not any(is_object(d.obj) for d in docs):
        if not errors:
            errors.append(InputError(", ".join(paths), NO_OBJECTS))
        docs = []  # nothing to analyse: check_limits reports the error alone
    return docs, errors
