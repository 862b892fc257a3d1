"""`load_dataset(name_or_id)`: a built mixture as a `datasets.Dataset` in TRL's formats, provenance kept.

- sft:        messages [{role, content}], plus source_id, row_id, phase
- preference: prompt / chosen / rejected (conversational), plus source_id, row_id, phase
- rl:         prompt [{role, content}], ground_truth (text; JSON for structured truths), verifier, task,
              plus source_id, row_id, phase
Rows keep the artifact's order (phases in order; shuffle within a phase only if the trainer must).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mixlab.errors import MixlabError
from mixlab.mixtures.artifact import mixtures_dir
from mixlab.mixtures.build import build

PROVENANCE = ("source_id", "row_id", "phase")


def artifact_path(name_or_id: str, data_root: str | Path | None = None, build_if_needed: bool = True) -> Path:
    """The artifact folder of a mixture id, or of a registry name / YAML path (built or fetched from cache)."""
    text = str(name_or_id)
    direct = Path(text)
    if direct.is_dir() and (direct / "manifest.json").is_file():
        return direct
    candidate = mixtures_dir() / text
    if (candidate / "manifest.json").is_file():
        return candidate
    if not build_if_needed:
        raise MixlabError(f"mixture {text!r} is not built (no {candidate})")
    return build(text, data_root=data_root).path


_MESSAGE_FIELDS = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
TRL_COLUMNS = {"sft": ("messages",), "preference": ("prompt", "chosen", "rejected"),
               "rl": ("prompt", "ground_truth", "verifier", "task")}
MESSAGE_COLUMNS = ("messages", "prompt", "chosen", "rejected")


def load_table(name_or_id: str, kind: str | None = None, *, data_root: str | Path | None = None,
               phase: str | None = None, keep_train_flags: bool = False) -> tuple[pa.Table, dict]:
    """The artifact's rows in TRL's columns as one Arrow table (Parquet shards read through memory maps, no Python
    row objects), and its manifest. `kind` (sft | preference | rl), when given, must match the mixture's kind."""
    path = artifact_path(name_or_id, data_root)
    manifest = json.loads((path / "manifest.json").read_text())
    actual = manifest["kind"]
    if kind is not None and kind != actual:
        raise MixlabError(f"mixture {manifest['name']} ({manifest['mixture_id']}) is a {actual} mixture, "
                          f"not {kind}")
    table = pa.concat_tables([pq.read_table(path / s["file"], memory_map=True) for s in manifest["shards"]])
    if phase is not None:
        phases = [p["name"] for p in manifest["phases"]]
        if phase not in phases:
            raise MixlabError(f"mixture {manifest['name']} has no phase {phase!r}; phases: {phases}")
        table = table.filter(pc.equal(table["phase"], phase))
    table = table.select(list(TRL_COLUMNS[actual]) + list(PROVENANCE))
    if not keep_train_flags:  # the per-message `train` flag is build metadata; trainers want {role, content}
        for name in MESSAGE_COLUMNS:
            if name in table.column_names:
                index = table.column_names.index(name)
                table = table.set_column(index, name, table[name].cast(_MESSAGE_FIELDS))
    return table, manifest


def load_dataset(name_or_id: str, kind: str | None = None, *, data_root: str | Path | None = None,
                 phase: str | None = None, keep_train_flags: bool = False):
    """`load_table` as a `datasets.Dataset` over the same Arrow buffers."""
    import datasets  # heavy; `mixlab mix` commands that never load a dataset should not pay for it

    table, manifest = load_table(name_or_id, kind, data_root=data_root, phase=phase,
                                 keep_train_flags=keep_train_flags)
    dataset = datasets.Dataset(table)
    dataset.info.description = f"mixlab mixture {manifest['name']} ({manifest['mixture_id']})"
    return dataset
