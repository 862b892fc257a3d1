"""Tripwire for issue 9 (fresh machine): the repo root is never on sys.path, so our top-level `kernels/` folder can
never shadow the PyPI `kernels` that transformers (>= 5.25) imports — in this process, in every child that
`mixlab.procs` starts, and in the console script, all with the repo root as cwd."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixlab import procs

REPO = Path(__file__).resolve().parents[2]

# In a child: transformers' hub-kernels integration must find the real `kernels` distribution, and the model
# (which imports transformers) must load. Prints where `kernels` came from.
PROBE = """
import importlib.metadata, pathlib, kernels
import transformers.integrations.hub_kernels
import mixlab.model, mixlab.kernels
from mixlab.model import KimiLinearForCausalLM, get_preset
KimiLinearForCausalLM(get_preset("tiny"))
dist = importlib.metadata.distribution("kernels")
print(pathlib.Path(kernels.__file__).resolve())
print(pathlib.Path(dist.locate_file("kernels/__init__.py")).resolve())
print(pathlib.Path(mixlab.kernels.__file__).resolve())
"""


def _needs_real_kernels() -> None:
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the PyPI `kernels` distribution is not installed (transformers < 5.25 does not need it)")


def test_repo_root_is_not_on_this_processes_sys_path():
    entries = [Path(p or ".").resolve() for p in sys.path]
    assert REPO not in entries, sys.path


def test_children_get_safe_path():
    cmd = procs.argv(["-c", "print(1)"])
    assert cmd[:2] == [sys.executable, "-P"] and procs.env({})["PYTHONSAFEPATH"] == "1"
    out = procs.run(["-c", "import sys, json; print(json.dumps(sys.path)); print(sys.flags.safe_path)"], cwd=REPO,
                    capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    path_json, safe = out.stdout.strip().splitlines()
    assert safe == "True"
    assert REPO not in [Path(p or ".").resolve() for p in json.loads(path_json)], path_json


def test_transformers_kernels_integration_and_model_from_repo_root():
    _needs_real_kernels()
    out = procs.run(["-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    imported, from_dist, ours = out.stdout.strip().splitlines()[-3:]
    assert imported == from_dist, "transformers did not get the PyPI `kernels` distribution"
    assert Path(ours) == REPO / "kernels" / "__init__.py"


def test_the_hazard_is_real_without_the_helper():
    """Control: started the unsafe way (`python -c` from the repo root), `import kernels` finds our folder, which
    refuses with a message that says what to do. Deliberately bypasses mixlab.procs: if this import ever worked,
    the tripwire above would prove nothing."""
    _needs_real_kernels()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    out = subprocess.run([sys.executable, "-c", "import transformers.integrations.hub_kernels"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("ImportError: mixlab's kernels/ folder shadows the PyPI")
    assert f'"{REPO / "kernels" / "__init__.py"}"' in out.stderr


@pytest.mark.parametrize("args", [
    ["--help"],
    ["demo", "--help"],
    ["run", "--help"],
    ["serve", "--help"],
    ["model", "info", "tiny", "--json"],  # imports the model code, hence transformers
])
def test_cli_entry_points_from_repo_root(args):
    out = procs.run(procs.mixlab_args(*args), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip()


def test_console_script_from_repo_root():
    script = Path(sys.executable).with_name("mixlab")
    if not script.is_file():
        pytest.skip("no `mixlab` console script beside this interpreter (not installed in a venv)")
    # The console script itself runs without the helper: a script's folder (the venv's bin/) goes on sys.path,
    # never cwd; PYTHONSAFEPATH is dropped to prove that.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    out = subprocess.run([str(script), "model", "info", "tiny", "--json"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def test_math_verify_worker_from_repo_root(monkeypatch):
    from mixlab.evals.tasks.math import _Worker

    monkeypatch.chdir(REPO)
    worker = _Worker()
    try:
        assert worker.call("boxed", "\\frac{1}{2}", "0.5", timeout_s=60) is True
    finally:
        worker.kill()


def test_dashboard_interpreter_from_repo_root(tmp_path):
    from mixlab.dashboard.cli import streamlit_command

    cmd, env = streamlit_command(tmp_path / "x.duckdb", 8501, "127.0.0.1")
    assert cmd[:2] == [sys.executable, "-P"] and env["PYTHONSAFEPATH"] == "1"
    version = cmd[: cmd.index("run")] + ["version"]  # same interpreter, flags and env as the server
    out = subprocess.run(version, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Streamlit" in out.stdout, out.stderr


# Files allowed to name sys.executable: the helper itself, and the code sandbox, which runs candidate programs under
# its own interpreter and scrubbed environment (bench_sandbox reproduces naive sandboxes as baselines).
_ALLOWED = {"mixlab/procs.py", "evals/sandbox.py", "evals/sandbox_worker.py", "bench/bench_sandbox.py",
            "tests/foundation/test_fresh_machine.py"}


_SPAWNERS = {"run", "Popen", "call", "check_call", "check_output", "execv", "execve", "execvp", "execvpe", "spawnv",
             "spawnve", "create_subprocess_exec"}


def _called_name(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _is_sys_executable(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "executable" and isinstance(node.value, ast.Name)
            and node.value.id == "sys")


def _source_files() -> list[Path]:
    """The project's own .py files: skips virtualenvs, build output and hidden folders without walking them."""
    out = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__")) and d not in {"build", "runs", "node_modules"}]
        out += [Path(folder) / f for f in files if f.endswith(".py")]
    return sorted(out)


def test_every_spawn_goes_through_the_helper():
    offenders = []
    for path in _source_files():
        rel = path.relative_to(REPO).as_posix()
        if rel in _ALLOWED:
            continue
        try:
            tree = ast.parse(path.read_text(), filename=rel)
        except SyntaxError:  # deliberately broken candidate programs (sandbox fixtures) spawn nothing
            continue
        for node in ast.walk(tree):
            # A command line: sys.executable inside a list/tuple literal, or passed straight to a spawning call.
            if isinstance(node, (ast.List, ast.Tuple)):
                candidates = node.elts
            elif isinstance(node, ast.Call) and _called_name(node) in _SPAWNERS:
                candidates = node.args
            else:
                continue
            offenders += [f"{rel}:{c.lineno}" for c in candidates if _is_sys_executable(c)]
    assert not offenders, f"spawn Python children through mixlab.procs, not sys.executable: {offenders}"
