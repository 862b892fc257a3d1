"""The one way mixlab starts a child Python process.

The repo root must never be on a child's `sys.path`: its top-level `kernels/` folder would shadow the PyPI `kernels`
package that transformers (>= 5.25) imports, and `evals/` another PyPI package. Plain `python -m ...`, `python -c ...`
and `python script.py` all prepend a directory (cwd or the script's folder), so every child gets `-P` and
`PYTHONSAFEPATH=1` (the latter also reaches grandchildren that are started some other way, e.g. by multiprocessing).

    from mixlab import procs
    procs.run(["-m", "mixlab", "version"], capture_output=True, text=True)
    procs.popen(procs.mixlab_args("run", "recipe.yaml"), stdout=...)

The code sandbox is the one exception: it runs candidate programs under its own scrubbed environment and interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any


def argv(args: Sequence[str], python: str | None = None) -> list[str]:
    """The command line of a child interpreter: `python -P <args>`."""
    return [python or sys.executable, "-P", *args]


def mixlab_args(*args: str) -> list[str]:
    """Interpreter arguments that run the `mixlab` CLI (same code as the console script)."""
    return ["-m", "mixlab", *args]


def env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The child's environment: `base` (default: ours) plus `extra`, always with PYTHONSAFEPATH=1."""
    out = dict(os.environ if base is None else base)
    out.update(extra)
    out["PYTHONSAFEPATH"] = "1"
    return out


def run(args: Sequence[str], *, env_base: Mapping[str, str] | None = None, python: str | None = None,
        **kwargs: Any) -> subprocess.CompletedProcess:
    """`subprocess.run` of a child interpreter with `args` (e.g. `["-m", "mixlab", "version"]`)."""
    return subprocess.run(argv(args, python), env=env(env_base), **kwargs)


def popen(args: Sequence[str], *, env_base: Mapping[str, str] | None = None, python: str | None = None,
          **kwargs: Any) -> subprocess.Popen:
    """`subprocess.Popen` of a child interpreter with `args`."""
    return subprocess.Popen(argv(args, python), env=env(env_base), **kwargs)


def exec_(args: Sequence[str], *, env_base: Mapping[str, str] | None = None) -> None:
    """Replace this process by a child interpreter (no return)."""
    cmd = argv(args)
    os.execve(cmd[0], cmd, env(env_base))
