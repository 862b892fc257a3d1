"""KDA forget gate: g = -exp(A_log) * softplus(f + dt_bias), in fp32 (fla `naive_kda_gate`, threshold 20)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixlab.errors import MixlabError

from .dispatch import use_fused

try:  # triton is optional (gpu / dev extras); without it the reference runs
    from .kda_gate_triton import kda_gate_triton
except ImportError:
    kda_gate_triton = None


def kda_gate(f: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Per-channel log decay g ≤ 0 of shape [..., H, K], always fp32.

    f: [..., H*K] or [..., H, K] (any dtype); A_log: [H] or [1, 1, H, 1] (fp32 parameter);
    dt_bias: [H*K] or None. On CUDA (fast path) one fused Triton launch each way (`kda_gate_triton`).
    """
    H = A_log.numel()
    if f.dim() >= 2 and f.shape[-2] == H and (dt_bias is None or f.shape[-1] * H == dt_bias.numel()):
        fh = f
    else:
        if f.shape[-1] % H:
            raise MixlabError(f"kda_gate: last dim of f ({f.shape[-1]}) is not a multiple of the {H} heads of A_log")
        fh = f.unflatten(-1, (H, f.shape[-1] // H))
    K = fh.shape[-1]
    if dt_bias is not None and dt_bias.numel() != H * K:
        raise MixlabError(f"kda_gate: dt_bias has {dt_bias.numel()} elements, expected H*K = {H * K}")
    if use_fused(f, A_log, dt_bias):
        return kda_gate_triton(fh.flatten(-2), A_log, dt_bias, H, K)
    x = fh.float()
    if dt_bias is not None:
        x = x + dt_bias.float().view(H, K)
    return -A_log.float().view(H, 1).exp() * F.softplus(x, beta=1.0, threshold=20.0)
