"""MoE routing (sigmoid scores + correction bias, top-k) and grouped SwiGLU expert compute."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixlab.errors import MixlabError


def moe_route(
    logits: torch.Tensor,
    correction_bias: torch.Tensor | None,
    top_k: int,
    renormalize: bool = True,
    scaling: float = 1.0,
    weights_use_bias: bool = False,
    activation: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [N,E] → (topk_idx [N,k] int64, topk_weight [N,k] fp32).

    Experts are chosen on act(logits) + correction_bias. The weights are the unbiased scores (vLLM), or the biased
    ones with weights_use_bias=True (the HF code's in-place aliasing); renormalised with +1e-20, times scaling.
    Differentiable w.r.t. logits through the weights (the selection itself is not).
    """
    if logits.dim() != 2:
        raise MixlabError(f"moe_route: logits must be [N, E], got {tuple(logits.shape)}")
    E = logits.shape[-1]
    if not 1 <= top_k <= E:
        raise MixlabError(f"moe_route: top_k must be in [1, {E}], got {top_k}")
    lf = logits.float()
    if activation == "sigmoid":
        scores = torch.sigmoid(lf)
    elif activation == "softmax":
        scores = torch.softmax(lf, -1)
    else:
        raise MixlabError(f"moe_route: unknown activation {activation!r}; choose sigmoid or softmax")
    choice = scores if correction_bias is None else scores + correction_bias.float()
    topk_idx = torch.topk(choice.detach(), top_k, dim=-1).indices
    topk_weight = (choice if weights_use_bias else scores).gather(1, topk_idx)
    if renormalize:
        topk_weight = topk_weight / (topk_weight.sum(-1, keepdim=True) + 1e-20)
    return topk_idx, topk_weight * scaling


def _swiglu(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Expert(x) = w2(SiLU(w1 x) ⊙ w3 x); weights in nn.Linear layout [out, in]."""
    return F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)


def _check(x, w1, w3, w2, topk_idx, topk_weight):
    if x.dim() != 2:
        raise MixlabError(f"moe_experts: x must be [N, D], got {tuple(x.shape)}")
    N, D = x.shape
    if w1.dim() != 3 or w1.shape[2] != D or w3.shape != w1.shape:
        raise MixlabError(f"moe_experts: w1 and w3 must be [E, I, D={D}], got {tuple(w1.shape)}, {tuple(w3.shape)}")
    E, I, _ = w1.shape
    if w2.shape != (E, D, I):
        raise MixlabError(f"moe_experts: w2 must be [E={E}, D={D}, I={I}], got {tuple(w2.shape)}")
    if topk_idx.shape != topk_weight.shape or topk_idx.dim() != 2 or topk_idx.shape[0] != N:
        raise MixlabError(
            f"moe_experts: topk_idx/topk_weight must both be [N={N}, k], got "
            f"{tuple(topk_idx.shape)}, {tuple(topk_weight.shape)}"
        )


def moe_experts(
    x: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    w2: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_weight: torch.Tensor,
) -> torch.Tensor:
    """Σ_k topk_weight[n,k] · Expert_{topk_idx[n,k]}(x[n]) → [N, D] in x.dtype (weighted sum in fp32).

    Assignments are sorted by expert and each expert that received tokens runs once on its whole group
    (grouped GEMM, not per token). Differentiable w.r.t. x, the expert weights and topk_weight.
    """
    _check(x, w1, w3, w2, topk_idx, topk_weight)
    N, k = topk_idx.shape
    E = w1.shape[0]
    flat_expert = topk_idx.reshape(-1)
    order = torch.argsort(flat_expert, stable=True)
    token_of = order // k  # the token each sorted assignment belongs to
    counts = torch.bincount(flat_expert, minlength=E).tolist()
    xs = x.index_select(0, token_of)
    outs = []
    start = 0
    for e, cnt in enumerate(counts):
        if cnt:
            outs.append(_swiglu(xs[start : start + cnt], w1[e], w3[e], w2[e]))
            start += cnt
    if not outs:
        return torch.zeros_like(x)
    y_sorted = torch.cat(outs, 0).float() * topk_weight.reshape(-1).float().index_select(0, order).unsqueeze(-1)
    out = torch.zeros(N, x.shape[1], dtype=torch.float32, device=x.device).index_add(0, token_of, y_sorted)
    return out.to(x.dtype)


def moe_experts_naive(x, w1, w3, w2, topk_idx, topk_weight) -> torch.Tensor:
    """Oracle: a dense per-token, per-slot loop (slow; tests only)."""
    _check(x, w1, w3, w2, topk_idx, topk_weight)
    rows = []
    for n in range(x.shape[0]):
        acc = torch.zeros(x.shape[1], dtype=torch.float32, device=x.device)
        for j in range(topk_idx.shape[1]):
            e = int(topk_idx[n, j])
            acc = acc + topk_weight[n, j].float() * _swiglu(x[n : n + 1], w1[e], w3[e], w2[e])[0].float()
        rows.append(acc)
    return torch.stack(rows).to(x.dtype)
