"""`mixlab eval ...`, `mixlab sandbox`, `mixlab serve`: glue only; each part lives in its own cli_* module.

`mixlab eval CHECKPOINT --suite NAME` is sugar for `mixlab eval run CHECKPOINT --suite NAME`: a first argument
that is not a subcommand name is routed to `run`.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from mixlab.evals import cli_compare, cli_run, cli_sandbox, cli_tasks


class _DefaultToRun(TyperGroup):
    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-") and "run" in self.commands:
            args = ["run", *args]
        return super().resolve_command(ctx, args)


eval_app = typer.Typer(
    cls=_DefaultToRun,
    help="Evaluate checkpoints: `mixlab eval CHECKPOINT --suite NAME`, `eval list`, `eval check TASK`.",
    no_args_is_help=True,
)

def register(app: typer.Typer) -> None:
    for part in (cli_tasks, cli_run, cli_sandbox, cli_compare):
        part.register(app, eval_app)
    app.add_typer(eval_app, name="eval")
