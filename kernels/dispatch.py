"""Backend choice for the ops in `mixlab.kernels`.

- "auto" (default): CUDA tensors take the fast path — grouped-GEMM MoE (`torch._grouped_mm`), mixlab's own fused
  Triton kernels (gate, gated norm, SwiGLU, ...) and mixlab's own Triton KDA (`kda_backend` says when fla-core's
  runs instead); CPU tensors take the pure-torch references. So a model on a GPU is fast without any setting, and
  CPU CI runs the references.
- "torch": the pure-torch references on any device (the oracle; the GPU reference path of the loss-agreement run).
- "triton": as "auto" with fla-core's KDA kernels; refuses to start unless a CUDA device and fla-core exist
  (explicit opt-in with a check).

`set_fused(False)` keeps the fast path but turns mixlab's own fused Triton kernels off: that is the off-the-shelf
composition (fla KDA + grouped_mm MoE + SDPA) the benchmarks measure against. The environment variables
MIXLAB_KERNEL_BACKEND and MIXLAB_FUSED_KERNELS (0/1) set the initial choices.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings

import torch

from mixlab.errors import MixlabError
from mixlab.yamlio import did_you_mean

BACKENDS = ("auto", "torch", "triton")
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_backend: str | None = None
_fused: bool | None = None


@functools.cache
def fla_available() -> bool:
    """True when fla-core's KDA ops import (they need triton, i.e. a GPU build)."""
    try:
        import fla.ops.kda  # noqa: F401
    except Exception:  # ImportError, or triton failing to find a driver
        return False
    return True


@functools.cache
def triton_available() -> bool:
    """True when triton imports (mixlab's own kernels; on CPU only useful under TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def check_backend(name: str) -> str:
    """`name` if it is a backend that can run here, else MixlabError saying why."""
    if name not in BACKENDS:
        hint = did_you_mean(name, BACKENDS)
        raise MixlabError(f"unknown kernel backend {name!r}{hint}; choose one of {', '.join(BACKENDS)}")
    if name == "triton":
        if not torch.cuda.is_available():
            raise MixlabError("kernel backend 'triton' not available: no CUDA device (use 'auto' or 'torch')")
        if not fla_available():
            raise MixlabError(
                "kernel backend 'triton' not available: fla-core is not importable "
                "(install the gpu extra: pip install 'mixlab[gpu]')"
            )
    return name


def get_backend() -> str:
    """The active backend name ("auto", "torch" or "triton")."""
    global _backend
    if _backend is None:
        _backend = check_backend(os.environ.get("MIXLAB_KERNEL_BACKEND", "auto"))
    return _backend


def env_flag(name: str, default: bool) -> bool:
    """The on/off switch in environment variable `name` (1/0, true/false, yes/no, on/off; unset or empty: `default`).
    Anything else raises MixlabError naming the variable, so a typo never silently keeps a path off."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _ON or raw in _OFF:
        return raw in _ON
    raise MixlabError(f"{name}={raw!r}{did_you_mean(raw, _ON + _OFF)}; use 1 or 0 (or on/off, true/false, yes/no)")


def set_backend(name: str) -> None:
    """Select "auto", "torch" or "triton"; raises MixlabError when "triton" cannot run here."""
    global _backend
    _backend = check_backend(name)


@contextlib.contextmanager
def backend_scope(name: str):
    """Run a block with backend `name`, then restore the choice made before: a recipe run selects its own backend,
    and whatever runs later in the same process (a test, a second recipe) must not inherit it."""
    global _backend
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        _backend = previous


def fused_enabled() -> bool:
    global _fused
    if _fused is None:
        _fused = env_flag("MIXLAB_FUSED_KERNELS", True)
    return _fused


def set_fused(enabled: bool) -> None:
    """Turn mixlab's own fused Triton kernels on or off (the fast path's other parts are unaffected)."""
    global _fused
    _fused = bool(enabled)


def fast_path(*tensors: torch.Tensor | None) -> bool:
    """Whether an op on these tensors takes a GPU fast path (backend not "torch", every tensor on CUDA)."""
    return get_backend() != "torch" and all(t is None or t.is_cuda for t in tensors)


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """Whether a KDA op on these tensors should call fla-core's Triton kernels."""
    return fast_path(*tensors) and fla_available()


KDA_BACKENDS = ("auto", "fla", "triton", "torch")


