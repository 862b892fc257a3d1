"""Source resolution and reading: local files/globs under the data root, Hugging Face hub datasets (revision
pinned), mixlab's procedural generators.

`resolve` is cheap (file checksums, pinned revision, generator parameters) and gives the content hash that
enters the mixture id; `read` parses rows only when the build is not a cache hit.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mixlab.errors import MixlabError
from mixlab.evals.procedural import generate
from mixlab.jsonl import iter_jsonl, open_text
from mixlab.mixtures.schema import SourceSpec


@dataclass
class ResolvedSource:
    origin: str  # local | hub | procedural
    uri: str
    revision: str
    content_hash: str
    files: list[dict[str, str]] = field(default_factory=list)  # [{"path", "sha256"}] for local sources
    params: dict[str, Any] = field(default_factory=dict)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=1)
def procedural_version() -> str:
    """Hash of the procedural generators' source: a generator change changes every procedural mixture id."""
    folder = Path(__import__("mixlab.evals.procedural", fromlist=["x"]).__file__).parent
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"


def resolve(spec: SourceSpec, *, data_root: Path | None, yaml_dir: Path, seed: int, n: int | None) -> ResolvedSource:
    if spec.origin == "local":
        return _resolve_local(spec, data_root, yaml_dir)
    if spec.origin == "hub":
        return _resolve_hub(spec)
    params = {"kind": spec.procedural, "split": spec.split or "train", "level": spec.level,
              "seed": spec.seed if spec.seed is not None else seed, "n": n}
    version = procedural_version()
    uri = "procedural://{kind}?split={split}&level={level}&seed={seed}&n={n}".format(**params)
    content = hashlib.sha256(f"{uri}|{version}".encode()).hexdigest()
    return ResolvedSource("procedural", uri, version, content, params=params)


def _resolve_local(spec: SourceSpec, data_root: Path | None, yaml_dir: Path) -> ResolvedSource:
    pattern = spec.local or ""
    bases = [Path(pattern)] if Path(pattern).is_absolute() else (
        [data_root / pattern] if data_root is not None else []) + [yaml_dir / pattern]
    matches: list[Path] = []
    for base in bases:
        matches = sorted(Path(p) for p in glob.glob(str(base), recursive=True) if Path(p).is_file())
        if matches:
            break
    if not matches:
        looked = ", ".join(str(b) for b in bases)
        hint = "" if data_root is not None else " (no data root: pass --data-root or set MIXLAB_DATA)"
        raise MixlabError(f"local: no file matches {pattern!r} (looked at {looked}){hint}")
    files = []
    h = hashlib.sha256()
    for path in matches:
        digest = _sha256_file(path)
        rel = _relative(path, data_root)
        files.append({"path": rel, "sha256": digest, "abs": str(path)})
        h.update(f"{rel}\0{digest}\n".encode())
    content = h.hexdigest()
    return ResolvedSource("local", f"local://{pattern}", f"sha256:{content[:16]}", content, files=files,
                          params={"format": spec.format})


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(path.resolve().relative_to(Path(root).resolve()))
        except ValueError:
            pass
    return str(path)


def _resolve_hub(spec: SourceSpec) -> ResolvedSource:
    name, config, split = spec.hub, spec.config, spec.split or "train"
    if _offline():
        raise MixlabError(
            f"hub: dataset {name!r} needs the network, but HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set; "
            f"save it as a local file under the data root and use `local:` instead"
        )
    revision = spec.revision
    if revision is None:
        try:
            from huggingface_hub import HfApi

            revision = HfApi().dataset_info(name).sha
        except Exception as exc:  # noqa: BLE001 - any hub failure is one clear message
            raise MixlabError(f"hub: cannot resolve a revision for {name!r}: {type(exc).__name__}: {exc}") from None
    uri = f"hf://datasets/{name}" + (f"/{config}" if config else "") + f"?split={split}"
    content = hashlib.sha256(f"{uri}@{revision}".encode()).hexdigest()
    return ResolvedSource("hub", uri, str(revision), content, params={"name": name, "config": config, "split": split})


# ---------------------------------------------------------------------------------------------------------------
# Reading rows


def read(resolved: ResolvedSource) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, where) where `where[i]` says which file/line row i came from (for error messages)."""
    if resolved.origin == "procedural":
        p = resolved.params
        rows = generate(p["kind"], p["split"], p["n"], seed=p["seed"], level=p["level"])
        return rows, [f"{resolved.uri} item {i}" for i in range(len(rows))]
    if resolved.origin == "hub":
        import datasets  # heavy (~2 s); only hub sources need it

        p = resolved.params
        try:
            ds = datasets.load_dataset(p["name"], p["config"], split=p["split"], revision=resolved.revision)
        except Exception as exc:  # noqa: BLE001
            raise MixlabError(f"hub: loading {p['name']!r} failed: {type(exc).__name__}: {exc}") from None
        return [dict(r) for r in ds], [f"{resolved.uri} row {i}" for i in range(len(ds))]
    rows: list[dict[str, Any]] = []
    where: list[str] = []
    for f in resolved.files:
        file_rows, file_where = _read_file(Path(f["abs"]), resolved.params.get("format"))
        rows += file_rows
        where += file_where
    return rows, where


def _read_file(path: Path, fmt: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    fmt = fmt or ("jsonl" if name.endswith(".jsonl") else "json" if name.endswith(".json") else
                  "parquet" if name.endswith(".parquet") else None)
    if fmt is None:
        raise MixlabError(f"{path}: cannot tell the format from the extension; set source.format (jsonl|json|parquet)")
    if fmt == "parquet":
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # noqa: BLE001
            raise MixlabError(f"{path}: not a readable parquet file ({exc})") from None
        return rows, [f"{path} row {i}" for i in range(len(rows))]
    if fmt == "json":
        with open_text(path) as fh:
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise MixlabError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, list):
            raise MixlabError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
        return data, [f"{path} row {i}" for i in range(len(data))]
    rows, where = [], []
    for lineno, row in iter_jsonl(path):
        rows.append(row)
        where.append(f"{path}:{lineno}")
    return rows, where
