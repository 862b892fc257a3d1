"""MoE routing (sigmoid scores + correction bias, top-k) and grouped SwiGLU expert compute.

Three expert implementations of one contract (`moe_experts`):
- `moe_experts_fused`: what CUDA bf16 calls take (`moe_impl`, MIXLAB_MOE_IMPL=auto or fused): the whole block as
  one autograd Function with a hand-written backward — a stable counting sort of the slots (Triton), grouped GEMMs,
  the routing weight folded into a Triton SwiGLU so that un-permuting is an unweighted gather-sum, and dw from the
  SwiGLU backward.
- `moe_experts_reference`: sort by expert, then one SwiGLU per expert over its slice (a host sync for the group
  sizes, ~3 launches per expert and their backward). The CPU path and the oracle of the fast one.
- `moe_experts_grouped`: MIXLAB_MOE_IMPL=grouped (`moe_impl`), and with fused=False the benchmark peer
  (grouped_mm + torch glue through autograd, the off-the-shelf composition). Token permutation by expert (a
  stable sort), three grouped GEMMs over all experts at once (`torch._grouped_mm`, group offsets from a device-side
  count: no host sync), SwiGLU, and the un-permutation as a weighted gather-sum (no atomics, deterministic); with
  fused=True the SwiGLU and the gather-sum are Triton kernels.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from mixlab.errors import MixlabError
from mixlab.yamlio import did_you_mean

from .dispatch import fast_path, use_fused

try:  # triton is optional (gpu / dev extras); without it the torch forms below run
    from .moe_triton import (combine_triton, gather_sum, route_sort, swiglu_triton, swiglu_weighted_bwd,
                             swiglu_weighted_fwd)
except ImportError:
    combine_triton = gather_sum = route_sort = swiglu_triton = swiglu_weighted_bwd = swiglu_weighted_fwd = None


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


def expert_counts(topk_idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Token-slots per expert, int64 [E], computed on the device without a host sync (bincount syncs on CUDA)."""
    flat = topk_idx.reshape(-1)
    return torch.zeros(num_experts, dtype=torch.int64, device=flat.device).scatter_add_(
        0, flat, torch.ones_like(flat, dtype=torch.int64))


def moe_experts(
    x: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    w2: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_weight: torch.Tensor,
) -> torch.Tensor:
    """Σ_k topk_weight[n,k] · Expert_{topk_idx[n,k]}(x[n]) → [N, D] in x.dtype (weighted sum in fp32).

    x [N, D]; w1, w3 [E, I, D]; w2 [E, D, I] (nn.Linear layout); topk_idx int [N, k]; topk_weight [N, k].
    Differentiable w.r.t. x, the expert weights and topk_weight. CUDA bf16 tensors take a grouped-GEMM path without
    host syncs (`moe_impl` names which: `moe_experts_grouped` or `moe_experts_fused`), everything else
    `moe_experts_reference`.
    """
    if (fast_path(x, w1) and x.dtype == torch.bfloat16 and w1.dtype == w3.dtype == w2.dtype == torch.bfloat16
            and _grouped_mm_works(x.device)):
        if moe_impl() == "fused" and use_fused(x):  # set_fused(False) = the off-the-shelf peer: grouped_mm + torch
            return moe_experts_fused(x, w1, w3, w2, topk_idx, topk_weight, fused=True)
        return moe_experts_grouped(x, w1, w3, w2, topk_idx, topk_weight)
    return moe_experts_reference(x, w1, w3, w2, topk_idx, topk_weight)


MOE_IMPLS = ("auto", "fused", "grouped")


# H100, bench/bench_moe.py (BENCHMARKS.md, waves 9-11), fwd+bwd at 1b-a150m: the fused Function does less GPU work
# (0.69-0.73 against 0.97 ms as a CUDA graph) and less host work (1.23 against 1.41 ms to issue one eager call, s10a);
# eager with the backward into .grad 1.04 against 1.35 ms (s10a) and 0.94 against 1.42 ms (s11b), and 13.4-13.7
# against 14.5 ms at the official shape. So "auto" takes it eagerly too; "grouped" stays selectable (and, with the
# fused kernels off, is the benchmark peer). Until wave 8 "auto" took the grouped path eagerly, which had led on the
# wave-4 host (1.02 against 1.49 ms).
DEFAULT_MOE_IMPL = "auto"


