"""`kata-debug limits --fix`: turn requests that do nothing into limits, in place.

Re-dumping a YAML document, even with ruamel's round-trip mode, re-indents sequences,
reflows flow lists and can drop comments before `---`; a fixer that rewrites whole
files produces diffs nobody wants to review. So the round-trip loader is used only to
*locate* nodes (line and column of every key), and the fix is a minimal text edit: rename
the key (`requests:` -> `limits:`) when everything under it moves, otherwise move single
lines into the target mapping with its indentation. Comments, order, quoting and the rest
of the file stay byte-for-byte. Every edited file is re-parsed and compared with the
intended change before it is written; anything else is skipped with a reason.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError as RuamelError

from kata_debug.sizing.limits import Finding, FixTarget

_PLAIN = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class FixError(Exception):
    """This target cannot be edited safely; the message says why."""


@dataclass
class FileFix:
    """One file's fix: its text before and after, and which findings were or were not applied."""

    path: str
    original: str
    fixed: str
    applied: list[Finding] = field(default_factory=list)
    skipped: list[tuple[Finding, str]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.fixed != self.original

    def diff(self) -> str:
        return "".join(
            difflib.unified_diff(
                self.original.splitlines(keepends=True),
                self.fixed.splitlines(keepends=True),
                fromfile=f"a/{self.path}",
                tofile=f"b/{self.path}",
            )
        )

    def to_json(self) -> dict[str, Any]:
        """The `--format json` form: what changed, what was skipped and why, and the diff."""
        return {
            "path": self.path,
            "changed": self.changed,
            "applied": [{"rule": x.rule, "container": x.container, "resource": x.resource} for x in self.applied],
            "skipped": [
                {"rule": x.rule, "container": x.container, "resource": x.resource, "reason": why}
                for x, why in self.skipped
            ],
            "diff": self.diff(),
        }


def _rt_docs(text: str) -> list[Any]:
    y = YAML(typ="rt")
    try:
        return list(y.load_all(text))
    except RuamelError as exc:
        raise FixError(f"the round-trip parser cannot read the file: {str(exc).splitlines()[0]}") from None


def _walk(node: Any, path: tuple[str | int, ...]) -> Any:
    for p in path:
        try:
            node = node[p]
        except (KeyError, IndexError, TypeError):
            raise FixError(f"{'.'.join(map(str, path))} not found") from None
    return node


def _plain_move(doc: Any, t: FixTarget) -> None:
    """The intended change, applied to plain data: what the edited file must parse to."""
    m = doc
    for p in t.path:
        m = m[p]
    src = m[t.source_key]
    value = src.pop(t.resource)
    if t.target_key not in m or m[t.target_key] is None:
        # Keep key order like the text edit does: a rename keeps the position.
        m[t.target_key] = {}
    m[t.target_key][t.resource] = value
    if not src:
        del m[t.source_key]


def _line_key_token(line: str, col: int, key: str) -> tuple[int, int]:
    """Span of `key` (plain or quoted) starting at `col` on a line."""
    for token in (key, f'"{key}"', f"'{key}'"):
        if line.startswith(token, col):
            return col, col + len(token)
    raise FixError(f"cannot find key {key!r} at column {col + 1}")


def _edit(text: str, doc_index: int, targets: list[FixTarget]) -> str:
    """Apply the targets that share one mapping (same path and keys) as one text edit."""
    docs = _rt_docs(text)
    if doc_index >= len(docs):
        raise FixError("document not found")
    t0 = targets[0]
    m = _walk(docs[doc_index], t0.path)
    if not isinstance(m, CommentedMap):
        raise FixError(f"{t0.path[-1]} is not a mapping")
    src = m.get(t0.source_key)
    if not isinstance(src, CommentedMap) or not src:
        raise FixError(f"{t0.source_key} is not a non-empty mapping")
    if src.fa.flow_style():
        raise FixError(f"{t0.source_key} is written in flow style ({{...}}); edit it by hand")
    moving = [t.resource for t in targets if t.resource in src]
    if not moving:
        raise FixError("nothing left to move")
    lines = text.splitlines(keepends=True)
    tgt = m.get(t0.target_key)
    if t0.target_key in m and not isinstance(tgt, CommentedMap):
        raise FixError(f"{t0.target_key} is empty or not a mapping; edit it by hand")
    if t0.target_key not in m and set(moving) == set(src.keys()):
        line, col = m.lc.key(t0.source_key)
        a, b = _line_key_token(lines[line], col, t0.source_key)
        lines[line] = lines[line][:a] + t0.target_key + lines[line][b:]
        return "".join(lines)
    if tgt is not None and (not isinstance(tgt, CommentedMap) or not tgt or tgt.fa.flow_style()):
        raise FixError(f"{t0.target_key} is empty or written in flow style; edit it by hand")
    for r in moving:
        if isinstance(src[r], (dict, list)) or src.lc.value(r)[0] != src.lc.key(r)[0]:
            raise FixError(f"{t0.source_key}.{r} does not fit on one line")
    moved_lines = {src.lc.key(r)[0] for r in moving}
    entry_col = src.lc.key(next(iter(src)))[1]
    delete = set(moved_lines)
    if len(moving) == len(src):
        key_line = m.lc.key(t0.source_key)[0]
        if key_line in {src.lc.key(k)[0] for k in src}:
            raise FixError(f"{t0.source_key} shares a line with its entries")
        delete.add(key_line)
    if tgt is not None:
        after = max(tgt.lc.key(k)[0] for k in tgt)
        col = tgt.lc.key(next(iter(tgt)))[1]
        new = [" " * col + lines[i].lstrip(" ") for i in sorted(moved_lines)]
    else:
        after = max(src.lc.key(k)[0] for k in src)
        key_line, key_col = m.lc.key(t0.source_key)
        eol = "\r\n" if lines[key_line].endswith("\r\n") else "\n"
        new = [" " * key_col + t0.target_key + ":" + eol]
        new += [" " * entry_col + lines[i].lstrip(" ") for i in sorted(moved_lines)]
    new = [n if n.endswith("\n") else n + "\n" for n in new]
    out: list[str] = []
    for i, line in enumerate(lines):
        if i not in delete:
            out.append(line if line.endswith("\n") or i != after else line + "\n")
        if i == after:
            out.extend(new)
    return "".join(out)


def fix_text(path: str, text: str, items: list[tuple[int, Finding]]) -> FileFix:
    """Apply every fixable finding of one file; each group is verified before it is kept."""
    result = FileFix(path=path, original=text, fixed=text)
    if path.endswith(".json") or text.lstrip().startswith(("{", "[")):
        # Only YAML is edited in place (comments, order and layout kept); rewriting JSON
        # would reformat the whole file.
        result.skipped.extend(
            (f, "JSON manifests are not rewritten by --fix (YAML only); edit it by hand")
            for _i, f in items
            if f.fix is not None
        )
        return result
    groups: dict[tuple[int, tuple[str | int, ...], str, str], list[tuple[Finding, FixTarget]]] = {}
    for doc_index, f in items:
        if f.fix is None:
            continue
        key = (doc_index, f.fix.path, f.fix.source_key, f.fix.target_key)
        groups.setdefault(key, []).append((f, f.fix))
    current = text
    for (doc_index, _p, _s, _t), members in groups.items():
        targets = [t for _f, t in members]
        try:
            candidate = _edit(current, doc_index, targets)
            _verify(current, candidate, doc_index, targets)
        except FixError as exc:
            result.skipped.extend((f, str(exc)) for f, _t in members)
            continue
        current = candidate
        result.applied.extend(f for f, _t in members)
    result.fixed = current
    return result


def _verify(before: str, after: str, doc_index: int, targets: list[FixTarget]) -> None:
    """The edited text must parse to exactly the intended data, and nothing else may change."""
    try:
        want = list(yaml.load_all(before, Loader=_PLAIN))
        got = list(yaml.load_all(after, Loader=_PLAIN))
        for t in targets:
            _plain_move(want[doc_index], t)
    except (yaml.YAMLError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise FixError(f"the edit does not verify: {exc}") from None
    if got != want:
        raise FixError("the edit does not verify (the result differs from the intended change)")
