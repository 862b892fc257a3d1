"""The MoE block for a decode step (few rows, one token each): routing, routed experts and combine without a host
sync (CUDA-graph safe).

The reference is the router (`moe_route`) followed by the gather form: each (row, k) pair gathers its expert's
weights and runs batched GEMMs; the shared experts are a plain MLP. On CUDA (unless MIXLAB_FUSED_DECODE=0; verified
on an H100 by bench/run_engine_gpu.sh) `decode_moe_triton.py` does router GEMM, routing, routed and
shared experts and combine in five launches (instead of ~25) and reads each chosen expert's weights once per step
however many rows pick it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixlab.errors import MixlabError

from .dispatch import fused_decode_enabled, use_fused, with_fallback
from .moe import moe_route

try:  # triton is optional (gpu / dev extras); without it the reference runs
    from .decode_moe_triton import experts_triton, route_triton
except ImportError:
    experts_triton = route_triton = None


def moe_experts_gather(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, idx: torch.Tensor,
                       weight: torch.Tensor) -> torch.Tensor:
    """Σ_k weight·Expert(x) as one batched GEMM per matrix over the N·k gathered experts (shape-static)."""
    N, D = x.shape
    k = idx.shape[1]
    flat = idx.reshape(-1)
    xs = x.repeat_interleave(k, 0).unsqueeze(-1)  # [Nk, D, 1]
    a = torch.bmm(w1.index_select(0, flat), xs)
    b = torch.bmm(w3.index_select(0, flat), xs)
    y = torch.bmm(w2.index_select(0, flat), F.silu(a) * b).squeeze(-1)  # [Nk, D]
    return (y.float().view(N, k, D) * weight.float().unsqueeze(-1)).sum(1).to(x.dtype)


def moe_decode_block(x: torch.Tensor, gate_weight: torch.Tensor, correction_bias: torch.Tensor | None,
                     w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, top_k: int, *, renormalize: bool,
                     scaling: float, weights_use_bias: bool, activation: str,
                     shared: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """x [N, D] → Σ_k weight · Expert(x) (+ the shared experts' MLP) in x.dtype.

    gate_weight [E, D]: router logits x·Wgᵀ in fp32 (as the model's gate); routing as `moe_route`; shared: the
    shared MLP's (gate_proj, up_proj, down_proj) weights ([IS, D], [IS, D], [D, IS]) or None."""
    if activation not in ("sigmoid", "softmax"):
        raise MixlabError(f"moe_decode_block: unknown router activation {activation!r}; choose sigmoid or softmax")
    def reference():
        logits = F.linear(x.float(), gate_weight.float())
        idx, weight = moe_route(logits, correction_bias, top_k, renormalize=renormalize, scaling=scaling,
                                weights_use_bias=weights_use_bias, activation=activation)
        y = moe_experts_gather(x, w1, w3, w2, idx, weight)
        if shared is None:
            return y
        gate, up, down = shared
        return y + F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)

    def fused():
        idx, weight = route_triton(x, gate_weight, correction_bias, top_k, renormalize, scaling, weights_use_bias,
                                   activation)
        return experts_triton(x, w1, w3, w2, idx, weight, shared)

    if route_triton is not None and fused_decode_enabled() and use_fused(x, w1, gate_weight):
        return with_fallback("moe_decode_block", fused, reference)
    return reference()