def moe_impl() -> str:
    """The CUDA MoE implementation for this call: MIXLAB_MOE_IMPL (read per call) "fused" (`moe_experts_fused`),
    "grouped" (`moe_experts_grouped`) or "auto" (DEFAULT_MOE_IMPL: "fused"); both are checked against the
    per-expert loop, bench/bench_moe.py times them."""
    choice = os.environ.get("MIXLAB_MOE_IMPL", DEFAULT_MOE_IMPL).strip().lower()
    if choice not in MOE_IMPLS:
        raise MixlabError(f"MIXLAB_MOE_IMPL={choice!r}{did_you_mean(choice, MOE_IMPLS)}; choose one of "
                          f"{', '.join(MOE_IMPLS)}")
    return "fused" if choice == "auto" else choice


@functools.cache
def _grouped_mm_works(device: torch.device) -> bool:
    """One tiny bf16 `torch._grouped_mm` per device (measured on Hopper; other GPUs may lack a kernel for it).
    The answer is cached, so the probe copies nothing from the host (offsets from arange) and runs with the sync
    debug mode off: a first call under `set_sync_debug_mode("error")` must not cache False (it did on the H100)."""
    debug_mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        a = torch.ones(4, 16, dtype=torch.bfloat16, device=device)
        b = torch.ones(2, 16, 16, dtype=torch.bfloat16, device=device)
        torch._grouped_mm(a, b, offs=torch.arange(2, 5, 2, dtype=torch.int32, device=device))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    finally:
        torch.cuda.set_sync_debug_mode(debug_mode)
    return True


class _PermuteRows(torch.autograd.Function):
    """xs = x[order // k] (each token copied to its k expert slots). Backward: dx[n] = Σ_j dxs[inv[n,j]] in fp32,
    a gather-sum instead of index_select's atomic index_add (deterministic, one rounding)."""

    @staticmethod
    def forward(ctx, x, token_of, inv):
        ctx.save_for_backward(inv)
        return x.index_select(0, token_of)

    @staticmethod
    def backward(ctx, dxs):
        (inv,) = ctx.saved_tensors
        N, k = inv.shape
        return dxs.index_select(0, inv.reshape(-1)).view(N, k, -1).sum(1, dtype=torch.float32).to(dxs.dtype), None, None


