"""Artifact writing (parquet shards + manifest.json + mixture.lock + contamination.parquet, temp-then-rename)
and the DuckDB rows for a built mixture."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from mixlab.atomic import swap_in, sweep_stale, temp_path
from mixlab.mixtures.decontam import EvalIndex, Hit
from mixlab.mixtures.decontam import summary as decontam_summary
from mixlab.mixtures.dedup import lsh_params
from mixlab.mixtures.registry_io import LoadedMixture
from mixlab.mixtures.schema import Component, MixtureSpec
from mixlab.mixtures.solver import Allocation, leaf_max_epochs
from mixlab.mixtures.sources import ResolvedSource, procedural_version
from mixlab.paths import artifacts_dir
from mixlab.store import ComponentRecord, ContaminationRecord, MixtureRecord, SourceRecord, Store, utcnow

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string()), ("train", pa.bool_())])
MESSAGES = pa.list_(MESSAGE)
COMMON = [("source_id", pa.string()), ("source_name", pa.string()), ("group_path", pa.string()),
          ("phase", pa.string()), ("row_id", pa.string()), ("epoch", pa.int32()), ("row_hash", pa.string()),
          ("n_tokens", pa.int64()), ("n_trainable_tokens", pa.int64())]
KIND_COLUMNS = {
    "sft": [("messages", MESSAGES)],
    "preference": [("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES)],
    "rl": [("prompt", MESSAGES), ("ground_truth", pa.string()), ("verifier", pa.string()), ("task", pa.string())],
}
CONTAMINATION = pa.schema([("source_id", pa.string()), ("source_name", pa.string()), ("row_id", pa.string()),
                           ("benchmark", pa.string()), ("item_id", pa.string()), ("ngram", pa.string()),
                           ("field", pa.string()), ("rule", pa.string())])


def schema_for(kind: str) -> pa.Schema:
    return pa.schema(COMMON + KIND_COLUMNS[kind])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class BuiltMixture:
    mixture_id: str
    name: str
    kind: str
    family: str | None
    path: Path
    manifest: dict[str, Any]
    cache_hit: bool = False

    @property
    def id(self) -> str:
        return self.mixture_id


class LeafRows(Protocol):
    """What the writer reads of one leaf component after the build's filters, decontamination and dedup."""

    path: str
    component: Component
    source_id: str
    resolved: ResolvedSource
    adapter: Any
    rows: list[dict[str, Any]]
    row_ids: list[str]
    row_hashes: list[str]
    tokens: np.ndarray
    trainable: np.ndarray
    dropped: dict[str, Any]
    loaded_rows: int


@dataclass
class BuildOutput:
    """Everything a finished build hands the writer: the mixture, its leaves, the row allocation (`pool_index`
    maps a leaf to its surviving rows; allocations index into it), tokenizer facts and what was dropped."""

    loaded: LoadedMixture
    leaves: list[LeafRows]
    allocations: list[Allocation]
    pool_index: dict[str, np.ndarray]
    tokenizer_fingerprint: str
    assistant_masks: bool
    chat_template_hash: str
    index: EvalIndex | None
    hits: list[tuple[LeafRows, int, Hit]]
    near_examples: list[dict[str, str]]

    @property
    def spec(self) -> MixtureSpec:
        return self.loaded.spec

    def phase_order(self) -> list[tuple[str, list[Allocation]]]:
        names = [p.name for p in self.spec.phases] if self.spec.phases else ["main"]
        return [(name, [a for a in self.allocations if a.phase == name]) for name in names]


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of the transform code (this package + the procedural generators): a change gives new ids."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.name != "cli.py":
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    h.update(procedural_version().encode())
    return h.hexdigest()[:16]


def mixtures_dir() -> Path:
    return artifacts_dir() / "mixtures"


def write(out: BuildOutput, mixture_id: str, *, replace: bool = False) -> BuiltMixture:
    """Write the artifact. Without `replace`, a folder another process finished first is kept (same inputs,
    same bytes) and ours is discarded, so readers never see the folder disappear."""
    table, phase_stats = _rows_table(out)
    manifest = _manifest(out, mixture_id, table, phase_stats)
    final = mixtures_dir() / mixture_id
    _write_folder(out, mixture_id, final, table, manifest, replace=replace)
    return BuiltMixture(mixture_id, out.spec.name, out.spec.kind, out.spec.family, final, manifest, False)


