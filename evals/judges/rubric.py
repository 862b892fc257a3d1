"""Rubric judge: verifiable instructions checked by rules, no model.

Two rubric forms, both already verified by their owners' checkers:
- IFEval form `{"instruction_id_list": [...], "kwargs": [...]}` → `mixlab.evals.ifeval_instructions.follows`
  (strict; loose also reported);
- procedural form: a list of constraint dicts `[{"type": "bullets", "n": 3}, ...]` →
  `mixlab.evals.procedural.constraints.check_all`.
The score is the fraction of instructions followed; the verdict "k/n"; the rationale lists each instruction.
"""

from __future__ import annotations

from typing import Any, Sequence

from mixlab.errors import MixlabError
from mixlab.evals import ifeval_instructions as ifi
from mixlab.evals.judges.llm import Judgement
from mixlab.evals.procedural import constraints

TEMPLATE = "rubric@v1"


class RubricJudge:
    name = "rubric"
    id = "rubric"

    def describe(self) -> dict[str, Any]:
        return {"judge": self.name}

    def grade_rubric(self, rubric: Any, answer: str) -> Judgement:
        text = answer if isinstance(answer, str) else ("" if answer is None else str(answer))
        if isinstance(rubric, dict) and "instruction_id_list" in rubric:
            ids = list(rubric["instruction_id_list"])
            kwargs = list(rubric.get("kwargs") or [{}] * len(ids))
            strict, loose = ifi.follows(ids, kwargs, text)
            lines = [f"{'PASS' if s else 'FAIL'} {i} (loose: {'pass' if l else 'fail'})" for i, s, l in zip(ids, strict, loose)]
            followed, total = sum(strict), len(ids)
        elif isinstance(rubric, list) and all(isinstance(c, dict) and "type" in c for c in rubric):
            verdicts = constraints.check_all(rubric, text)
            lines = [f"{'PASS' if ok else 'FAIL'} {constraints.instruction(c)}" for c, ok in zip(rubric, verdicts)]
            followed, total = sum(verdicts), len(rubric)
        else:
            raise MixlabError(
                "rubric judge: a rubric is an IFEval dict {'instruction_id_list', 'kwargs'} or a list of "
                f"constraint dicts with a 'type'; got {type(rubric).__name__}"
            )
        if total == 0:
            return Judgement("0/0", 1.0, "no instructions", TEMPLATE)
        return Judgement(f"{followed}/{total}", followed / total, "\n".join(lines), TEMPLATE)

    def grade_many(self, items: Sequence[tuple[Any, str]]) -> list[Judgement]:
        return [self.grade_rubric(rubric, answer) for rubric, answer in items]
