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
    """SafeLoader that also reads `1e5` / `2e-3` as floats (YAML 1.1 wants a dot) and refuses deep nesting
    while composing (the composer recurses once per level)."""

    _depth = 0

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise MixlabError(f"{self.name}:{mark.line + 1}: YAML nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


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


# Limits that keep hostile YAML bounded in time and memory. Registry files are a few KiB; these leave ample room.
MAX_BYTES = 2 * 1024 * 1024
MAX_NODES = 100_000  # nodes after alias expansion: an alias bomb ("billion laughs") is refused before it expands
MAX_DEPTH = 64  # nesting of mappings/sequences

# Only YAML's own standard tags are constructed; `!!python/...` and local `!tags` are refused.
_ALLOWED_TAGS = {
    f"tag:yaml.org,2002:{name}"
    for name in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp", "merge", "binary")
}


def read_yaml_text(path: str | Path, where: str | None = None) -> str:
    """Read a YAML file as UTF-8 text, refusing oversized files before parsing and naming the bad byte's line."""
    file = where or str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)  # bounded read: also safe on /dev/zero or a FIFO
    except FileNotFoundError:
        raise MixlabError(f"{file}: file not found") from None
    except IsADirectoryError:
        raise MixlabError(f"{file}: is a directory, expected a YAML file") from None
    except OSError as exc:
        raise MixlabError(f"{file}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise MixlabError(f"{file}: YAML file larger than {MAX_BYTES // (1024 * 1024)} MiB, refused before parsing")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise MixlabError(
            f"{file}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None


def _check_graph(root: yaml.Node, file: str) -> None:
    """Refuse unknown tags, deep nesting, recursive aliases and alias bombs, counting expanded size per shared node.

    Aliases make the composed graph a DAG whose expansion can be exponential; memoising each node's expanded
    size keeps this check linear in the (small) composed graph.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        line = node.start_mark.line + 1
        if node.tag not in _ALLOWED_TAGS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise MixlabError(f"{file}:{line}: YAML tag {tag} is not allowed (plain data only)")
        if depth > MAX_DEPTH:
            raise MixlabError(f"{file}:{line}: YAML nested deeper than {MAX_DEPTH} levels")
        if key in active:
            raise MixlabError(f"{file}:{line}: recursive YAML alias")
        total = 1
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            active.add(key)
            children = (
                [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
            )
            for child in children:
                total += size(child, depth + 1)
                if total > MAX_NODES:
                    raise MixlabError(
                        f"{file}:{line}: YAML expands to more than {MAX_NODES:,} nodes (alias bomb?), refused"
                    )
            active.discard(key)
        sizes[key] = total
        return total

    size(root, 0)


def _walk(node: yaml.Node, path: tuple, file: str, lines: dict, loader: _Loader) -> Any:
    lines.setdefault(path, (file, node.start_mark.line + 1))
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        merged: dict[Any, Any] = {}  # YAML 1.1 merge keys (`<<: *base`): explicit keys win over merged ones
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in sources:
                    if not isinstance(source, yaml.MappingNode):
                        raise MixlabError(f"{file}:{source.start_mark.line + 1}: '<<' merges mappings only")
                    for k, v in _walk(source, path, file, {}, loader).items():
                        merged.setdefault(k, v)
                continue
            key = _scalar(key_node, file, loader)
            try:
                hash(key)
            except TypeError:
                raise MixlabError(f"{file}:{key_node.start_mark.line + 1}: a mapping key must be a plain value") from None
            if key in out:
                raise MixlabError(f"{file}:{key_node.start_mark.line + 1}: duplicate key {key!r}")
            lines[path + (key,)] = (file, key_node.start_mark.line + 1)
            out[key] = _walk(value_node, path + (key,), file, lines, loader)
        for key, value in merged.items():
            if key not in out:
                lines.setdefault(path + (key,), lines[path])
                out[key] = value
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(child, path + (i,), file, lines, loader) for i, child in enumerate(node.value)]
    return _scalar(node, file, loader)


def _scalar(node: yaml.Node, file: str, loader: _Loader) -> Any:
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise MixlabError(f"{file}:{node.start_mark.line + 1}: bad YAML value: {problem}") from None


def load_yaml(path: str | Path | None = None, *, text: str | None = None, where: str | None = None) -> tuple[Any, Where]:
    file = where or (str(path) if path is not None else "<string>")
    if text is None:
        text = read_yaml_text(path, file)  # type: ignore[arg-type]
    elif len(text) > MAX_BYTES:
        raise MixlabError(f"{file}: YAML text larger than {MAX_BYTES // (1024 * 1024)} MiB, refused before parsing")
    loader = _Loader(text)
    loader.name = file
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise MixlabError(f"{file}{line}: malformed YAML: {problem}") from None
    except RecursionError:  # the composer recurses per nesting level
        raise MixlabError(f"{file}: YAML nested too deeply") from None
    finally:
        loader.dispose()
    if node is None:
        return {}, Where({(): (file, 1)})
    _check_graph(node, file)
    lines: dict[tuple, tuple[str, int]] = {}
    return _walk(node, (), file, lines, loader), Where(lines)


def closest(name: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    match = closest(name, candidates)
    return f" (did you mean {match!r}?)" if match else ""
