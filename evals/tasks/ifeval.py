"""IFEval: 541 prompts with 834 verifiable instructions; strict and loose, prompt- and instruction-level.

Per sample, the prompt-level metrics are 0/1 and the instruction-level metrics are the fraction of that prompt's
instructions followed. The benchmark's instruction-level accuracy is followed/total over *all* instructions (a
ratio, not a mean of per-prompt fractions), so this task provides `aggregate(scores)`, which the runner and
`eval check` use when a task has one; its interval is a bootstrap over prompts (instructions of one prompt are
not independent).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mixlab.errors import MixlabError
from mixlab.evals import ifeval_instructions as ifi
from mixlab.evals.stats import wilson_ci
from mixlab.evals.tasks._data import apply_limit, load_rows
from mixlab.evals.tasks.base import EvalItem, Score, Task, register_task

PROMPT_METRICS = ("prompt_level_strict_acc", "prompt_level_loose_acc")
INST_METRICS = ("inst_level_strict_acc", "inst_level_loose_acc")


@register_task
class IFEval(Task):
    name = "ifeval"
    category = "usability"
    description = "IFEval (541 prompts, 25 instruction types), rule-verified, strict and loose, offline"
    metrics = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")
    binary_metrics = True  # prompt-level values are 0/1; fractional instruction-level values fall back to bootstrap
    max_new_tokens = 1280
    data_path = "ifeval/input_data.jsonl"
    hub = "google/IFEval"

    def load(self, data_root: Path | None, limit: int | None = None) -> list[EvalItem]:
        rows = apply_limit(load_rows(self.name, data_root, self.data_path, self.hub, split="train"), limit)
        items = []
        for row in rows:
            ids = list(row["instruction_id_list"])
            unknown = [i for i in ids if i not in ifi.CHECKERS]
            if unknown:
                raise MixlabError(f"task ifeval: row key={row.get('key')} has unknown instruction ids {unknown}")
            items.append(
                EvalItem(
                    item_id=f"ifeval-{row['key']}",
                    messages=[{"role": "user", "content": row["prompt"]}],
                    reference={"instruction_id_list": ids, "kwargs": [ifi.clean_kwargs(k) for k in row["kwargs"]]},
                    meta={"key": row["key"]},
                )
            )
        return items

    def score(self, item: EvalItem, output: str) -> Score:
        ids, kwargs = item.reference["instruction_id_list"], item.reference["kwargs"]
        try:
            text = output if isinstance(output, str) else str(output)
            strict, loose = ifi.follows(ids, kwargs, text)
        except Exception as exc:  # noqa: BLE001 - a scorer never crashes on model output
            return Score(
                {m: 0.0 for m in self.metrics},
                details={"error": f"{type(exc).__name__}: {exc}", "n_instructions": len(ids)},
            )
        n = len(ids)
        return Score(
            {
                "prompt_level_strict_acc": float(all(strict)),
                "inst_level_strict_acc": sum(strict) / n,
                "prompt_level_loose_acc": float(all(loose)),
                "inst_level_loose_acc": sum(loose) / n,
            },
            details={
                "n_instructions": n,
                "followed_strict": dict(zip(ids, strict)),
                "followed_loose": dict(zip(ids, loose)),
            },
        )

    def aggregate(self, scores: list[Score]) -> dict[str, tuple[float, float, float, str]]:
        """(mean, low, high, method) per metric; instruction-level = followed / total instructions."""
        out: dict[str, tuple[float, float, float, str]] = {}
        if not scores:
            return {m: (float("nan"),) * 3 + ("none",) for m in self.metrics}  # type: ignore[misc]
        for metric in PROMPT_METRICS:
            k = sum(s.values.get(metric, 0.0) for s in scores)
            low, high = wilson_ci(k, len(scores))
            out[metric] = (k / len(scores), low, high, "wilson")
        n_inst = np.array([s.details.get("n_instructions", 1) for s in scores], dtype=float)
        for metric in INST_METRICS:
            followed = np.array([s.values.get(metric, 0.0) for s in scores]) * n_inst
            ratio = float(followed.sum() / n_inst.sum())
            # Ratio estimator over prompts: bootstrap prompts, recompute sum(followed)/sum(n).
            rng = np.random.default_rng(0)
            idx = rng.integers(0, len(scores), size=(2000, len(scores)))
            boots = followed[idx].sum(axis=1) / n_inst[idx].sum(axis=1)
            low, high = (float(x) for x in np.quantile(boots, [0.025, 0.975]))
            out[metric] = (ratio, low, high, "bootstrap")
        return {m: out[m] for m in self.metrics}

    def contamination_texts(self, item: EvalItem) -> list[str]:
        return [item.prompt_text]


# Used by tests and `eval list`: every id in the data must have a checker.
def instruction_ids() -> list[str]:
    return sorted(ifi.CHECKERS)

