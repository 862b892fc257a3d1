"""`build(name_or_path)`: YAML mixture → content-addressed dataset artifact + DuckDB rows.

Pipeline per leaf source: resolve (checksums, pinned revision) → read → adapt to the canonical schema → count
tokens → filters → decontamination gate → exact dedup → MinHash near dedup; then the solver turns weights and
the budget into rows, phases are shuffled and concatenated in order, and the artifact is written to a temp folder
and renamed into `runs/artifacts/mixtures/<id>/`. The id hashes every input (resolved spec, source content
hashes, code version, tokenizer, chat template, eval-set fingerprint, seed), so the same inputs are a cache hit,
and a forced rebuild is byte-identical.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mixlab.atomic import sweep_stale
from mixlab.errors import MixlabError
from mixlab.evals.procedural import generate
from mixlab.mixtures import adapters as adapters_mod
from mixlab.mixtures import artifact, decontam, dedup, filters as filters_mod, solver, sources
from mixlab.mixtures.artifact import BuildOutput, BuiltMixture, code_version, mixtures_dir
from mixlab.mixtures.registry_io import LoadedMixture, load_mixture
from mixlab.mixtures.schema import Component, MixtureSpec
from mixlab.mixtures.tokens import TokenCounter
from mixlab.paths import data_root as default_data_root

ProgressFn = Callable[[str, int, int], None]


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


@dataclass
class Leaf:
    component: Component
    path: str
    loc: tuple
    resolved: sources.ResolvedSource | None = None
    source_id: str = ""
    adapter: Any = None
    adapter_options: Any = None
    filters: list[filters_mod.BoundFilter] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    row_ids: list[str] = field(default_factory=list)
    row_hashes: list[str] = field(default_factory=list)
    tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    trainable: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    alive: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    dropped: dict[str, Any] = field(default_factory=dict)
    loaded_rows: int = 0


def _iter_leaves(components: list[Component], prefix: str = "", loc: tuple = ("components",)):
    for i, c in enumerate(components):
        here = loc + (i,)
        if c.is_leaf:
            yield c, f"{prefix}{c.name}", here
        else:
            yield from _iter_leaves(c.components or [], f"{prefix}{c.name}/", here + ("components",))


def _fail(loaded: LoadedMixture, loc: tuple, field_name: str, message: str) -> MixlabError:
    return MixlabError(f"{loaded.where.prefix(loc)}: {field_name}: {message}")


def _dotted(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def _import_plugins(loaded: LoadedMixture) -> None:
    for i, plugin in enumerate(loaded.spec.plugins):
        loc = ("plugins", i)
        try:
            if plugin.endswith(".py"):
                path = Path(plugin) if Path(plugin).is_absolute() else loaded.path.parent / plugin
                spec = importlib.util.spec_from_file_location(f"mixlab_plugin_{path.stem}", path)
                if spec is None or spec.loader is None or not path.is_file():
                    raise FileNotFoundError(str(path))
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            else:
                importlib.import_module(plugin)
        except Exception as exc:  # noqa: BLE001
            raise _fail(loaded, loc, _dotted(loc), f"cannot import plugin {plugin!r}: {type(exc).__name__}: {exc}")


def _bind_filters(loaded: LoadedMixture, raw: list[dict[str, Any]], loc: tuple) -> list[filters_mod.BoundFilter]:
    bound = []
    for i, entry in enumerate(raw):
        try:
            definition, params = filters_mod.bind(entry)
        except MixlabError as exc:
            raise _fail(loaded, loc + (i,), _dotted(loc + (i,)), str(exc)) from None
        label = definition.name if sum(1 for e in raw if e.get("name") == definition.name) == 1 else f"{definition.name}#{i}"
        bound.append(filters_mod.BoundFilter(label, definition, params))
    return bound


def _row_hash(row: dict[str, Any]) -> str:
    return hashlib.blake2b(json.dumps(row, sort_keys=True, ensure_ascii=False).encode(), digest_size=8).hexdigest()


def _row_text(row: dict[str, Any], kind: str) -> str:
    if kind == "sft":
        return "\n".join(f"{m['role']}: {m['content']}" for m in row["messages"])
    if kind == "preference":
        parts = row["prompt"] + row["chosen"] + [{"role": "rejected", "content": m["content"]} for m in row["rejected"]]
        return "\n".join(f"{m['role']}: {m['content']}" for m in parts)
    return "\n".join(f"{m['role']}: {m['content']}" for m in row["prompt"]) + "\nanswer: " + row["ground_truth"]


class _Builder:
    def __init__(self, loaded: LoadedMixture, data_root: Path | None, progress: ProgressFn):
        self.loaded = loaded
        self.spec: MixtureSpec = loaded.spec
        self.data_root = data_root
        self.progress = progress
        self.leaves: list[Leaf] = []
        self.counter: TokenCounter | None = None
        self.index: decontam.EvalIndex | None = None
        self.hits: list[tuple[Leaf, int, decontam.Hit]] = []
        self.near_examples: list[dict[str, str]] = []

    # -- preparation (cheap; everything the mixture id needs) --------------------------------------------------

    def prepare(self) -> str:
        spec, loaded = self.spec, self.loaded
        _import_plugins(loaded)
        global_filters = _bind_filters(loaded, spec.filters, ("filters",))
        for component, path, loc in _iter_leaves(spec.components):
            leaf = Leaf(component, path, loc)
            origin_default = "procedural" if component.source.procedural else None
            try:
                leaf.adapter, leaf.adapter_options = adapters_mod.resolve_adapter(component.source.adapter, origin_default, spec.kind)
            except MixlabError as exc:
                raise _fail(loaded, loc + ("source", "adapter"), _dotted(loc + ("source",)), str(exc)) from None
            leaf.filters = global_filters + _bind_filters(loaded, component.filters, loc + ("filters",))
            self.leaves.append(leaf)
        try:
            self.counter = TokenCounter(spec.tokenizer, spec.chat_template, loaded.path.parent)
        except MixlabError as exc:
            raise _fail(loaded, ("tokenizer",), "tokenizer", str(exc).removeprefix("tokenizer: ")) from None
        if spec.kind == "rl" and spec.budget.unit == "trainable_tokens":
            raise _fail(loaded, ("budget", "unit"), "budget.unit", "rl prompt rows have no trainable tokens; use samples or tokens")
        targets = self._leaf_targets()
        for leaf in self.leaves:
            src = leaf.component.source
            n = src.n
            if src.procedural and n is None:
                n = self._auto_procedural_rows(leaf, targets[leaf.path])
            try:
                leaf.resolved = sources.resolve(src, data_root=self.data_root, yaml_dir=loaded.path.parent,
                                                seed=spec.seed, n=n)
            except MixlabError as exc:
                field_name = {"local": "local", "hub": "hub"}.get(src.origin, "procedural")
                raise _fail(loaded, leaf.loc + ("source", field_name), _dotted(leaf.loc + ("source", field_name)),
                            str(exc).removeprefix(f"{field_name}: ")) from None
            identity = {"origin": leaf.resolved.origin, "uri": leaf.resolved.uri, "revision": leaf.resolved.revision,
                        "content": leaf.resolved.content_hash, "adapter": leaf.adapter.name,
                        "options": leaf.adapter_options.model_dump(mode="json"), "kind": spec.kind}
            leaf.source_id = "src-" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
        dc = spec.decontamination
        if dc.enabled:
            self.progress("index eval sets", 0, 1)
            try:
                self.index = decontam.build_index(dc.tasks, dc.exclude, self.data_root, dc.n, dc.min_short_tokens)
            except MixlabError as exc:
                raise _fail(loaded, ("decontamination",), "decontamination", str(exc).removeprefix("decontamination: ")) from None
            self.progress("index eval sets", 1, 1)
        identity = {
            "spec": spec.model_dump(mode="json"),
            "sources": [(leaf.path, leaf.source_id) for leaf in self.leaves],
            "code": code_version(),
            "tokenizer": self.counter.fingerprint,
            "chat_template": self.counter.template_hash,
            "eval_sets": self.index.fingerprint if self.index else None,
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return f"{spec.name}-{digest[:12]}"

    def _leaf_targets(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for _, _, leaf_targets in solver.plan_targets(self.spec):
            for path, t in leaf_targets.items():
                totals[path] = totals.get(path, 0.0) + t
        return totals

    def _auto_procedural_rows(self, leaf: Leaf, target_units: float) -> int:
        """Rows to generate when `n` is omitted: the target (in rows) plus a margin for filter/dedup drops."""
        if target_units <= 0:
            return 1
        if self.spec.budget.unit == "samples":
            rows = target_units
        else:
            src = leaf.component.source
            probe = generate(src.procedural, src.split or "train", 256,
                             seed=src.seed if src.seed is not None else self.spec.seed, level=src.level)
            canon = [leaf.adapter.fn(item, leaf.adapter_options, self.spec.kind) for item in probe]
            tokens, trainable = self.counter.count(canon, self.spec.kind)
            per_row = (tokens if self.spec.budget.unit == "tokens" else trainable).mean()
            rows = target_units / max(per_row, 1e-9)
        return int(math.ceil(rows * 1.15)) + 16

    # -- the expensive part -------------------------------------------------------------------------------------

    def load(self) -> None:
        kind = self.spec.kind
        for li, leaf in enumerate(self.leaves):
            self.progress(f"read {leaf.path}", li, len(self.leaves))
            raw, where = sources.read(leaf.resolved)
            limit = leaf.component.source.limit
            if limit is not None:
                raw, where = raw[:limit], where[:limit]
            id_field = leaf.adapter_options.row_id
            fn, options = leaf.adapter.fn, leaf.adapter_options
            rows, ids = [], []
            invalid = 0
            for i, r in enumerate(raw):
                try:
                    if not isinstance(r, dict):
                        raise adapters_mod.RowError(f"expected a mapping, got {type(r).__name__}")
                    row = fn(r, options, kind)
                    adapters_mod.validate_row(row, kind)
                except adapters_mod.EmptyRow:
                    invalid += 1
                    continue
                except (adapters_mod.RowError, KeyError, TypeError, AttributeError, IndexError) as exc:
                    raise MixlabError(f"{where[i]}: source {leaf.path} (adapter {leaf.adapter.name}): "
                                      f"{type(exc).__name__ + ': ' if not isinstance(exc, adapters_mod.RowError) else ''}{exc}") from None
                rows.append(row)
                if leaf.resolved.origin == "procedural":
                    ids.append(r["id"])
                elif id_field is not None:
                    if id_field not in r:
                        raise MixlabError(f"{where[i]}: source {leaf.path}: row_id field {id_field!r} missing")
                    ids.append(str(r[id_field]))
                else:
                    ids.append(str(i))
            if len(set(ids)) != len(ids):
                raise MixlabError(f"source {leaf.path}: row ids are not unique (row_id field {id_field!r})")
            leaf.rows, leaf.row_ids = rows, ids
            leaf.loaded_rows = len(raw)
            leaf.row_hashes = [_row_hash(r) for r in rows]
            leaf.alive = np.ones(len(rows), dtype=bool)
            leaf.dropped = {"invalid": invalid, "filters": {f.label: 0 for f in leaf.filters}, "decontamination": 0,
                            "dedup_exact": 0, "dedup_near": 0}
            self.progress(f"read {leaf.path}", li + 1, len(self.leaves))

    def count_tokens(self) -> None:
        for li, leaf in enumerate(self.leaves):
            self.progress("count tokens", li, len(self.leaves))
            leaf.tokens, leaf.trainable = self.counter.count(leaf.rows, self.spec.kind)
        self.progress("count tokens", len(self.leaves), len(self.leaves))

    def apply_filters(self) -> None:
        kind = self.spec.kind
        for li, leaf in enumerate(self.leaves):
            self.progress("filters", li, len(self.leaves))
            if not leaf.filters:
                continue
            for i, row in enumerate(leaf.rows):
                view = filters_mod.RowView(row, kind, int(leaf.tokens[i]), int(leaf.trainable[i]))
                for f in leaf.filters:
                    if not f.keep(view):
                        leaf.alive[i] = False
                        leaf.dropped["filters"][f.label] += 1
                        break
        self.progress("filters", len(self.leaves), len(self.leaves))

    def apply_decontamination(self) -> None:
        if self.index is None:
            return
        kind, fields = self.spec.kind, set(self.spec.decontamination.fields)
        for li, leaf in enumerate(self.leaves):
            self.progress("decontamination", li, len(self.leaves))
            texts, text_row, text_field = [], [], []
            for i in np.flatnonzero(leaf.alive):
                row = leaf.rows[i]
                if "prompt" in fields:
                    for t in filters_mod.prompt_texts(row, kind):
                        texts.append(t), text_row.append(int(i)), text_field.append("prompt")
                if "response" in fields:
                    for t in filters_mod.response_texts(row, kind):
                        texts.append(t), text_row.append(int(i)), text_field.append("response")
            hits = decontam.check(self.index, texts, text_row, text_field)
            if self.spec.decontamination.fuzzy:  # near copies the exact gate missed
                hits += decontam.check_fuzzy(self.index, texts, text_row, text_field, {h.row for h in hits})
            for hit in hits:
                self.hits.append((leaf, hit.row, hit))
                if leaf.alive[hit.row]:
                    leaf.alive[hit.row] = False
                    leaf.dropped["decontamination"] += 1
        self.progress("decontamination", len(self.leaves), len(self.leaves))
        limit = self.spec.decontamination.max_flagged_fraction
        total = sum(leaf.loaded_rows for leaf in self.leaves) or 1
        flagged = sum(leaf.dropped["decontamination"] for leaf in self.leaves)
        if limit is not None and flagged / total > limit:
            raise _fail(self.loaded, ("decontamination", "max_flagged_fraction"), "decontamination.max_flagged_fraction",
                        f"{flagged} of {total} rows ({flagged / total:.1%}) overlap eval sets, above the limit {limit:.1%}")

    def apply_dedup(self) -> None:
        cfg = self.spec.dedup
        kind = self.spec.kind
        groups = [self.leaves] if cfg.scope == "global" else [[leaf] for leaf in self.leaves]
        for group in groups:
            members = [(leaf, int(i)) for leaf in group for i in np.flatnonzero(leaf.alive)]
            texts = [_row_text(leaf.rows[i], kind) for leaf, i in members]
            if cfg.exact:
                self.progress("exact dedup", 0, 1)
                dup = dedup.exact_duplicates(dedup.exact_keys(texts))
                for (leaf, i), d in zip(members, dup):
                    if d:
                        leaf.alive[i] = False
                        leaf.dropped["dedup_exact"] += 1
                keep = ~dup
                members = [m for m, k in zip(members, keep) if k]
                texts = [t for t, k in zip(texts, keep) if k]
                self.progress("exact dedup", 1, 1)
            if cfg.near is not None and len(texts) > 1:
                self.progress("near dedup (MinHash)", 0, 1)
                sig = dedup.minhash_signatures(texts, cfg.near.num_perm, cfg.near.shingle, seed=self.spec.seed + 1)
                dup, match = dedup.near_duplicates(sig, cfg.near.threshold)
                for k in np.flatnonzero(dup):
                    leaf, i = members[k]
                    leaf.alive[i] = False
                    leaf.dropped["dedup_near"] += 1
                    if len(self.near_examples) < 20:
                        other, j = members[int(match[k])]
                        self.near_examples.append({"source": leaf.path, "row_id": leaf.row_ids[i],
                                                   "matches_source": other.path, "matches_row_id": other.row_ids[j]})
                self.progress("near dedup (MinHash)", 1, 1)

    def allocate(self) -> tuple[list[solver.Allocation], dict[str, np.ndarray]]:
        unit = self.spec.budget.unit
        caps = solver.leaf_max_epochs(self.spec)
        pools: dict[str, solver.LeafPool] = {}
        pool_index: dict[str, np.ndarray] = {}
        for leaf in self.leaves:
            idx = np.flatnonzero(leaf.alive)
            pool_index[leaf.path] = idx
            units = {"samples": np.ones(len(idx)), "tokens": leaf.tokens[idx].astype(float),
                     "trainable_tokens": leaf.trainable[idx].astype(float)}[unit]
            seed = int(hashlib.sha256(f"{self.spec.seed}|{leaf.path}".encode()).hexdigest()[:8], 16)
            pools[leaf.path] = solver.LeafPool(leaf.path, units, caps[leaf.path], seed)
        try:
            return solver.allocate(self.spec, pools), pool_index
        except MixlabError as exc:
            raise _fail(self.loaded, ("budget",), "budget", str(exc)) from None

    def output(self) -> BuildOutput:
        """Allocate the budget over the surviving rows; what the artifact writer needs."""
        allocations, pool_index = self.allocate()
        return BuildOutput(
            loaded=self.loaded, leaves=self.leaves, allocations=allocations, pool_index=pool_index,
            tokenizer_fingerprint=self.counter.fingerprint, assistant_masks=self.counter.assistant_masks,
            chat_template_hash=self.counter.template_hash, index=self.index, hits=self.hits,
            near_examples=self.near_examples,
        )


def build(name_or_path: str | Path, data_root: str | Path | None = None, store=None, *, force: bool = False,
          progress: ProgressFn | None = None, record: bool = True) -> BuiltMixture:
    """Build (or fetch from cache) a mixture; see the module docstring. `store` defaults to mixlab's DuckDB."""
    progress = progress or _no_progress
    sweep_stale(mixtures_dir())  # temp folders of builds killed mid-write (kill -9 runs no cleanup)
    existing = mixtures_dir() / str(name_or_path)
    if (existing / "manifest.json").is_file() and (existing / "mixture.yaml").is_file():
        # A built mixture id (recipes may pin one): the artifact is the source of truth.
        manifest = json.loads((existing / "manifest.json").read_text())
        built = BuiltMixture(manifest["mixture_id"], manifest["name"], manifest["kind"], manifest["family"], existing,
                             manifest, True)
        if record:
            artifact.record_in_store(built, load_mixture(existing / "mixture.yaml"), store, only_if_missing=True)
        return built
    loaded = load_mixture(name_or_path)
    root = default_data_root(data_root)
    builder = _Builder(loaded, root, progress)
    mixture_id = builder.prepare()
    out_dir = mixtures_dir() / mixture_id
    if (out_dir / "manifest.json").is_file() and not force:
        manifest = json.loads((out_dir / "manifest.json").read_text())
        built = BuiltMixture(mixture_id, loaded.spec.name, loaded.spec.kind, loaded.spec.family, out_dir, manifest, True)
        if record:
            artifact.record_in_store(built, loaded, store, only_if_missing=True)
        return built
    builder.load()
    builder.count_tokens()
    builder.apply_filters()
    builder.apply_decontamination()
    builder.apply_dedup()
    output = builder.output()
    progress("write artifact", 0, 1)
    built = artifact.write(output, mixture_id, replace=force)
    progress("write artifact", 1, 1)
    if record:
        artifact.record_in_store(built, loaded, store)
    return built
