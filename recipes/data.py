"""A built mixture as the dataset a stage's trainer expects (post-training-anchors §2.1).

The trainer's registered spec (`recipes/trainers.py`) names the mixture kind and the columns it keeps: sft trains on
`messages`; dpo and kto on `prompt` / `chosen` / `rejected`; grpo on `prompt` (a message list) plus the `verifier`
and `ground_truth` columns TRL forwards to the reward functions (with `source_id` and `row_id`).

The artifact's Parquet shards are opened once per stage as Arrow (memory-mapped reads, no Python row objects), and
the curriculum phases come from its manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets

from mixlab.errors import MixlabError
from mixlab.mixtures.loader import load_table
from mixlab.recipes.trainers import TrainerSpec


@dataclass
class StageData:
    dataset: datasets.Dataset
    n_phases: int  # curriculum phases with rows, in stored order


def load_stage_dataset(mixture: str, spec: TrainerSpec) -> StageData:
    table, manifest = load_table(mixture, kind=spec.dataset_kind)
    missing = [c for c in spec.columns if c not in table.column_names]
    if missing:
        raise MixlabError(
            f"mixture {mixture}: a {spec.name} stage needs columns {list(spec.columns)}, the {spec.dataset_kind} "
            f"dataset lacks {missing} (has {table.column_names})"
        )
    keep = list(spec.columns) + [c for c in spec.optional_columns if c in table.column_names]
    n_phases = sum(1 for phase in manifest["phases"] if phase["rows"])
    return StageData(datasets.Dataset(table.select(keep)), n_phases)


def keep_curriculum_order(args: Any, n_phases: int) -> None:
    """A mixture with phases must be read in stored order (phase after phase), not shuffled by the Trainer."""
    if n_phases <= 1:
        return
    if not hasattr(args, "train_sampling_strategy"):
        raise MixlabError(
            f"this mixture has {n_phases} curriculum phases, which need sequential sampling; the installed "
            "transformers has no `train_sampling_strategy` (upgrade transformers)"
        )
    args.train_sampling_strategy = "sequential"
