"""Built-in evaluation tasks. Each module registers its tasks with `@register_task` on import."""

import importlib

# Modules are imported if present so that tasks can land independently.
for _module in ("procedural", "math", "code", "ifeval", "chat"):
    try:
        importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"{__name__}.{_module}":
            raise
