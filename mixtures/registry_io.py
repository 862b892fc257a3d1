"""Find mixture YAML files (registry name or path), resolve `extends:` chains, validate.

A child file deep-merges over its parent (see `extends.merge`): `components` and `phases` merge by `name`, so a
variant that only changes a weight is a few lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mixlab.errors import MixlabError
from mixlab.mixtures.schema import MixtureSpec, parse_mixture
from mixlab.mixtures.extends import merge
from mixlab.yamlio import Where, did_you_mean, load_yaml

REGISTRY_DIR = Path(__file__).resolve().parent / "registry"


@dataclass
class LoadedMixture:
    spec: MixtureSpec
    data: dict[str, Any]  # the merged YAML data
    where: Where
    path: Path  # the file named by the user
    files: list[Path] = field(default_factory=list)  # the file and its ancestors, child first

    @property
    def yaml_text(self) -> str:
        return yaml.safe_dump(self.data, sort_keys=False)


def registry_files() -> dict[str, Path]:
    files = {}
    for path in sorted(REGISTRY_DIR.glob("*.y*ml")):
        files[path.stem] = path
    return files


def resolve_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    text = str(name_or_path)
    candidate = Path(text)
    if text.endswith((".yaml", ".yml")) or candidate.is_file() or "/" in text:
        if not candidate.is_absolute() and relative_to is not None and (relative_to / candidate).exists():
            candidate = relative_to / candidate
        if not candidate.is_file():
            raise MixlabError(f"mixture file {text} not found")
        return candidate.resolve()
    files = registry_files()
    if text in files:
        return files[text]
    raise MixlabError(f"unknown mixture {text!r}{did_you_mean(text, files)}; known: {sorted(files)}")


def _load_raw(name_or_path: str | Path, relative_to: Path | None, chain: list[Path]) -> tuple[dict, Where, list[Path]]:
    path = resolve_path(name_or_path, relative_to)
    if path in chain:
        raise MixlabError(f"{path}: `extends` cycle: {' -> '.join(str(p) for p in chain + [path])}")
    data, where = load_yaml(path)
    if not isinstance(data, dict):
        raise MixlabError(f"{path}:1: a mixture file must be a mapping with name, budget and components")
    parent_name = data.get("extends")
    if parent_name is None:
        return data, where, [path]
    if not isinstance(parent_name, str):
        raise MixlabError(f"{where.prefix(('extends',))}: extends: expected a mixture name or path")
    if "name" not in data:
        raise MixlabError(f"{path}:1: name: required field missing (a variant needs its own name)")
    try:
        parent, parent_where, parent_files = _load_raw(parent_name, path.parent, chain + [path])
    except MixlabError as exc:
        if str(exc).startswith("unknown mixture") or str(exc).startswith("mixture file"):
            raise MixlabError(f"{where.prefix(('extends',))}: extends: {exc}") from None
        raise
    merged, merged_where = merge(parent, data, parent_where, where)
    return merged, merged_where, [path] + parent_files


def load_mixture(name_or_path: str | Path) -> LoadedMixture:
    data, where, files = _load_raw(name_or_path, None, [])
    spec = parse_mixture(data, where)
    return LoadedMixture(spec=spec, data=data, where=where, path=files[0], files=files)


def list_mixtures() -> list[LoadedMixture | tuple[Path, str]]:
    """Every registry mixture, or (path, error) for files that do not validate."""
    out: list[LoadedMixture | tuple[Path, str]] = []
    for path in registry_files().values():
        try:
            out.append(load_mixture(path))
        except MixlabError as exc:
            out.append((path, str(exc)))
    return out


def component_weights(name_or_path: str | Path) -> list[tuple[str, float]]:
    """Top-level components and their normalised weights (what a Dirichlet sweep resamples)."""
    spec = load_mixture(name_or_path).spec
    total = sum(c.weight for c in spec.components)
    return [(c.name, c.weight / total) for c in spec.components]


def write_variant(base: str | Path, name: str, weights: dict[str, float], out_dir: str | Path) -> Path:
    """Write a variant of `base` that only changes top-level component weights; returns its path."""
    loaded = load_mixture(base)
    known = [c.name for c in loaded.spec.components]
    for key in weights:
        if key not in known:
            raise MixlabError(f"write_variant: {key!r} is not a top-level component of {base}{did_you_mean(key, known)}")
    doc = {
        "name": name,
        "extends": str(loaded.path),
        "components": [{"name": k, "weight": float(v)} for k, v in weights.items()],
    }
    out = Path(out_dir) / f"{name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(out)
    load_mixture(out)  # validate what we wrote
    return out
