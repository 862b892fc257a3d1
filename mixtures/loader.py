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
import pyarrow.parquet as pq

from mixlab.errors import MixlabError

PROVENANCE = ("source_id", "row_id", "phase")


def artifact_path(name_or_id: str, data_root: str | Path | None = None, build_if_needed: bool = True) -> Path:
    """The artifact folder of a mixture id, or of a registry name / YAML path (built or fetched from cache)."""
    from mixlab.mixtures.build import build, mixtures_dir

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


def _strip(messages: list[dict] | None, keep_train: bool) -> list[dict] | None:
    if messages is None or keep_train:
        return messages
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def load_dataset(name_or_id: str, kind: str | None = None, *, data_root: str | Path | None = None,
                 phase: str | None = None, keep_train_flags: bool = False):
    """`kind` (sft | preference | rl), when given, must match the mixture's kind."""
    import datasets

    path = artifact_path(name_or_id, data_root)
    manifest = json.loads((path / "manifest.json").read_text())
    actual = manifest["kind"]
    if kind is not None and kind != actual:
        raise MixlabError(f"mixture {manifest['name']} ({manifest['mixture_id']}) is a {actual} mixture, "
                          f"not {kind}")
    shards = [path / s["file"] for s in manifest["shards"]]
    table = pa.concat_tables([pq.read_table(s) for s in shards]) if shards else None
    if phase is not None:
        phases = [p["name"] for p in manifest["phases"]]
        if phase not in phases:
            raise MixlabError(f"mixture {manifest['name']} has no phase {phase!r}; phases: {phases}")
        import pyarrow.compute as pc

        table = table.filter(pc.equal(table["phase"], phase))
    rows = table.to_pylist()
    if actual == "sft":
        data = {"messages": [_strip(r["messages"], keep_train_flags) for r in rows]}
    elif actual == "preference":
        data = {k: [_strip(r[k], keep_train_flags) for r in rows] for k in ("prompt", "chosen", "rejected")}
    else:
        data = {"prompt": [_strip(r["prompt"], keep_train_flags) for r in rows],
                **{k: [r[k] for r in rows] for k in ("ground_truth", "verifier", "task")}}
    for k in PROVENANCE:
        data[k] = [r[k] for r in rows]
    dataset = datasets.Dataset.from_dict(data)
    dataset.info.description = f"mixlab mixture {manifest['name']} ({manifest['mixture_id']})"
    return dataset