def _rows_table(out: BuildOutput) -> tuple[pa.Table, list[dict[str, Any]]]:
    """The rows in training order (phases in order, each shuffled) and each phase's row and token counts."""
    spec, kind = out.spec, out.spec.kind
    leaves = {leaf.path: leaf for leaf in out.leaves}
    order: list[tuple[str, int, int, str]] = []  # (leaf path, row index in leaf, epoch, phase)
    phase_stats = []
    for p, (phase, allocs) in enumerate(out.phase_order()):
        entries = []
        for a in allocs:
            pool = out.pool_index[a.path]
            if not len(a.rows):
                continue
            epochs = (a.epochs_from + np.arange(len(a.rows))) // len(pool)
            entries += [(a.path, int(pool[r]), int(e), phase) for r, e in zip(a.rows, epochs)]
        perm = np.random.default_rng([spec.seed, p, 7]).permutation(len(entries))
        phase_entries = [entries[i] for i in perm]
        order += phase_entries
        phase_stats.append({"name": phase, "rows": len(phase_entries),
                            "tokens": int(sum(leaves[e[0]].tokens[e[1]] for e in phase_entries))})

    columns: dict[str, list[Any]] = {name: [] for name, _ in COMMON + KIND_COLUMNS[kind]}
    for path, i, epoch, phase in order:
        leaf = leaves[path]
        row = leaf.rows[i]
        columns["source_id"].append(leaf.source_id)
        columns["source_name"].append(leaf.component.name)
        columns["group_path"].append(path)
        columns["phase"].append(phase)
        columns["row_id"].append(leaf.row_ids[i])
        columns["epoch"].append(epoch)
        columns["row_hash"].append(leaf.row_hashes[i])
        columns["n_tokens"].append(int(leaf.tokens[i]))
        columns["n_trainable_tokens"].append(int(leaf.trainable[i]))
        for name, _ in KIND_COLUMNS[kind]:
            columns[name].append(row[name])
    return pa.table(columns, schema=schema_for(kind)), phase_stats


def _component_entries(out: BuildOutput) -> list[dict[str, Any]]:
    """Per leaf: where it came from, what was dropped, target vs realised units, share and epochs (per phase too)."""
    unit = out.spec.budget.unit
    unit_of = {"samples": lambda leaf, idx: float(len(idx)), "tokens": lambda leaf, idx: float(leaf.tokens[idx].sum()),
               "trainable_tokens": lambda leaf, idx: float(leaf.trainable[idx].sum())}[unit]
    leaves = {leaf.path: leaf for leaf in out.leaves}
    realised_total = sum(unit_of(leaves[a.path], out.pool_index[a.path][a.rows]) for a in out.allocations) or 1.0
    caps = leaf_max_epochs(out.spec)
    components = []
    for leaf in out.leaves:
        pool = out.pool_index[leaf.path]
        allocs = [a for a in out.allocations if a.path == leaf.path]
        chosen = np.concatenate([pool[a.rows] for a in allocs]) if allocs else np.zeros(0, np.int64)
        realised_units = unit_of(leaf, chosen)
        pool_units = unit_of(leaf, pool)
        per_phase = []
        for a in allocs:
            idx = pool[a.rows]
            per_phase.append({
                "phase": a.phase, "target_units": a.target_units, "target_share": a.target_share,
                "rows": int(len(idx)), "tokens": int(leaf.tokens[idx].sum()),
                "trainable_tokens": int(leaf.trainable[idx].sum()), "units": unit_of(leaf, idx),
                "realised_share": unit_of(leaf, idx) / realised_total,
                "epochs": (unit_of(leaf, idx) / pool_units) if pool_units else 0.0,
            })
        target_units = sum(a.target_units for a in allocs)
        components.append({
            "path": leaf.path, "name": leaf.component.name, "source_id": leaf.source_id,
            "origin": leaf.resolved.origin, "uri": leaf.resolved.uri, "revision": leaf.resolved.revision,
            "content_hash": leaf.resolved.content_hash, "adapter": leaf.adapter.name, "weight": leaf.component.weight, "max_epochs": caps[leaf.path],
            "loaded_rows": leaf.loaded_rows, "available_rows": int(len(pool)),
            "available_tokens": int(leaf.tokens[pool].sum()),
            "dropped": leaf.dropped,
            "target_units": target_units, "target_share": sum(a.target_share for a in allocs),
            "target_rows": int(round(target_units)) if unit == "samples" else None,
            "realised_rows": int(len(chosen)), "realised_units": realised_units,
            "realised_share": realised_units / realised_total,
            "tokens": int(leaf.tokens[chosen].sum()), "trainable_tokens": int(leaf.trainable[chosen].sum()),
            "epochs": realised_units / pool_units if pool_units else 0.0,
            "phases": per_phase,
        })
    return components


