"""Named suites of tasks (`mixlab eval CHECKPOINT --suite NAME`).

Suites hold task *names*, resolved through the registry only when used, so a suite can name a task whose module
has not landed (or whose optional dependency is missing) without breaking the others. `resolve_suite` says which
names are present and which are missing; callers decide whether missing ones are an error.
"""

from __future__ import annotations

from mixlab.errors import MixlabError
from mixlab.evals.tasks.base import task_names
from mixlab.yamlio import did_you_mean

SUITES: dict[str, tuple[str, ...]] = {
    # Tiny CPU models have signal here; the demo's trade-off is measured on these.
    "procedural": ("proc-math", "proc-code", "proc-chat"),
    "procedural-l1": ("proc-math-l1", "proc-code-l1", "proc-chat-l1"),
    "leaderboard": ("gsm8k", "math500", "humaneval", "mbpp"),
    "usability": ("ifeval", "mt-bench", "alpaca-eval", "arena-hard"),
    # Everything that needs no judge model (rule- or execution-verified).
    "verifiable": ("proc-math", "proc-code", "proc-chat", "gsm8k", "math500", "humaneval", "mbpp", "ifeval"),
    "math": ("proc-math", "gsm8k", "math500"),
    "code": ("proc-code", "humaneval", "mbpp", "mbpp-sanitized"),
}
ALL = "all"  # every registered task


def suite_names() -> list[str]:
    return sorted([*SUITES, ALL])


def resolve_suite(spec: str) -> tuple[list[str], list[str]]:
    """(present, missing) task names for a suite name, a task name, or a comma-separated mix of both.

    Unknown names raise MixlabError with the closest suite/task name.
    """
    registered = task_names()
    wanted: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part == ALL:
            wanted.extend(registered)
        elif part in SUITES:
            wanted.extend(SUITES[part])
        elif part in registered:
            wanted.append(part)
        else:
            known = [*suite_names(), *registered]
            hint = did_you_mean(part, known)
            raise MixlabError(f"unknown suite or task {part!r}{hint}; suites: {suite_names()}")
    if not wanted:
        raise MixlabError(f"suite spec {spec!r} names no tasks")
    ordered = list(dict.fromkeys(wanted))  # de-duplicate, keep order
    present = [name for name in ordered if name in registered]
    missing = [name for name in ordered if name not in registered]
    return present, missing


def suite_tasks(spec: str, allow_missing: bool = True) -> list[str]:
    """Task names of a suite that are registered; with allow_missing=False a missing one is an error."""
    present, missing = resolve_suite(spec)
    if missing and not allow_missing:
        raise MixlabError(f"suite {spec!r}: tasks not available: {missing}")
    if not present:
        raise MixlabError(f"suite {spec!r}: none of its tasks are available (missing: {missing})")
    return present
