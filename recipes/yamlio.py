"""YAML loading that remembers where every key came from, so schema errors can name file, line and field.

pydantic reports an error location as a tuple path (`("stages", 1, "args", "learnig_rate")`); `LineMap` maps such a
path to the 1-based line of the deepest node that exists in the file.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from mixlab.errors import MixlabError


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `2e-3` / `1e5` as floats (YAML 1.1 wants a dot; every recipe author writes 2e-3)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class LineMap:
    def __init__(self, lines: dict[tuple, int]):
        self._lines = lines

    def line(self, path: Sequence[Any]) -> int | None:
        path = tuple(path)
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return self._lines.get(())


def _walk(node: yaml.Node, path: tuple, lines: dict[tuple, int]) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = yaml.load(yaml.serialize(key_node), Loader=_Loader)
            lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _walk(value_node, path + (key,), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(child, path + (i,), lines) for i, child in enumerate(node.value)]
    # Scalars: let the safe loader resolve types (ints, floats like 2e-3, bools, null).
    return yaml.load(yaml.serialize(node), Loader=_Loader)


def load_yaml(path: str | Path | None = None, *, text: str | None = None) -> tuple[Any, LineMap]:
    """Parse YAML text or a file into plain Python data plus a `LineMap`."""
    where = str(path) if path is not None else "<string>"
    if text is None:
        try:
            text = Path(path).read_text()  # type: ignore[arg-type]
        except FileNotFoundError:
            raise MixlabError(f"{where}: file not found") from None
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise MixlabError(f"{where}{line}: malformed YAML: {problem}") from None
    if node is None:
        return {}, LineMap({})
    lines: dict[tuple, int] = {}
    data = _walk(node, (), lines)
    return data, LineMap(lines)


def closest(name: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    match = closest(name, candidates)
    return f" (did you mean {match!r}?)" if match else ""
