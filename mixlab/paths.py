"""Where things live: repo root, run folder, DuckDB file, data root, artifacts, tokenizers.

Every location can be overridden by an environment variable so tests and CI never touch a user's files.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# A source checkout (editable install) has the project file beside the packages; a regular install does not.
IS_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file()


def runs_dir() -> Path:
    """Root for everything mixlab writes (`MIXLAB_RUNS`, default `<repo>/runs`, or `./runs` for a regular install)."""
    default = REPO_ROOT / "runs" if IS_CHECKOUT else Path.cwd() / "runs"
    return Path(os.environ.get("MIXLAB_RUNS", default))


def default_db_path() -> Path:
    """The DuckDB file (`MIXLAB_DB`, default `runs/mixlab.duckdb`)."""
    env = os.environ.get("MIXLAB_DB")
    return Path(env) if env else runs_dir() / "mixlab.duckdb"


def artifacts_dir() -> Path:
    return runs_dir() / "artifacts"


def checkpoints_dir() -> Path:
    return runs_dir() / "checkpoints"


def data_root(explicit: str | os.PathLike | None = None) -> Path | None:
    """Benchmark/SFT data root: explicit arg, then `MIXLAB_DATA`, then `../shared/data` when present.

    Returns None when no root exists; callers then fall back to Hugging Face hub names. `MIXLAB_DATA=` (set but
    empty) means "no data root" even where `../shared/data` exists: how tests check a clone with nothing beside it.
    """
    if explicit:
        return Path(explicit)
    env = os.environ.get("MIXLAB_DATA")
    if env is not None:
        return Path(env) if env else None
    for candidate in (REPO_ROOT.parent / "shared" / "data", REPO_ROOT / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


def tokenizers_dir() -> Path:
    """Tokenizers trained here and shipped with the code as package data of `mixlab.model` (one folder per name)."""
    import importlib.util

    # find_spec imports only the parent package `mixlab`, not torch-heavy `mixlab.model`.
    spec = importlib.util.find_spec("mixlab.model")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizers"
