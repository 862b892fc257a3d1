"""GPU checks of `moe_experts_fused` (marker `gpu`, never on CI): at the 1b-a150m shape against the per-expert loop
(outputs and all gradients), at the official Kimi shape against the grouped_mm path, expert-load counts unchanged,
no host sync, and capture as a CUDA graph."""

from __future__ import annotations

import pytest
import torch

from mixlab.kernels import expert_counts, moe_experts, moe_experts_grouped, moe_experts_reference, moe_route, set_fused
from mixlab.kernels.dispatch import fused_enabled
from mixlab.kernels.moe import _grouped_mm_works, moe_experts_fused, moe_impl

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

NAMES = ["y", "x", "w1", "w3", "w2", "w"]


def _inputs(N=8192, D=1024, I=384, E=48, k=3, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(N, D, device="cuda", generator=gen).bfloat16()
    ws = [(torch.randn(E, a, b, device="cuda", generator=gen) * b**-0.5).bfloat16()
          for a, b in ((I, D), (I, D), (D, I))]
    logits = torch.randn(N, E, device="cuda", generator=gen)
    logits[:, 1] = -30.0  # expert 1 gets no tokens
    idx, w = moe_route(logits, torch.randn(E, device="cuda", generator=gen) * 0.1, k, scaling=2.446)
    return [x, *ws, idx, w]


def _fwd_bwd(fn, x, w1, w3, w2, idx, w):
    leaves = [t.detach().requires_grad_(True) for t in (x, w1, w3, w2, w)]
    y = fn(*leaves[:4], idx, leaves[4])
    dy = torch.randn(y.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1)).bfloat16()
    return [y] + list(torch.autograd.grad(y, leaves, dy))


def _rels(got, want):
    return {n: float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))
            for n, a, b in zip(NAMES, got, want)}


@pytest.mark.parametrize("variant", ["cat", "nocat"])
def test_fused_moe_matches_loop_at_1b_shape(variant):
    args = _inputs()
    counts_before = torch.bincount(args[4].reshape(-1), minlength=48)
    kw = dict(cat_w13=variant == "cat")
    got = _fwd_bwd(lambda *a: moe_experts_fused(*a, **kw), *args)
    want = _fwd_bwd(moe_experts_reference, *args)
    rels = _rels(got, want)
    print("rel errors vs loop:", rels)
    assert all(r < 1e-2 for r in rels.values()), rels
    for g in got[2:5]:
        assert g[1].abs().max() == 0  # the expert with no tokens
    assert torch.equal(expert_counts(args[4], 48), counts_before)


def test_fused_moe_matches_grouped_at_official_shape():
    args = _inputs(N=16384, D=2304, I=1024, E=256, k=8)
    got = _fwd_bwd(moe_experts_fused, *args)
    want = _fwd_bwd(lambda *a: moe_experts_grouped(*a, fused=False), *args)
    rels = _rels(got, want)
    print("rel errors vs grouped_mm:", rels)
    assert all(r < 1e-2 for r in rels.values()), rels


def test_dispatch_takes_the_fused_function_without_host_sync_and_captures(monkeypatch):
    monkeypatch.setenv("MIXLAB_MOE_IMPL", "fused")
    assert moe_impl() == "fused"
    args = _inputs(N=1024)
    want = _fwd_bwd(moe_experts_fused, *args)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = _fwd_bwd(moe_experts, *args)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for a, b in zip(got, want):
        assert torch.equal(a, b)  # deterministic: stable sort, no atomics
    leaves = [t.detach().requires_grad_(True) for t in args[:4]] + [args[5].detach().requires_grad_(True)]
    dy = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)

    def step():
        y = moe_experts(*leaves[:4], args[4], leaves[4])
        return [y.detach()] + list(torch.autograd.grad(y, leaves, dy))

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        eager = step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = step()
    g.replay()
    torch.cuda.synchronize()
    for a, b in zip(out, eager):
        assert torch.equal(a, b)


def test_grouped_mm_probe_is_not_fooled_by_sync_debug_mode():
    """The cached probe once ran first under set_sync_debug_mode("error"), cached False, and every later CUDA MoE
    call took the per-expert loop."""
    _grouped_mm_works.cache_clear()
    torch.cuda.set_sync_debug_mode("error")
    try:
        assert _grouped_mm_works(torch.device("cuda", torch.cuda.current_device()))
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_unfused_dispatch_is_the_grouped_mm_peer():
    """set_fused(False) (the off-the-shelf composition of the step benchmark) must not take mixlab's kernels."""
    args = _inputs(N=512)
    before = fused_enabled()
    set_fused(False)
    try:
        got = _fwd_bwd(moe_experts, *args)
    finally:
        set_fused(before)
    want = _fwd_bwd(lambda *a: moe_experts_grouped(*a, fused=False), *args)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_auto_takes_the_fused_function_eagerly_and_under_capture(monkeypatch):
    """The default MIXLAB_MOE_IMPL=auto: bitwise the fused Function, eagerly and inside a CUDA graph; "grouped" is the
    other path (its rounding differs, so the checks can tell the two apart)."""
    monkeypatch.delenv("MIXLAB_MOE_IMPL", raising=False)
    x, w1, w3, w2, idx, w = _inputs(N=1024)
    eager = moe_experts(x, w1, w3, w2, idx, w)
    assert torch.equal(eager, moe_experts_fused(x, w1, w3, w2, idx, w))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        moe_experts(x, w1, w3, w2, idx, w)  # warm-up off the capture (Triton compiles, allocator pools)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        captured = moe_experts(x, w1, w3, w2, idx, w)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager)
    monkeypatch.setenv("MIXLAB_MOE_IMPL", "grouped")
    grouped = moe_experts(x, w1, w3, w2, idx, w)
    assert torch.equal(grouped, moe_experts_grouped(x, w1, w3, w2, idx, w))
    assert not torch.equal(grouped, eager)
