"""Dashboard fixtures: one realistic sample database per session, built through the real store API."""

from __future__ import annotations

import pytest

from mixlab.dashboard import sample_data


@pytest.fixture(scope="session")
def sample_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("dashboard") / "sample.duckdb"
    summary = sample_data.build(path, n_runs=36, samples_per_task=12, seed=0)
    assert summary.runs == 36 and summary.eval_samples > 0
    return path


@pytest.fixture
def use_db(monkeypatch):
    """Point the app (which reads MIXLAB_DB) at a given file."""

    def _use(path):
        monkeypatch.setenv("MIXLAB_DB", str(path))
        return path

    return _use
