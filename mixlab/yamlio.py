"""YAML that remembers where every key came from, so schema errors name file, line and field.

`load_yaml` returns plain data plus a `Where` map from key paths (`("components", 1, "weight")`, as pydantic
reports error locations) to `(file, line)`. Mixtures and recipes both load their YAML through here.
"""

from __future__ import annotations

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

    def line(self, path: Sequence[Any]) -> int | None:
        """1-based line of the deepest existing node of `path`."""
        found = self.of(path)
        return found[1] if found else None

    def prefix(self, path: Sequence[Any]) -> str:
        """`file:line` for the deepest existing node of `path`."""
        found = self.of(path)
        return f"{found[0]}:{found[1]}" if found else "<yaml>"


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
            raise MixlabError(f"{file}: is a directory, expected a YAML file") from None
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


def closest(name: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    match = closest(name, candidates)
    return f" (did you mean {match!r}?)" if match else ""
