"""RMSNorm and the KDA output norm-gate, computed in fp32 (KimiRMSNorm; fla `fused_norm_gate`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixlab.errors import MixlabError

from .dispatch import use_fused
from .kda_common import fp32

try:  # triton is optional (gpu / dev extras); without it the references below run
    from .norm_triton import gated_rms_norm_triton, rms_norm_triton
except ImportError:
    gated_rms_norm_triton = rms_norm_triton = None


def _normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    xf = fp32(x)
    return xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """`weight * x̂` (a plain weight, not 1 + weight), x̂ in fp32 cast back to x.dtype first, as KimiRMSNorm does.

    On CUDA (fast path) one fused Triton launch forward and one backward (`norm_triton`)."""
    if use_fused(x, weight):
        return rms_norm_triton(x, weight, eps)
    return rms_norm_torch(x, weight, eps)


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Reference for `rms_norm`."""
    return weight.to(x.dtype) * _normalize(x, eps).to(x.dtype)


def gated_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, gate: torch.Tensor, eps: float = 1e-5, activation: str = "sigmoid"
) -> torch.Tensor:
    """RMSNorm(x) · weight · act(gate), all in fp32, output in x.dtype (KDA: per head, act = sigmoid)."""
    if gate.shape != x.shape:
        raise MixlabError(f"gated_rms_norm: gate shape {tuple(gate.shape)} != x shape {tuple(x.shape)}")
    if activation not in ("sigmoid", "silu", "swish"):
        raise MixlabError(f"gated_rms_norm: unknown activation {activation!r}; choose sigmoid or silu")
    if use_fused(x, weight, gate):
        return gated_rms_norm_triton(x, weight, gate, eps, activation)
    return gated_rms_norm_torch(x, weight, gate, eps, activation)


def gated_rms_norm_torch(
    x: torch.Tensor, weight: torch.Tensor, gate: torch.Tensor, eps: float = 1e-5, activation: str = "sigmoid"
) -> torch.Tensor:
    """Reference for `gated_rms_norm`."""
    gf = fp32(gate)
    a = torch.sigmoid(gf) if activation == "sigmoid" else F.silu(gf)
    return (_normalize(x, eps) * fp32(weight) * a).to(x.dtype)
