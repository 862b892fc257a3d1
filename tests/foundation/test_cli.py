"""The `mixlab` console script: help, version, and one-line errors with a non-zero exit."""

from __future__ import annotations

import subprocess

from mixlab import procs


def _mixlab(*args: str) -> subprocess.CompletedProcess:
    return procs.run(procs.mixlab_args(*args), capture_output=True, text=True, timeout=120)


def test_help_lists_commands():
    out = _mixlab("--help")
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout and "version" in out.stdout


def test_version():
    from mixlab import __version__

    out = _mixlab("version")
    assert out.returncode == 0 and out.stdout.strip() == __version__


def test_unknown_command_fails():
    out = _mixlab("no-such-command")
    assert out.returncode != 0


def test_typer_exit_codes_pass_through():
    # A command raising typer.Exit(3) must exit 3 through `main()` (click's non-standalone mode returns the code).
    out = procs.run(
        ["-c", "import sys; sys.argv=['mixlab','_exit_probe'];"
         "import typer; from mixlab import cli\n"
         "@cli.app.command('_exit_probe')\ndef p():\n    raise typer.Exit(3)\ncli.main()"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 3, out.stderr