def _manifest(out: BuildOutput, mixture_id: str, table: pa.Table, phase_stats: list[dict[str, Any]]) -> dict[str, Any]:
    spec = out.spec
    by_benchmark: dict[str, int] = {}
    for _, _, hit in out.hits:
        by_benchmark[hit.benchmark] = by_benchmark.get(hit.benchmark, 0) + 1
    near = spec.dedup.near
    return {
        "mixture_id": mixture_id, "name": spec.name, "kind": spec.kind, "family": spec.family,
        "description": spec.description, "extends": spec.extends, "seed": spec.seed,
        "budget": spec.budget.model_dump(), "code_version": code_version(),
        "tokenizer": {"name": spec.tokenizer, "fingerprint": out.tokenizer_fingerprint,
                      # False: the template has no {% generation %} markers, so trainers cannot mask the prompt
                      "assistant_masks": out.assistant_masks},
        "chat_template_hash": out.chat_template_hash,
        "n_rows": table.num_rows, "n_tokens": int(pc.sum(table["n_tokens"]).as_py() or 0),
        "n_trainable_tokens": int(pc.sum(table["n_trainable_tokens"]).as_py() or 0),
        "phases": phase_stats, "components": _component_entries(out),
        "dedup": {"exact": spec.dedup.exact, "scope": spec.dedup.scope,
                  "near": None if near is None else {**near.model_dump(), "bands_rows": list(lsh_params(near.threshold, near.num_perm))},
                  "dropped_exact": sum(l.dropped["dedup_exact"] for l in out.leaves),
                  "dropped_near": sum(l.dropped["dedup_near"] for l in out.leaves),
                  "near_examples": out.near_examples},
        "decontamination": None if out.index is None else {
            **decontam_summary(out.index),
            "flagged_rows": sum(l.dropped["decontamination"] for l in out.leaves),
            "hits": len(out.hits), "by_benchmark": by_benchmark,
        },
        "spec": spec.model_dump(mode="json"),
    }


