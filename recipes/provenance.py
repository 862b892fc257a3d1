"""What makes a run reproducible from its DuckDB row: git sha, package versions, device."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata

from mixlab.paths import REPO_ROOT

PACKAGES = ("mixlab", "torch", "transformers", "trl", "accelerate", "datasets", "tokenizers", "duckdb", "triton",
            "fla-core", "vllm")


@functools.cache
def git_sha() -> str | None:
    """HEAD of the mixlab checkout, with `-dirty` when tracked files differ from it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def device_description() -> str:
    import torch

    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return f"{n}x {torch.cuda.get_device_name(0)}"
    threads = torch.get_num_threads()
    cpu = platform.processor() or platform.machine()
    return f"cpu ({cpu}, {os.cpu_count()} cores, {threads} torch threads)"
