"""Tiny recipes that train for real (TRL trainers, the tiny hybrid preset) in seconds."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from mixlab import procs

REPO = Path(__file__).resolve().parents[2]

SFT_ARGS = {"max_steps": 3, "per_device_train_batch_size": 4, "max_length": 96, "logging_steps": 1,
            "learning_rate": 2e-3}
EVAL = {"suite": "proc-math", "limit": 2, "max_new_tokens": 6}


def write_recipe(tmp_path: Path, name: str, stages: list[dict], **top) -> Path:
    data = {"name": name, "seed": 0, "model": {"preset": "tiny"}, **top, "stages": stages}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def mixlab(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    return procs.run(procs.mixlab_args(*args), cwd=REPO, env_base=full_env, capture_output=True, text=True, **kw)
