"""The task contract every evaluation implements, and the task registry.

A task = a loader (data root or hub name), a chat prompt format, and a scorer. Generation and judging live
elsewhere (`evals/backends`, `evals/judges`); the runner glues them. Decontamination in `mixtures/` reads every
registered task's items through `contamination_texts`.

`Task` declares every hook the eval runner calls, each with a default, in the order the runner calls them:
`load` → `generate` → `score_batch` (→ `score`) → `prepare_aggregate` → `aggregate`; `needs_judge` / `judge`,
`judgements_per_item` (progress) and `sample_metric` (the per-sample score column) complete it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from mixlab.errors import MixlabError
from mixlab.evals.stats import mean_ci
from mixlab.yamlio import did_you_mean

# metric -> (mean, ci_low, ci_high, ci_method)
Summary = dict[str, tuple[float, float, float, str]]


@dataclass
class EvalItem:
    item_id: str
    messages: list[dict[str, str]]  # the chat prompt: [{"role": "user", "content": ...}, ...]
    reference: Any = None  # gold answer, unit tests, instruction kwargs, reference answer...
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_text(self) -> str:
        return "\n".join(m["content"] for m in self.messages)


@dataclass
class Score:
    """Per-sample scores: metric name -> value (0/1 for binary metrics), plus an optional rationale."""

    values: dict[str, float]
    rationale: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def primary(self) -> float:
        return next(iter(self.values.values())) if self.values else 0.0


@dataclass
class Completion:
    """A model's answer to one item (all turns for multi-turn items), with token counts for the sample row."""

    text: str
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Task(ABC):
    name: ClassVar[str]
    category: ClassVar[str]  # leaderboard | usability
    description: ClassVar[str] = ""
    metrics: ClassVar[tuple[str, ...]]  # the first is the primary metric
    binary_metrics: ClassVar[bool] = True  # Wilson CIs when True, bootstrap otherwise
    max_new_tokens: ClassVar[int] = 512
    stop: ClassVar[tuple[str, ...]] = ()
    needs_judge: ClassVar[bool] = False  # the runner refuses to start without a judge and attaches it as `judge`
    # Items drawn from templates whose training split differs only in parameters: decontamination checks them with
    # the exact gate alone (a near-copy match would flag every templated sibling).
    templated: ClassVar[bool] = False
    # The metric stored as a sample's score: the primary one unless that exists only in aggregate
    # (alpaca-eval: per-item win_rate vs aggregate lc_win_rate).
    sample_metric: ClassVar[str | None] = None
    judge: Any = None

    @abstractmethod
    def load(self, data_root: Path | None, limit: int | None = None) -> list[EvalItem]:
        """Items in a fixed order. Missing data raises MixlabError naming the task and the expected path/hub name."""

    @abstractmethod
    def score(self, item: EvalItem, output: str) -> Score:
        """Never raises on malformed model output: a broken answer scores 0."""

    def reference_output(self, item: EvalItem) -> str:
        """The task's own reference solution as a model would write it (for `mixlab eval check`)."""
        raise MixlabError(f"task {self.name} has no reference solutions to check")

    def contamination_texts(self, item: EvalItem) -> list[str]:
        """Texts the decontamination gate matches training rows against."""
        texts = [item.prompt_text]
        if isinstance(item.reference, str):
            texts.append(item.reference)
        return texts

    # -- hooks of the eval runner ---------------------------------------------------------------------------

    def generate(self, backend: Any, items: Sequence[EvalItem], cfg: Any) -> list[Completion]:
        """One completion per item (`cfg.n` > 1 keeps the extra samples in `extra["samples"]`). Multi-turn tasks
        override it (MT-Bench asks turn 2 after the model's own turn-1 answer)."""
        gens = backend.generate_detailed([item.messages for item in items], cfg)
        return [
            Completion(
                text=g.texts[0],
                prompt_tokens=g.prompt_tokens,
                output_tokens=g.output_tokens[0] if g.output_tokens else None,
                finish_reason=g.finish_reasons[0] if g.finish_reasons else None,
                extra={"samples": g.texts[1:]} if len(g.texts) > 1 else {},
            )
            for g in gens
        ]

    def score_batch(self, items: Sequence[EvalItem], completions: Sequence[Completion],
                    progress: Callable[[int], None] | None = None) -> list[Score]:
        """Scores of a chunk; `progress(k)` reports k more judgements done. Judged and sandboxed tasks batch."""
        scores = []
        for item, comp in zip(items, completions):
            try:
                scores.append(self.score(item, comp.text))
            except Exception as exc:  # noqa: BLE001 - the contract says scorers never raise; if one does, score 0
                scores.append(Score({self.metrics[0]: 0.0}, details={"scorer_error": f"{type(exc).__name__}: {exc}"}))
            if progress is not None:
                progress(1)
        return scores

    def judgements_per_item(self) -> int:
        """Scoring steps per item, for the progress bar (pairwise games are played twice)."""
        return 1

    def prepare_aggregate(self, *, store: Any, eval_id: str, judge_id: str | None) -> None:
        """Read what `aggregate` needs beyond this run's scores (pairwise tasks: other models' judgements)."""

    def aggregate(self, scores: Sequence[Score]) -> Summary:
        """Per metric mean and 95 % CI: Wilson for 0/1 metrics, bootstrap otherwise."""
        return {m: mean_ci([s.values[m] for s in scores if m in s.values], binary=self.binary_metrics)
                for m in self.metrics}

    def sample_score(self, score: Score) -> float | None:
        """The value stored as the sample's score; None when it could not be parsed."""
        return score.values.get(self.sample_metric or self.metrics[0])


_REGISTRY: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"task name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


# The built-in tasks register themselves when the package `mixlab.evals.tasks` is imported, which Python does
# before any of its modules (this one included), so the registry below is complete once `base` is importable.


def get_task(name: str) -> Task:
    if name not in _REGISTRY:
        raise MixlabError(f"unknown task {name!r}{did_you_mean(name, _REGISTRY)}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]()


def task_names() -> list[str]:
    return sorted(_REGISTRY)
