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
        values = {
            "prompt_level_strict_acc": float(all(strict)),
            "inst_level_strict_acc": sum(strict) / n,
            "prompt_level_loose_acc": float(all(loose)),
            "inst_level_loose_acc": sum(loose) / n,
        }
        # Per instruction group (keywords, detectable_format, ...): which kinds of instruction a mixture breaks.
        group_counts: dict[str, int] = {}
        group_followed: dict[str, int] = {}
        for instruction_id, ok in zip(ids, strict):
            group = instruction_id.split(":", 1)[0]
            group_counts[group] = group_counts.get(group, 0) + 1
            group_followed[group] = group_followed.get(group, 0) + int(ok)
        for group, count in group_counts.items():
            values[f"inst_level_strict_acc/{group}"] = group_followed[group] / count
        return Score(
            values,
            details={
                "n_instructions": n,
                "group_counts": group_counts,
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
        n_inst = [s.details.get("n_instructions", 1) for s in scores]
        for metric in INST_METRICS:
            out[metric] = _ratio_ci([s.values.get(metric, 0.0) for s in scores], n_inst)
        groups = sorted({k for s in scores for k in s.values if k.startswith("inst_level_strict_acc/")})
        for key in groups:
            group = key.split("/", 1)[1]
            having = [s for s in scores if key in s.values]
            out[key] = _ratio_ci([s.values[key] for s in having],
                                 [s.details.get("group_counts", {}).get(group, 1) for s in having])
        return {m: out[m] for m in [*self.metrics, *groups]}

    def contamination_texts(self, item: EvalItem) -> list[str]:
        return [item.prompt_text]


def _ratio_ci(fractions: list[float], counts: list[int], n_boot: int = 2000) -> tuple[float, float, float, str]:
    """sum(followed) / sum(instructions) over prompts, with a bootstrap over prompts (a cluster bootstrap:
    instructions of one prompt share one answer, so they are not independent)."""
    weights = np.asarray(counts, dtype=float)
    followed = np.asarray(fractions, dtype=float) * weights
    ratio = float(followed.sum() / weights.sum())
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(weights), size=(n_boot, len(weights)))
    boots = followed[idx].sum(axis=1) / weights[idx].sum(axis=1)
    low, high = (float(x) for x in np.quantile(boots, [0.025, 0.975]))
    return (ratio, low, high, "bootstrap")


# Used by tests and `eval list`: every id in the data must have a checker.
def instruction_ids() -> list[str]:
    return sorted(ifi.CHECKERS)

