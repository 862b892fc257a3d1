"""YAML that remembers where every key came from, across `extends:` chains.

`load_yaml` returns plain data plus a `Where` map from key paths (`("components", 1, "weight")`) to
`(file, line)`. `merge` deep-merges a child mixture over its parent and merges both maps, so an error in an
inherited field names the parent file and line.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from mixlab.errors import MixlabError


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e5` / `2e-3` as floats (YAML 1.1 wants a dot)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class Where:
    """Key path → (file, 1-based line)."""

    def __init__(self, lines: dict[tuple, tuple[str, int]] | None = None):
        self.lines = dict(lines or {})

    def of(self, path: Sequence[Any]) -> tuple[str, int] | None:
        path = tuple(path)
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]

    def prefix(self, path: Sequence[Any]) -> str:
        """`file:line` for the deepest existing node of `path`."""
        found = self.of(path)
        return f"{found[0]}:{found[1]}" if found else "<mixture>"


def _walk(node: yaml.Node, path: tuple, file: str, lines: dict) -> Any:
    lines.setdefault(path, (file, node.start_mark.line + 1))
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.load(yaml.serialize(key_node), Loader=_Loader)
            if key in out:
                raise MixlabError(f"{file}:{key_node.start_mark.line + 1}: duplicate key {key!r}")
            lines[path + (key,)] = (file, key_node.start_mark.line + 1)
            out[key] = _walk(value_node, path + (key,), file, lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(child, path + (i,), file, lines) for i, child in enumerate(node.value)]
    return yaml.load(yaml.serialize(node), Loader=_Loader)


def load_yaml(path: str | Path | None = None, *, text: str | None = None, where: str | None = None) -> tuple[Any, Where]:
    file = where or (str(path) if path is not None else "<string>")
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")  # type: ignore[arg-type]
        except FileNotFoundError:
            raise MixlabError(f"{file}: file not found") from None
        except IsADirectoryError:
            raise MixlabError(f"{file}: is a directory, expected a mixture YAML file") from None
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise MixlabError(f"{file}{line}: malformed YAML: {problem}") from None
    if node is None:
        return {}, Where({(): (file, 1)})
    lines: dict[tuple, tuple[str, int]] = {}
    return _walk(node, (), file, lines), Where(lines)


def _named_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value)


def merge(parent: Any, child: Any, parent_where: Where, child_where: Where) -> tuple[Any, Where]:
    """Deep-merge `child` over `parent`: mappings merge key by key; lists of named mappings (components,
    phases) merge by `name` (a child entry overrides or appends); other lists and scalars are replaced."""
    lines: dict[tuple, tuple[str, int]] = {}

    def go(p: Any, c: Any, path: tuple, p_path: tuple, c_path: tuple) -> Any:
        if isinstance(p, dict) and isinstance(c, dict):
            out = {}
            for key in list(p) + [k for k in c if k not in p]:
                if key in c and key in p:
                    out[key] = go(p[key], c[key], path + (key,), p_path + (key,), c_path + (key,))
                elif key in c:
                    out[key] = copy.deepcopy(c[key])
                    _copy_lines(child_where, c_path + (key,), path + (key,), lines)
                else:
                    out[key] = copy.deepcopy(p[key])
                    _copy_lines(parent_where, p_path + (key,), path + (key,), lines)
            _set(lines, path, child_where.of(c_path) or parent_where.of(p_path))
            return out
        if _named_list(p) and _named_list(c):
            out_list: list[Any] = []
            c_index = {v["name"]: i for i, v in enumerate(c)}
            for i, item in enumerate(p):
                j = c_index.pop(item["name"], None)
                k = len(out_list)
                if j is None:
                    out_list.append(copy.deepcopy(item))
                    _copy_lines(parent_where, p_path + (i,), path + (k,), lines)
                else:
                    out_list.append(go(item, c[j], path + (k,), p_path + (i,), c_path + (j,)))
            for name, j in sorted(c_index.items(), key=lambda kv: kv[1]):
                k = len(out_list)
                out_list.append(copy.deepcopy(c[j]))
                _copy_lines(child_where, c_path + (j,), path + (k,), lines)
            _set(lines, path, child_where.of(c_path))
            return out_list
        _copy_lines(child_where, c_path, path, lines)
        return copy.deepcopy(c)

    merged = go(parent, child, (), (), ())
    return merged, Where(lines)


def _set(lines: dict, path: tuple, value: tuple[str, int] | None) -> None:
    if value is not None:
        lines[path] = value


def _copy_lines(src: Where, src_path: tuple, dst_path: tuple, lines: dict) -> None:
    n = len(src_path)
    for key, value in src.lines.items():
        if key[:n] == src_path:
            lines[dst_path + key[n:]] = value
    if dst_path not in lines and src.of(src_path):
        lines[dst_path] = src.of(src_path)  # type: ignore[assignment]


def closest(name: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    match = closest(name, candidates)
    return f" (did you mean {match!r}?)" if match else ""
