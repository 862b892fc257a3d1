"""Built-in evaluation tasks. Each module registers its tasks with `@register_task` on import."""

from mixlab.evals.tasks import chat, code, ifeval, math, procedural  # noqa: F401  (registers the tasks)
