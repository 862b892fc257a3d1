"""The one `mixlab` command. Each domain folder owns its commands in its own `cli.py` exposing
`register(app)`; this module only wires them together (explicitly, below) and turns `MixlabError` into a
one-line error.

Domain CLI modules keep heavy imports (torch, transformers, streamlit) inside the command functions so that
`mixlab --help` stays fast.
"""

from __future__ import annotations

import sys

import typer

from mixlab import __version__
from mixlab.dashboard import cli as dashboard_cli
from mixlab.errors import MixlabError
from mixlab.evals import cli as evals_cli
from mixlab.mixtures import cli as mixtures_cli
from mixlab.model import cli as model_cli
from mixlab.recipes import cli as recipes_cli

app = typer.Typer(
    name="mixlab",
    help="Post-training data-mixture lab for Kimi Linear-style hybrid LLMs: "
    "build mixtures, fine-tune, evaluate, compare leaderboard vs usability.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

@app.callback()
def _root() -> None:
    """Post-training data-mixture lab for Kimi Linear-style hybrid LLMs."""


@app.command("version")
def version() -> None:
    """Print the mixlab version."""
    typer.echo(__version__)


# The order is the order of `mixlab --help`.
for _domain in (model_cli, mixtures_cli, recipes_cli, evals_cli, dashboard_cli):
    _domain.register(app)


def _usage_error_line(exc: Exception) -> str:
    """A click/typer usage error as one line: `error: <command path>: <problem> (try '<command> --help')`."""
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None) or "mixlab"
    message = " ".join(str(exc.format_message()).split())  # type: ignore[attr-defined]
    return f"error: {command}: {message} (try '{command} --help')"


def _is_click_exception(exc: BaseException) -> bool:
    # typer >= 0.29 bundles its own click (`typer._click`), whose ClickException derives from the public
    # `typer.TyperException`; a standalone click may also be in play through a plugin.
    if isinstance(exc, typer.TyperException) and hasattr(exc, "format_message"):
        return True
    try:
        import click
    except ImportError:
        return False
    return isinstance(exc, click.exceptions.ClickException)


def main() -> None:
    try:
        # Non-standalone mode returns the code of `typer.Exit(code)` instead of exiting, and raises parse errors
        # instead of printing them: both are handled here so every failure is one line and a known exit code.
        code = app(prog_name="mixlab", standalone_mode=False)
    except MixlabError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:
        if not _is_click_exception(exc):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # `mixlab` or `mixlab eval` alone: the help is the answer
            exc.show()  # type: ignore[attr-defined]
            sys.exit(0)
        typer.echo(_usage_error_line(exc), err=True)
        sys.exit(2)
    if isinstance(code, int) and code != 0:
        sys.exit(code)


if __name__ == "__main__":
    main()
