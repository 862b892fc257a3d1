"""RMSNorm and the KDA output norm-gate, computed in fp32 (KimiRMSNorm; fla `fused_norm_gate`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixlab.errors import MixlabError

from .kda_common import fp32


def _normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    xf = fp32(x)
    return xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """`weight * x̂` (a plain weight, not 1 + weight), x̂ in fp32 cast back to x.dtype first, as KimiRMSNorm does."""
    return weight.to(x.dtype) * _normalize(x, eps).to(x.dtype)


def gated_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, gate: torch.Tensor, eps: float = 1e-5, activation: str = "sigmoid"
) -> torch.Tensor:
    """RMSNorm(x) · weight · act(gate), all in fp32, output in x.dtype (KDA: per head, act = sigmoid)."""
    if gate.shape != x.shape:
        raise MixlabError(f"gated_rms_norm: gate shape {tuple(gate.shape)} != x shape {tuple(x.shape)}")
    gf = fp32(gate)
    if activation == "sigmoid":
        a = torch.sigmoid(gf)
    elif activation in ("silu", "swish"):
        a = F.silu(gf)
    else:
        raise MixlabError(f"gated_rms_norm: unknown activation {activation!r}; choose sigmoid or silu")
    return (_normalize(x, eps) * fp32(weight) * a).to(x.dtype)