def _combine_torch(y: torch.Tensor, inv: torch.Tensor, w: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    N, k = inv.shape
    y_tok = y.index_select(0, inv.reshape(-1)).view(N, k, -1).float()
    return torch.bmm(w.float().unsqueeze(1), y_tok).squeeze(1).to(out_dtype)


def moe_experts_grouped(
    x: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    w2: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_weight: torch.Tensor,
    fused: bool | None = None,
) -> torch.Tensor:
    """`moe_experts` through grouped GEMMs; `fused` (default: on for CUDA) uses the Triton SwiGLU and combine."""
    _check(x, w1, w3, w2, topk_idx, topk_weight)
    N, k = topk_idx.shape
    E = w1.shape[0]
    if fused is None:
        fused = use_fused(x)
    flat = topk_idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    inv = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device)).view(N, k)
    offs = expert_counts(topk_idx, E).cumsum(0).to(torch.int32)
    xs = _PermuteRows.apply(x, order // k, inv)
    h1 = torch._grouped_mm(xs, w1.transpose(-2, -1), offs=offs)
    h3 = torch._grouped_mm(xs, w3.transpose(-2, -1), offs=offs)
    a = swiglu_triton(h1, h3) if fused else F.silu(h1) * h3
    y = torch._grouped_mm(a, w2.transpose(-2, -1), offs=offs)
    combine = combine_triton if fused else _combine_torch
    return combine(y, inv, topk_weight, x.dtype)


def moe_experts_reference(
    x: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    w2: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_weight: torch.Tensor,
) -> torch.Tensor:
    """Reference `moe_experts`: assignments sorted by expert, each expert that received tokens runs once on its
    whole slice (a per-expert loop; needs the group sizes on the host)."""
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


# --- `moe_experts_fused`: the whole expert block as one autograd Function with a hand-written backward. ---
# The routing weight is folded into the SwiGLU output (a_w = w·silu(h1)·h3), so the un-permutation is an unweighted
# gather-sum and its backward a plain row gather; dw = <d a_w, silu(h1)·h3> falls out of the SwiGLU backward. The
# backward's two input-gradient GEMMs are summed inside the gather-sum (no add pass), w1/w3 can be concatenated so
# the up-projection and its input gradient are one grouped GEMM of width 2I each (the weight gradients stay two
# GEMMs, so that each is contiguous), and nothing outside the GEMMs is a separate autograd node.

def _swiglu_w_fwd_torch(h1, h3, w):
    return (F.silu(h1.float()) * h3.float() * w.float()[:, None]).to(h1.dtype)


def _swiglu_w_bwd_torch(h1, h3, w, da, dh1, dh3, order):
    h1f, h3f, daf = h1.float(), h3.float(), da.float()
    s = torch.sigmoid(h1f)
    silu = h1f * s
    g = daf * w.float()[:, None]
    dh1.copy_(g * h3f * s * (1.0 + h1f * (1.0 - s)))
    dh3.copy_(g * silu)
    dw_sorted = (daf * silu * h3f).sum(1)
    return torch.empty_like(dw_sorted).index_copy_(0, order, dw_sorted)


def _gather_sum_torch(inv, out_dtype, s1, s2=None):
    N, k = inv.shape
    src = s1.float() if s2 is None else s1.float() + s2.float()
    return src.index_select(0, inv.reshape(-1)).view(N, k, -1).sum(1).to(out_dtype)


class _MoEExpertsFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, w3, w2, topk_idx, topk_weight, fused, cat_w13, triton_sort):
        N, k = topk_idx.shape
        E, I, _ = w1.shape
        perm = route_sort(topk_idx, topk_weight, E) if triton_sort else None
        if perm is not None:
            order, inv, token_of, w_s, offs = perm
        else:  # sorted slot -> flat slot (stable: deterministic dW sums); group ends by a search over sorted ids
            sorted_e, order = torch.sort(topk_idx.reshape(-1), stable=True)
            inv = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
            offs = torch.searchsorted(sorted_e, torch.arange(E, device=order.device, dtype=sorted_e.dtype),
                                      right=True, out_int32=True)
            token_of = order // k
            w_s = topk_weight.reshape(-1).index_select(0, order).float()
        w13 = None
        xs = x.index_select(0, token_of)
        if cat_w13:
            w13 = torch.cat([w1, w3], 1)  # [E, 2I, D]: one GEMM of width 2I, better tile use at small I
            h = torch._grouped_mm(xs, w13.transpose(-2, -1), offs=offs)
            h1, h3 = h[:, :I], h[:, I:]
        else:
            h1 = torch._grouped_mm(xs, w1.transpose(-2, -1), offs=offs)
            h3 = torch._grouped_mm(xs, w3.transpose(-2, -1), offs=offs)
        a_w = (swiglu_weighted_fwd if fused else _swiglu_w_fwd_torch)(h1, h3, w_s)
        y = torch._grouped_mm(a_w, w2.transpose(-2, -1), offs=offs)
        out = (gather_sum if fused else _gather_sum_torch)(inv.view(N, k), x.dtype, y)
        ctx.save_for_backward(xs, h1, h3, a_w, w_s, order, token_of, inv, offs, w1, w3, w2, w13)
        ctx.fused, ctx.shape, ctx.wdtype = fused, (N, k), topk_weight.dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        xs, h1, h3, a_w, w_s, order, token_of, inv, offs, w1, w3, w2, w13 = ctx.saved_tensors
        N, k = ctx.shape
        fused = ctx.fused
        M, I = a_w.shape
        dy = dout.index_select(0, token_of)  # d y_slot = dout[token]: the routing weight sits in a_w
        if dy.stride(-1) != 1:
            dy = dy.contiguous()
        dw2 = torch._grouped_mm(dy.t(), a_w, offs=offs) if ctx.needs_input_grad[3] else None  # [E, D, I]
        da = torch._grouped_mm(dy, w2, offs=offs)  # [M, I]
        dh = torch.empty(M, 2 * I, dtype=a_w.dtype, device=a_w.device)
        dw_slot = (swiglu_weighted_bwd if fused else _swiglu_w_bwd_torch)(h1, h3, w_s, da, dh[:, :I], dh[:, I:],
                                                                           order)
        dh1, dh3 = dh[:, :I], dh[:, I:]
        # Two GEMMs, not one [E, 2I, D] GEMM split in halves: a half is strided, and autograd's AccumulateGrad
        # copies a strided gradient into a contiguous .grad (at 1b-a150m, 8k tokens: 30 copies, 1.5 ms per step).
        dw1 = torch._grouped_mm(dh1.t(), xs, offs=offs) if ctx.needs_input_grad[1] else None  # [E, I, D]
        dw3 = torch._grouped_mm(dh3.t(), xs, offs=offs) if ctx.needs_input_grad[2] else None
        dx = None
        if ctx.needs_input_grad[0]:
            gsum = gather_sum if fused else _gather_sum_torch
            if w13 is not None:
                dx = gsum(inv.view(N, k), dout.dtype, torch._grouped_mm(dh, w13, offs=offs))
            else:
                dx = gsum(inv.view(N, k), dout.dtype, torch._grouped_mm(dh1, w1, offs=offs),
                          torch._grouped_mm(dh3, w3, offs=offs))
        dw = dw_slot.view(N, k).to(ctx.wdtype) if ctx.needs_input_grad[5] else None
        return dx, dw1, dw3, dw2, None, dw, None, None, None


