"""A built mixture as the dataset each TRL trainer expects (post-training-anchors §2.1).

- sft: conversational language modelling, `messages` (assistant-only loss comes from the chat template markers);
- grpo: prompt-only, `prompt` as a message list, plus the `verifier` and `ground_truth` columns TRL forwards to the
  reward functions;
- dpo: `prompt` / `chosen` / `rejected`.
`source_id` and `row_id` are kept where the trainer tolerates extra columns (GRPO forwards them to rewards).
"""

from __future__ import annotations

from typing import Any

from mixlab.errors import MixlabError

KIND_FOR_TRAINER = {"sft": "sft", "grpo": "rl", "dpo": "preference"}
REQUIRED_COLUMNS = {"sft": ["messages"], "grpo": ["prompt", "verifier", "ground_truth"], "dpo": ["chosen", "rejected"]}


def _as_messages(value: Any) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return value


def load_stage_dataset(mixture: str, trainer: str):
    from mixlab.mixtures import load_dataset

    kind = KIND_FOR_TRAINER[trainer]
    dataset = load_dataset(mixture, kind=kind)
    missing = [c for c in REQUIRED_COLUMNS[trainer] if c not in dataset.column_names]
    if missing:
        raise MixlabError(
            f"mixture {mixture}: a {trainer} stage needs columns {REQUIRED_COLUMNS[trainer]}, the {kind} dataset lacks "
            f"{missing} (has {dataset.column_names}); is it a {kind} mixture?"
        )
    if trainer == "sft":
        keep = ["messages"]
    elif trainer == "grpo":
        keep = ["prompt", "verifier", "ground_truth"] + [c for c in ("source_id", "row_id") if c in dataset.column_names]
        if isinstance(dataset[0]["prompt"], str):
            dataset = dataset.map(lambda row: {"chat_prompt": _as_messages(row["prompt"])}, remove_columns=["prompt"])
            dataset = dataset.rename_column("chat_prompt", "prompt")
    else:
        keep = [c for c in ("prompt", "chosen", "rejected") if c in dataset.column_names]
    return dataset.select_columns(keep)


def phase_count(mixture: str, trainer: str) -> int:
    """How many curriculum phases the built mixture holds (rows are stored phase after phase)."""
    from mixlab.mixtures import load_dataset

    dataset = load_dataset(mixture, kind=KIND_FOR_TRAINER[trainer])
    return len(set(dataset["phase"])) if "phase" in dataset.column_names else 1


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
