"""The `mixlab` console script: help, version, and one-line errors with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys


def _mixlab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixlab", *args], capture_output=True, text=True, timeout=120)


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
