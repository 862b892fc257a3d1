"""Level-1 variants of the procedural eval tasks, for the CPU demo.

The demo mixtures train a ~1M-parameter model on level-1 procedural data (what it can learn on 2 cores in
minutes); the `procedural` suite mixes levels 1-4, where levels 2-4 stay near zero for every mixture and dilute the
mixture effect below the CIs. These tasks are the same generators, verifiers and held-out split, restricted to
level 1 (300 items each), so the demo measures in-distribution generalisation to unseen level-1 problems.
Registered as `proc-math-l1`, `proc-code-l1`, `proc-chat-l1` whenever mixlab.recipes runs a recipe.
(They belong with the other procedural tasks in `mixlab.evals.tasks.procedural`; kept here until they move.)
"""

from __future__ import annotations

from typing import Any

from mixlab.evals.tasks.base import register_task, task_names
from mixlab.evals.tasks.procedural import ProcChat, ProcCode, ProcMath

DEMO_SUITE = "proc-math-l1,proc-code-l1,proc-chat-l1"


class _Level1:
    level = 1

    def _generate(self, n: int) -> list[dict[str, Any]]:
        from mixlab.evals import procedural

        return procedural.generate(self.kind, self.split, n, seed=self.seed, level=self.level)  # type: ignore[attr-defined]


class ProcMathL1(_Level1, ProcMath):
    name = "proc-math-l1"
    description = "Procedural math, level 1 only (held-out split, 300 items), final-answer match"


class ProcCodeL1(_Level1, ProcCode):
    name = "proc-code-l1"
    description = "Procedural Python functions, level 1 only (held-out split, 300 items), asserts in the sandbox"


class ProcChatL1(_Level1, ProcChat):
    name = "proc-chat-l1"
    description = "Procedural format-constrained chat, level 1 only (held-out split, 300 items)"


for _cls in (ProcMathL1, ProcCodeL1, ProcChatL1):
    if _cls.name not in task_names():
        register_task(_cls)
