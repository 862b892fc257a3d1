"""`extends:` support for mixtures: deep-merge a child mixture over its parent, keeping where each key came from,
so an error in an inherited field names the parent file and line. Loading lives in `mixlab.yamlio`.
"""

from __future__ import annotations

import copy
from typing import Any

from mixlab.yamlio import Where


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
