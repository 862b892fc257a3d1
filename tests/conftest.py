"""Shared fixtures. Every test gets its own runs folder and DuckDB file; nothing touches the user's `runs/`."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
def data_root():
    """The benchmark data root (../shared/data); tests needing real data skip when it is absent."""
    root = _data_root()
    if root is None or not root.is_dir():
        pytest.skip("benchmark data root absent (set MIXLAB_DATA)")
    return root
