"""Backend choice for the ops in `mixlab.kernels`.

"torch" (default) runs the pure-torch references on any device. "triton" routes the KDA ops to fla-core's Triton
kernels (`chunk_kda`, `fused_recurrent_kda`) for CUDA tensors; it can only be selected when fla-core imports and a
CUDA device exists. CPU tensors always take the torch path (fla's kernels do not run on CPU, not even interpreted).
The environment variable MIXLAB_KERNEL_BACKEND sets the initial choice.
"""

from __future__ import annotations

import difflib
import functools
import os

import torch

from mixlab.errors import MixlabError

BACKENDS = ("torch", "triton")
_backend: str | None = None


@functools.cache
def fla_available() -> bool:
    """True when fla-core's KDA ops import (they need triton, i.e. a GPU build)."""
    try:
        import fla.ops.kda  # noqa: F401
    except Exception:  # ImportError, or triton failing to find a driver
        return False
    return True


def _check(name: str) -> str:
    if name not in BACKENDS:
        close = difflib.get_close_matches(name, BACKENDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise MixlabError(f"unknown kernel backend {name!r}{hint}; choose one of {', '.join(BACKENDS)}")
    if name == "triton":
        if not torch.cuda.is_available():
            raise MixlabError("kernel backend 'triton' not available: no CUDA device (use 'torch')")
        if not fla_available():
            raise MixlabError(
                "kernel backend 'triton' not available: fla-core is not importable "
                "(install the gpu extra: pip install 'mixlab[gpu]')"
            )
    return name


def get_backend() -> str:
    """The active backend name ("torch" or "triton")."""
    global _backend
    if _backend is None:
        _backend = _check(os.environ.get("MIXLAB_KERNEL_BACKEND", "torch"))
    return _backend


def set_backend(name: str) -> None:
    """Select "torch" or "triton"; raises MixlabError when "triton" cannot run here."""
    global _backend
    _backend = _check(name)


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """Whether an op called on these tensors should take the Triton path."""
    return get_backend() == "triton" and all(t is None or t.is_cuda for t in tensors)
