"""Shared fixtures. Every test gets its own runs folder and DuckDB file; nothing touches the user's `runs/`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The repo root must never be importable as a folder of top-level packages: its `kernels/` would shadow the PyPI
# `kernels` that transformers imports. `python -m pytest` without PYTHONSAFEPATH=1 prepends cwd; drop it here,
# before anything imports transformers (`make test` and CI set PYTHONSAFEPATH=1, so this is only a safety net).
_REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _REPO]
os.environ["PYTHONSAFEPATH"] = "1"


def _expose_tests_package() -> None:
    """multiprocessing "spawn" children unpickle a test's worker function by module name (`tests.x.test_y`), which
    importlib mode does not make importable. Expose the `tests` package alone (a symlink in a private folder put on
    sys.path, which children inherit), never the repo root beside it."""
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="mixlab-tests-path-")
    atexit.register(shutil.rmtree, folder, True)
    os.symlink(_REPO / "tests", os.path.join(folder, "tests"))
    sys.path.append(folder)


_expose_tests_package()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Without a GPU, mixlab's Triton kernels are tested in the interpreter; triton reads this when a kernel is defined,
# so it must be set before anything imports mixlab.kernels.
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from mixlab.paths import data_root as _data_root


@pytest.fixture(autouse=True)
def isolated_runs(tmp_path, monkeypatch):
    """Point MIXLAB_RUNS / MIXLAB_DB at a per-test temp folder."""
    runs = tmp_path / "runs"
    monkeypatch.setenv("MIXLAB_RUNS", str(runs))
    monkeypatch.setenv("MIXLAB_DB", str(runs / "mixlab.duckdb"))
    return runs


@pytest.fixture
def db_path(isolated_runs):
    return isolated_runs / "mixlab.duckdb"


@pytest.fixture
def store(db_path):
    from mixlab.store import Store

    return Store(db_path)


@pytest.fixture(scope="session")
def bench_slices():
    """Small committed slices of the benchmarks (tests/fixtures/data; origin and licences in its SOURCE.txt): the
    same on every machine, with or without ../shared. Use `data_root` only for checks that need the full sets."""
    return Path(__file__).parent / "fixtures" / "data"


@pytest.fixture(scope="session")
def data_root():
    """The full benchmark data root (../shared/data or MIXLAB_DATA); tests needing it skip when it is absent."""
    root = _data_root()
    if root is None or not root.is_dir():
        pytest.skip("benchmark data root absent (set MIXLAB_DATA)")
    return root
