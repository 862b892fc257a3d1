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


def main() -> None:
    try:
        # Non-standalone mode returns the code of `typer.Exit(code)` instead of exiting: pass it on.
        code = app(standalone_mode=False)
    except MixlabError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if isinstance(code, int) and code != 0:
        sys.exit(code)


if __name__ == "__main__":
    main()