def _lock(out: BuildOutput, mixture_id: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Resolved revisions, file checksums and row hashes of every source: what a rebuild must find again."""
    return {
        "mixture_id": mixture_id, "code_version": code_version(),
        "tokenizer": manifest["tokenizer"], "chat_template_hash": out.chat_template_hash,
        "eval_sets": out.index.fingerprint if out.index else None,
        "sources": [{
            "path": leaf.path, "source_id": leaf.source_id, "origin": leaf.resolved.origin, "uri": leaf.resolved.uri,
            "revision": leaf.resolved.revision, "content_hash": leaf.resolved.content_hash,
            "files": [{"path": f["path"], "sha256": f["sha256"]} for f in leaf.resolved.files],
            "params": leaf.resolved.params, "rows": leaf.loaded_rows, "row_hashes": leaf.row_hashes,
        } for leaf in out.leaves],
    }


def _contamination_table(out: BuildOutput) -> pa.Table:
    return pa.table({
        "source_id": [leaf.source_id for leaf, _, _ in out.hits],
        "source_name": [leaf.path for leaf, _, _ in out.hits],
        "row_id": [leaf.row_ids[r] for leaf, r, _ in out.hits],
        "benchmark": [h.benchmark for _, _, h in out.hits],
        "item_id": [h.item_id for _, _, h in out.hits],
        "ngram": [h.ngram for _, _, h in out.hits],
        "field": [h.field for _, _, h in out.hits],
        "rule": [h.rule for _, _, h in out.hits],
    }, schema=CONTAMINATION)


def _write_folder(out: BuildOutput, mixture_id: str, final: Path, table: pa.Table, manifest: dict[str, Any], *,
                  replace: bool) -> None:
    """Shards, contamination, manifest, lock and resolved YAML into a temp folder, then renamed into place."""
    spec = out.spec
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(final.parent)  # leftovers of builds killed mid-write
    tmp = temp_path(final.parent, mixture_id)  # names host and pid, so later runs know when it is stale
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        n_shards = max(1, -(-table.num_rows // spec.shard_rows))
        shards = []
        for s in range(n_shards):
            name = f"data-{s:05d}-of-{n_shards:05d}.parquet"
            part = table.slice(s * spec.shard_rows, spec.shard_rows)
            pq.write_table(part, tmp / name, compression="zstd")
            shards.append({"file": name, "rows": part.num_rows, "sha256": _sha256(tmp / name)})
        pq.write_table(_contamination_table(out), tmp / "contamination.parquet", compression="zstd")
        manifest["shards"] = shards
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        lock = _lock(out, mixture_id, manifest)
        (tmp / "mixture.lock").write_text(json.dumps(lock, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
        (tmp / "mixture.yaml").write_text(resolved_yaml(out.loaded))
        if final.exists() and not replace:
            shutil.rmtree(tmp, ignore_errors=True)
        elif final.exists():
            swap_in(tmp, final, mixture_id)  # --force: atomic exchange, the old artifact is never missing
        else:
            try:
                os.replace(tmp, final)
            except OSError:  # another process renamed its identical folder into place first
                shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolved_yaml(loaded: LoadedMixture) -> str:
    """The merged YAML with `extends` already applied (so the artifact's copy stands alone)."""
    data = {k: v for k, v in loaded.data.items() if k != "extends"}
    header = f"# resolved mixture (extends {loaded.spec.extends} merged in)\n" if loaded.spec.extends else ""
    return header + yaml.safe_dump(data, sort_keys=False)


def record_in_store(built: BuiltMixture, loaded: LoadedMixture, store=None, *, only_if_missing: bool = False) -> None:
    """sources, mixtures, mixture_components and contamination rows for a built mixture."""
    store = store or Store()
    m = built.manifest
    if only_if_missing and store.has_mixture(built.mixture_id):
        return
    now = utcnow()
    sources = [SourceRecord(
        source_id=c["source_id"], name=c["path"], kind=c["origin"], uri=c["uri"], revision=c["revision"],
        adapter=c["adapter"], n_rows=c["loaded_rows"], content_hash=c.get("content_hash"), created_at=now,
    ) for c in m["components"]]
    mixture = MixtureRecord(
        mixture_id=built.mixture_id, name=m["name"], kind=m["kind"], family=m["family"], yaml=loaded.yaml_text,
        artifact_path=str(built.path), manifest={k: v for k, v in m.items() if k != "spec"}, n_rows=m["n_rows"],
        n_tokens=m["n_tokens"], seed=m["seed"], created_at=now,
    )
    components = []
    for c in m["components"]:
        for k, ph in enumerate(c["phases"] or [None]):
            first = k == 0
            components.append(ComponentRecord(
                mixture_id=built.mixture_id, source_id=c["source_id"], source_name=c["path"],
                group_path=c["path"], phase=ph["phase"] if ph else None,
                target_share=ph["target_share"] if ph else c["target_share"],
                realised_share=ph["realised_share"] if ph else c["realised_share"],
                target_rows=int(round(ph["target_units"])) if ph and m["budget"]["unit"] == "samples" else None,
                realised_rows=ph["rows"] if ph else c["realised_rows"],
                tokens=ph["tokens"] if ph else c["tokens"],
                trainable_tokens=ph["trainable_tokens"] if ph else c["trainable_tokens"],
                epochs=ph["epochs"] if ph else c["epochs"],
                dropped_filter=sum(c["dropped"]["filters"].values()) + c["dropped"].get("invalid", 0) if first else 0,
                dropped_dedup=c["dropped"]["dedup_exact"] + c["dropped"]["dedup_near"] if first else 0,
                dropped_contamination=c["dropped"]["decontamination"] if first else 0,
            ))
    contamination = [
        ContaminationRecord(mixture_id=built.mixture_id, **{k: r.get(k) for k in
                            ("source_id", "row_id", "benchmark", "item_id", "ngram", "field", "rule")})
        for r in pq.read_table(built.path / "contamination.parquet").to_pylist()
    ]
    store.record_mixture(mixture, sources, components, contamination)