def kda_backend(*tensors: torch.Tensor | None) -> str:
    """Which chunked-KDA implementation runs on these tensors: "fla", "mixlab" (kda_triton.py) or "torch".

    MIXLAB_KDA_BACKEND (read per call) picks among the fast ones: "auto" (default) takes mixlab's own Triton kernels
    where their head dims fit (K, V powers of two, 16–256), else fla-core where it imports, else the reference (the
    "triton" kernel backend, whose meaning is fla-core's kernels, makes "auto" take fla-core first); "fla" takes
    fla-core where it imports; "triton" mixlab's kernels; "torch" the reference. CPU tensors and the "torch" kernel
    backend always get the reference.

    Why mixlab's first (BENCHMARKS.md, waves 8-12): on an H100 its forward + backward is 1.06-1.10x fla's speed at
    H=32, T = 2k/8k/32k, and the 1b-a150m CUDA-graph step ties or leads (1.00x at 8k tokens, 1.03x at 16k); the
    recipe's 200-step loss curve on it stays within bf16 noise and is the same bits run to run (waves 8, 10, 12); its
    kernels compile in seconds, where fla-core autotunes for 3-7 minutes on a cold cache (its wave-9 loss spike did
    not recur in wave 13). Its cost: it saves more for the backward (+1.4 / +2.7 GiB peak at 8k / 16k tokens in
    that step).
    """
    choice = os.environ.get("MIXLAB_KDA_BACKEND", "auto").strip().lower()
    if choice not in KDA_BACKENDS:
        raise MixlabError(f"MIXLAB_KDA_BACKEND={choice!r}{did_you_mean(choice, KDA_BACKENDS)}; choose one of "
                          f"{', '.join(KDA_BACKENDS)}")
    if choice == "torch" or not fast_path(*tensors):
        return "torch"
    if choice == "triton" and triton_available():
        return "mixlab"
    fla_first = choice == "fla" or get_backend() == "triton"
    if fla_first and fla_available():
        return "fla"
    if choice == "auto" and triton_available() and _triton_kda_dims_ok(tensors):
        return "mixlab"
    if fla_available():
        return "fla"
    return "torch"


def _triton_kda_dims_ok(tensors: tuple[torch.Tensor | None, ...]) -> bool:
    """Whether mixlab's Triton KDA takes these head dims (q, k, v last dims: powers of two, 16–256)."""
    dims = {t.shape[-1] for t in tensors[:3] if t is not None}
    return all(16 <= n <= 256 and n & (n - 1) == 0 for n in dims)


def use_fused(*tensors: torch.Tensor | None) -> bool:
    """Whether an op on these tensors should take mixlab's own fused path: its Triton kernels, and `joint_linear`'s
    one GEMM for several projections (both off with `set_fused(False)`, the off-the-shelf composition)."""
    return fast_path(*tensors) and fused_enabled() and triton_available()


def fused_decode_enabled() -> bool:
    """The generation engine's fused Triton decode kernels on CUDA (`kda_decode_step`, `kda_decode_layer`'s
    projections, `mla_decode_paged`, `moe_decode_block` as the engine's MoE form): on by default since the H100 run
    of bench/run_engine_gpu.sh (GPU tests against the references and full recomputation passed; decode step 1.87x
    the references, engine 7.7x `generate`; BENCHMARKS.md). MIXLAB_FUSED_DECODE=0 decodes through their torch
    references. CPU tensors always take the references. Read per call (the engine reads it when it captures a
    decode shape)."""
    return env_flag("MIXLAB_FUSED_DECODE", True)


_failed_kernels: dict[str, str] = {}


def failed_kernels() -> dict[str, str]:
    """{kernel name: error} for the kernels `with_fallback` has switched off in this process."""
    return dict(_failed_kernels)


def with_fallback(name: str, fast, reference):
    """fast() unless kernel `name` failed before in this process; if it raises (a Triton compile or launch error
    on a GPU/Triton the kernel was not run on), warn once, switch it off and return reference() from then on.
    Only for kernels that raise before they write anything (compile and launch errors do)."""
    if name not in _failed_kernels:
        try:
            return fast()
        except Exception as exc:  # noqa: BLE001 - any compile/launch failure: the reference is always correct
            _failed_kernels[name] = f"{type(exc).__name__}: {exc}"[:500]
            warnings.warn(f"mixlab kernel {name} failed ({_failed_kernels[name][:200]}); using its torch reference "
                          "from now on", RuntimeWarning, stacklevel=2)
    return reference()
