"""Procedural suites on the held-out splits: proc-math, proc-code, proc-chat.

These are the CPU demo's signal: tiny models score 0 on GSM8K but move visibly here as the data mixture changes.
Items come from `mixlab.evals.procedural.generate(kind, "heldout", N, seed)` (disjoint from the training split by
construction), the prompt is the generator's user message exactly as the training rows carry it (no system
prompt, no extra instructions), and the scorer is the generator's own verifier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from mixlab.errors import MixlabError
from mixlab.evals import procedural
from mixlab.evals.procedural import chat_format
from mixlab.evals.stats import summarize_metrics
from mixlab.evals.tasks.base import EvalItem, Score, Task, register_task


class ProceduralTask(Task):
    kind: ClassVar[str]
    n_items: ClassVar[int] = 300  # fixed size: scores stay comparable across runs (Wilson half-width <= 0.057)
    seed: ClassVar[int] = 0
    split: ClassVar[str] = "heldout"
    level: ClassVar[int | None] = None  # None: all levels, mixed uniformly
    binary_metrics = True
    templated = True  # train and held-out splits share templates; disjoint parameters (the exact gate checks)

    def _generate(self, n: int) -> list[dict[str, Any]]:
        return procedural.generate(self.kind, self.split, n, seed=self.seed, level=self.level)

    def load(self, data_root: Path | None, limit: int | None = None) -> list[EvalItem]:
        if limit is not None and limit < 0:
            raise MixlabError(f"limit must be >= 0, got {limit}")
        # Always generate the full fixed set and slice, so `--limit k` is a prefix of the full task.
        rows = self._generate(self.n_items)[: self.n_items if limit is None else min(limit, self.n_items)]
        return [
            EvalItem(
                item_id=row["id"],
                messages=[{"role": "user", "content": row["prompt"]}],
                reference={"ground_truth": row["ground_truth"], "verifier": row["verifier"]},
                meta={"level": row.get("level"), "response": row["response"], "kind": row["kind"]},
            )
            for row in rows
        ]

    def _verify(self, item: EvalItem, output: str) -> float:
        return float(procedural.verify(item.reference, response=output))

    def score(self, item: EvalItem, output: str) -> Score:
        text = output if isinstance(output, str) else ("" if output is None else str(output))
        try:
            value = self._verify(item, text)
        except Exception as exc:  # noqa: BLE001 - a scorer never crashes on model output
            return Score({m: 0.0 for m in self.metrics},
                         details={"error": f"{type(exc).__name__}: {exc}", "level": item.meta.get("level")})
        values = {self.metrics[0]: value}
        if item.meta.get("level") is not None:
            values[f"{self.metrics[0]}/level:{item.meta['level']}"] = value
        return Score(values, details={"level": item.meta.get("level")})

    def aggregate(self, scores: list[Score]) -> dict[str, tuple[float, float, float, str]]:
        """The task metrics, then the primary metric per difficulty level (each over its own items)."""
        return summarize_metrics([s.values for s in scores], binary=self.binary_metrics)

    def reference_output(self, item: EvalItem) -> str:
        return item.meta["response"]

    def contamination_texts(self, item: EvalItem) -> list[str]:
        # Held-out procedural items are disjoint from the train split by construction; the gate may still check.
        return [item.prompt_text]


@register_task
class ProcMath(ProceduralTask):
    name = "proc-math"
    kind = "math"
    category = "leaderboard"
    description = "Procedural arithmetic/word problems, held-out split (300 items), final-answer match"
    metrics = ("accuracy",)
    max_new_tokens = 128


@register_task
class ProcCode(ProceduralTask):
    name = "proc-code"
    kind = "code"
    category = "leaderboard"
    description = "Procedural Python functions, held-out split (300 items), asserts run in the sandbox"
    metrics = ("pass@1",)
    max_new_tokens = 256


@register_task
class ProcChat(ProceduralTask):
    name = "proc-chat"
    kind = "chat"
    category = "usability"
    description = "Procedural chat with format constraints, held-out split (300 items), all constraints satisfied"
    metrics = ("format_satisfied", "constraint_acc")
    max_new_tokens = 256

    def score(self, item: EvalItem, output: str) -> Score:
        text = output if isinstance(output, str) else ("" if output is None else str(output))
        try:
            constraints = item.reference["ground_truth"]
            verdicts = [bool(v) for v in chat_format.check_all(constraints, text)] if constraints else []
        except Exception as exc:  # noqa: BLE001
            return Score({m: 0.0 for m in self.metrics},
                         details={"error": f"{type(exc).__name__}: {exc}", "level": item.meta.get("level")})
        all_ok = float(bool(verdicts) and all(verdicts))
        frac = sum(verdicts) / len(verdicts) if verdicts else 0.0
        values = {"format_satisfied": all_ok, "constraint_acc": frac}
        if item.meta.get("level") is not None:
            values[f"format_satisfied/level:{item.meta['level']}"] = all_ok
        return Score(values, details={"level": item.meta.get("level"), "constraints": verdicts})


class _LevelOne:
    """Restricts a procedural task to level 1: the level a ~1M-parameter CPU model learns in minutes.

    Levels 2-4 stay near zero for such models and dilute a mixture's effect below the CIs, so the CPU demo scores
    on these (same generators, verifiers and held-out split; 300 level-1 items each).
    """

    level: ClassVar[int | None] = 1


@register_task
class ProcMathL1(_LevelOne, ProcMath):
    name = "proc-math-l1"
    description = "Procedural math, level 1 only (held-out split, 300 items), final-answer match"


@register_task
class ProcCodeL1(_LevelOne, ProcCode):
    name = "proc-code-l1"
    description = "Procedural Python functions, level 1 only (held-out split, 300 items), asserts in the sandbox"


@register_task
class ProcChatL1(_LevelOne, ProcChat):
    name = "proc-chat-l1"
    description = "Procedural format-constrained chat, level 1 only (held-out split, 300 items)"