def _cat_pays(x, w1, w3, w2, topk_idx, topk_weight) -> bool:
    """Whether copying w1, w3 into one [E, 2I, D] weight (2·E·I·D elements read and written) costs less than it
    saves: in the backward one [M, D] input-gradient output and its read (M = N·k slots), and when I is not a
    multiple of the grouped GEMM's 256-wide tile (I = 384: a third of the up-projection's tile columns are padding),
    as much again. Only with a backward to run (prefill and eval skip it). 1b-a150m: copy; official shape: no."""
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, w1, w3, w2, topk_weight))):
        return False
    E, I, D = w1.shape
    return 2 * E * I * D <= topk_idx.numel() * D * (2 if I % 256 else 1)


def moe_experts_fused(
    x: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    w2: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_weight: torch.Tensor,
    fused: bool | None = None,
    cat_w13: bool | None = None,
    triton_sort: bool | None = None,
) -> torch.Tensor:
    """`moe_experts` as one autograd Function over grouped GEMMs (see the comment above `_MoEExpertsFn`); `fused`
    (default: on for CUDA) runs the SwiGLU and gather-sum glue as Triton kernels, else in torch (any device).
    `cat_w13` (default: `_cat_pays`) copies w1 and w3 into one [E, 2I, D] weight per call;
    `triton_sort` (default: as `fused`) builds the expert permutation with `moe_triton.route_sort`. (Triton grouped
    GEMMs for the up-projection, d a_w and dx were tried and removed: slower than torch._grouped_mm on an H100,
    BENCHMARKS.md.)"""
    _check(x, w1, w3, w2, topk_idx, topk_weight)
    if fused is None:
        fused = use_fused(x)
    if cat_w13 is None:
        cat_w13 = _cat_pays(x, w1, w3, w2, topk_idx, topk_weight)
    if triton_sort is None:
        triton_sort = fused
    if topk_idx.numel() == 0:  # no slots: nothing to launch (empty grids)
        return x * 0
    return _MoEExpertsFn.apply(x, w1, w3, w2, topk_idx, topk_weight, bool(fused), bool(cat_w13), bool(triton_sort))
