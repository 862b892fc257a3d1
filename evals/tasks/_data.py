"""Find a benchmark's rows: the data root first (`MIXLAB_DATA`, default ../shared/data), then its hub name.

A missing file is the most common user error, so the message names the task, the exact path looked at and the
hub dataset that would have been used with a network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mixlab.errors import MixlabError
from mixlab.jsonl import read_jsonl


def load_rows(
    task: str,
    data_root: Path | None,
    rel_path: str,
    hub: str,
    hub_config: str | None = None,
    split: str = "test",
) -> list[dict[str, Any]]:
    """Rows of `data_root/rel_path` (jsonl), else of the hub dataset `hub` (`hub_config`, `split`)."""
    if data_root is not None:
        path = Path(data_root) / rel_path
        if path.is_file():
            return read_jsonl(path)
    where = f"{Path(data_root) / rel_path}" if data_root is not None else f"<data root>/{rel_path} (no data root set)"
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise MixlabError(
            f"task {task}: data not found at {where}, and the hub dataset {hub!r} cannot be fetched offline "
            "(set MIXLAB_DATA to the benchmark data root)"
        )
    try:
        import datasets

        ds = datasets.load_dataset(hub, hub_config, split=split)
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear message
        raise MixlabError(
            f"task {task}: data not found at {where}, and loading hub dataset {hub!r}"
            f"{f' ({hub_config})' if hub_config else ''} failed: {type(exc).__name__}: {exc}"
        ) from None
    return [dict(row) for row in ds]


def apply_limit(rows: list, limit: int | None) -> list:
    if limit is not None and limit < 0:
        raise MixlabError(f"limit must be >= 0, got {limit}")
    return rows if limit is None else rows[:limit]
