"""The one provenance record every run row carries: git sha (with dirty state), package versions, device, seed.

Training, eval, sweep and ladder rows all get theirs from `collect()` through `Store.start_run`, so rows of
different kinds agree on what they record and how.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata

from mixlab.paths import REPO_ROOT

# One list for every row. Missing ones (vllm on CPU, fla-core without a GPU) are left out of the record.
PACKAGES = ("mixlab", "torch", "transformers", "trl", "accelerate", "datasets", "tokenizers", "duckdb", "triton",
            "fla-core", "vllm")


@dataclass(frozen=True)
class Provenance:
    git_sha: str | None
    packages: dict[str, str]
    device: str
    seed: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@functools.cache
def git_sha() -> str | None:
    """HEAD of the mixlab checkout, with `-dirty` when tracked files differ from it; None outside a checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        sha = head.stdout.strip() if head.returncode == 0 else ""
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def device_description() -> str:
    # mixlab.device imports torch; importing it here, not at the top, keeps torch out of the store's import path
    # (the dashboard imports the store and must start fast).
    from mixlab.device import describe_device

    return describe_device()


def collect(seed: int | None = None) -> Provenance:
    """The provenance of this process now."""
    return Provenance(git_sha=git_sha(), packages=dict(package_versions()), device=device_description(), seed=seed)
