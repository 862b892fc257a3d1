"""The Triton kernels of `moe_experts_fused` (weighted SwiGLU fwd/bwd, gather-sum) against their torch forms in
moe.py, on row-strided views as the Function passes them. CPU: Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), fp32; on a GPU the same tests run on CUDA."""

from __future__ import annotations

import os

import pytest
import torch

from mixlab.kernels import expert_counts
from mixlab.kernels.dispatch import triton_available

if not triton_available() or not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
    pytest.skip("needs triton (GPU, or TRITON_INTERPRET=1 on CPU)", allow_module_level=True)

from mixlab.kernels.moe import _gather_sum_torch, _swiglu_w_bwd_torch, _swiglu_w_fwd_torch  # noqa: E402
from mixlab.kernels.moe_triton import (  # noqa: E402
    gather_sum,
    route_sort,
    swiglu_weighted_bwd,
    swiglu_weighted_fwd,
)

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEV)


@pytest.mark.parametrize("I", [24, 300])  # 300 > the 256-wide block: the backward's loop over I chunks
def test_swiglu_weighted_fwd_bwd_on_halves_of_one_buffer(I):
    M = 37
    h = _randn(M, 2 * I, seed=0) * 2
    h1, h3 = h[:, :I], h[:, I:]  # the concatenated up-projection's two halves, row stride 2I
    w = torch.rand(M, generator=torch.Generator().manual_seed(1)).to(DEV) * 2
    w[3] = 0.0  # a zero routing weight: zero dh, finite dw
    torch.testing.assert_close(swiglu_weighted_fwd(h1, h3, w), _swiglu_w_fwd_torch(h1, h3, w), atol=1e-6, rtol=1e-6)
    da = _randn(M, I, seed=2)
    got = torch.full((M, 2 * I), float("nan"), device=DEV)
    want = torch.empty(M, 2 * I, device=DEV)
    order = torch.randperm(M, generator=torch.Generator().manual_seed(5)).to(DEV)  # sorted row -> caller's slot
    dw = swiglu_weighted_bwd(h1, h3, w, da, got[:, :I], got[:, I:], order)
    dw_ref = _swiglu_w_bwd_torch(h1, h3, w, da, want[:, :I], want[:, I:], order)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # every element written (no NaN left)
    torch.testing.assert_close(dw, dw_ref, atol=1e-4, rtol=1e-5)
    assert got[3].abs().max() == 0
    # the autograd check of the formulas themselves: d/dh and d/dw of <a_w, da> by torch autograd
    leaves = [t.detach().clone().requires_grad_(True) for t in (h1, h3, w)]
    a = torch.nn.functional.silu(leaves[0]) * leaves[1] * leaves[2][:, None]
    g1, g3, gw = torch.autograd.grad((a * da).sum(), leaves)
    torch.testing.assert_close(want[:, :I], g1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(want[:, I:], g3, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dw_ref[order], gw, atol=1e-4, rtol=1e-5)  # dw lands at the caller's slot


@pytest.mark.parametrize("two", [False, True])
def test_gather_sum(two):
    N, k, D = 19, 3, 300
    inv = torch.randperm(N * k, generator=torch.Generator().manual_seed(0)).to(DEV).view(N, k)
    s1, s2 = _randn(N * k, D, seed=3), _randn(N * k, D, seed=4)
    got = gather_sum(inv, torch.float32, s1, s2 if two else None)
    want = _gather_sum_torch(inv, torch.float32, s1, s2 if two else None)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    by_hand = sum(s1[inv[:, j]] + (s2[inv[:, j]] if two else 0) for j in range(k))
    torch.testing.assert_close(got, by_hand, atol=1e-5, rtol=1e-5)


_BIG = pytest.param(4200, 8, 256, "random", marks=[pytest.mark.slow] if DEV == "cpu" else [])  # ~25 s interpreted


@pytest.mark.parametrize("N,k,E,routing", [(29, 3, 6, "random"), (1, 2, 5, "random"), (700, 3, 48, "random"),
                                             (700, 3, 48, "skewed"), (700, 3, 48, "same"), _BIG])
def test_route_sort_equals_stable_torch_sort(N, k, E, routing):
    """The counting sort gives exactly the stable sort's permutation, its inverse, tokens, sorted weights and
    group ends, over several placing blocks (700 · 3 slots: 9 blocks of 256), also with most slots on three experts
    and others empty ("skewed") or every token on the same k experts ("same"); (4200, 8, 256) takes blocks of 512."""
    gen = torch.Generator().manual_seed(N)
    scores = torch.rand(N, E, generator=gen)
    if routing == "skewed":
        scores[:, :3] += 0.9
    elif routing == "same":
        scores = torch.arange(E, dtype=torch.float32).expand(N, E) + scores * 1e-3
    idx = torch.topk(scores, k).indices.to(DEV)
    idx[0, 0] = E - 1  # the last expert is used
    w = torch.rand(N, k, generator=gen).to(DEV)
    order, inv, token, w_s, offs = route_sort(idx, w, E)
    sorted_e, want = torch.sort(idx.reshape(-1), stable=True)
    assert torch.equal(order, want)
    assert torch.equal(inv, torch.empty_like(want).scatter_(0, want, torch.arange(N * k, device=DEV)))
    assert torch.equal(token, want // k)
    assert torch.equal(w_s, w.reshape(-1)[want])
    assert torch.equal(offs.long(), torch.searchsorted(sorted_e, torch.arange(E, device=DEV), right=True))
    assert offs.dtype == torch.int32 and int(offs[-1]) == N * k
    # the group sizes are the expert-load counts the balancing update reads
    assert torch.equal(torch.diff(offs.long(), prepend=offs.new_zeros(1).long()), expert_counts(idx, E))
