"""The one place that decides which device and which precision a model runs in (recipes, evals, serve, bench).

    resolve_device("auto")            -> "cuda" when a GPU is visible, else "cpu"; "cuda:1" is checked
    resolve_precision("auto", device) -> "bf16" on a GPU that supports it, else "fp32"; bf16/fp16 need a GPU (training)
    resolve_dtype(None, device)       -> the same default as a torch dtype; explicit dtypes pass through (inference)
    torch_dtype("bf16")               -> torch.bfloat16
    describe_device()                 -> what run rows record ("1x NVIDIA H100 ...", "cpu (<model>, 2 cores, ...)")
    cpu_name()                        -> the processor model benchmarks record beside their numbers
"""

from __future__ import annotations

import os
import platform

import torch

from mixlab.errors import MixlabError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float": "fp32"}


def resolve_device(device: str | torch.device | None = "auto") -> str:
    """`None`/"auto" picks CUDA when available; an explicit CUDA device without a GPU is an error, not a fallback."""
    if device is None or str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MixlabError(f"device {device!r} requested but CUDA is not available")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise MixlabError(f"device {device!r}: {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device not in ("cpu", "mps", "meta"):
        raise MixlabError(f"device {device!r}: expected auto, cpu or cuda[:N]")
    return device


def resolve_precision(precision: str | torch.dtype | None, device: str) -> str:
    """One of fp32 / bf16 / fp16. `None`/"auto": bf16 on a GPU that has it, fp32 otherwise (CPU bf16 is slow here)."""
    if isinstance(precision, torch.dtype):
        precision = str(precision).removeprefix("torch.")
    name = "auto" if precision is None else _DTYPE_NAMES.get(str(precision), str(precision))
    if name == "auto":
        return "bf16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "fp32"
    if name not in _DTYPES:
        raise MixlabError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if name in ("bf16", "fp16") and not device.startswith("cuda"):
        raise MixlabError(f"precision {name} needs a GPU; use fp32 (or auto) on {device}")
    return name


def torch_dtype(precision: str) -> torch.dtype:
    return _DTYPES[precision]


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """Inference weights: `None`/"auto" as `resolve_precision`; an explicit dtype is kept (bf16 inference runs on CPU)."""
    if dtype is None or str(dtype) == "auto":
        return torch_dtype(resolve_precision("auto", device))
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPE_NAMES.get(dtype, dtype)
    if name not in _DTYPES:
        raise MixlabError(f"dtype {dtype!r}: expected float32, bfloat16 or float16 (or fp32, bf16, fp16)")
    return _DTYPES[name]


def check_device_count(requested: int) -> int:
    """Checks that `requested` accelerators are visible (1 is always fine: a GPU or the CPU)."""
    if requested > 1:
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if requested > available:
            raise MixlabError(f"devices={requested} but {available} CUDA device(s) are visible")
    return requested


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_kind(device: str) -> str:
    """The kind of accelerator a resolved `device` string runs on, as cost rows record it (a GPU's name, or the
    CPU model): device-seconds on different kinds are not comparable."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({cpu_name()})"


def describe_device() -> str:
    """What a run row records as its device."""
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"cpu ({cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
