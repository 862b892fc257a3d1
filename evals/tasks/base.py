"""The task contract every evaluation implements, and the task registry.

A task = a loader (data root or hub name), a chat prompt format, and a scorer. Generation and judging live
elsewhere (`evals/backends`, `evals/judges`); the runner glues them. Decontamination in `mixtures/` reads every
registered task's items through `contamination_texts`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mixlab.errors import MixlabError


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


class Task(ABC):
    name: ClassVar[str]
    category: ClassVar[str]  # leaderboard | usability
    description: ClassVar[str] = ""
    metrics: ClassVar[tuple[str, ...]]  # the first is the primary metric
    binary_metrics: ClassVar[bool] = True  # Wilson CIs when True, bootstrap otherwise
    max_new_tokens: ClassVar[int] = 512
    stop: ClassVar[tuple[str, ...]] = ()

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


_REGISTRY: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"task name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin_tasks() -> None:
    # Importing the package registers every built-in task (see tasks/__init__.py).
    import mixlab.evals.tasks  # noqa: F401


def get_task(name: str) -> Task:
    _load_builtin_tasks()
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise MixlabError(f"unknown task {name!r}{hint}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]()


def task_names() -> list[str]:
    _load_builtin_tasks()
    return sorted(_REGISTRY)
