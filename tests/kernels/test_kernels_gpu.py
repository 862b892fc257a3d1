"""GPU checks (marker `gpu`, never on CI): every op runs on CUDA and matches its CPU result; with fla-core installed,
fla's Triton KDA kernels (chunk_kda fwd+bwd, fused_recurrent_kda) match our torch reference, and the "triton"
backend routes to them."""

from __future__ import annotations

import pytest
import torch

from mixlab.kernels import (
    chunk_kda,
    chunk_kda_torch,
    fla_available,
    gated_rms_norm,
    get_backend,
    kda_gate,
    moe_experts,
    moe_route,
    naive_recurrent_kda,
    recurrent_kda_step,
    rms_norm,
    set_backend,
    short_conv,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
needs_fla = pytest.mark.skipif(not fla_available(), reason="needs fla-core")


def kda_inputs(B, T, H, K, V, device, seed=0, g_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    g = -torch.rand(B, T, H, K, generator=gen) * g_scale
    beta = torch.rand(B, T, H, generator=gen)
    h0 = torch.randn(B, H, K, V, generator=gen) * 0.1
    return [t.to(device) for t in (q, k, v, g, beta, h0)]


def grads(fn, inputs, seed=1):
    xs = [t.detach().clone().requires_grad_(True) for t in inputs]
    o, S = fn(*xs)
    gen = torch.Generator().manual_seed(seed)  # on the CPU: the same weights whatever the device
    wo = torch.randn(o.shape, generator=gen).to(o.device)
    ws = torch.randn(S.shape, generator=gen).to(o.device)
    ((o.float() * wo).sum() + (S * ws).sum()).backward()
    return o.float(), S, [x.grad for x in xs]


@pytest.mark.parametrize("shape", [(2, 100, 4, 32, 32), (1, 300, 2, 64, 64)])
def test_chunk_kda_cuda_matches_cpu(shape):
    ins = kda_inputs(*shape, "cpu")
    fn = lambda q, k, v, g, b, h: chunk_kda_torch(q, k, v, g, b, initial_state=h,  # noqa: E731
                                                  output_final_state=True, use_qk_l2norm=True)
    o_c, S_c, g_c = grads(fn, ins)
    o_g, S_g, g_g = grads(fn, [t.cuda() for t in ins])
    torch.testing.assert_close(o_g.cpu(), o_c, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(S_g.cpu(), S_c, atol=1e-4, rtol=1e-4)
    for a, b in zip(g_g, g_c):
        torch.testing.assert_close(a.cpu(), b, atol=1e-3, rtol=1e-3)


def test_chunk_kda_cuda_strong_decay_and_bf16():
    q, k, v, g, beta, h0 = kda_inputs(1, 130, 2, 32, 32, "cuda", g_scale=20.0)
    xs = [t.bfloat16().requires_grad_(True) for t in (q, k, v)] + [g.requires_grad_(True), beta.requires_grad_(True)]
    o, S = chunk_kda(*xs, initial_state=h0, output_final_state=True, use_qk_l2norm=True)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    (o.float().sum() + S.sum()).backward()
    assert all(torch.isfinite(x.grad).all() for x in xs)
    o_n, S_n = naive_recurrent_kda(*[x.detach() for x in xs], initial_state=h0, output_final_state=True,
                                   use_qk_l2norm=True)
    torch.testing.assert_close(o.float(), o_n.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(S, S_n, atol=1e-3, rtol=1e-3)


def test_cu_seqlens_and_step_on_cuda():
    q, k, v, g, beta, _ = kda_inputs(1, 50, 2, 16, 16, "cuda")
    cu = torch.tensor([0, 7, 30, 50], device="cuda")
    o, S = chunk_kda(q, k, v, g, beta, output_final_state=True, cu_seqlens=cu, use_qk_l2norm=True)
    o_n, S_n = naive_recurrent_kda(q, k, v, g, beta, output_final_state=True, cu_seqlens=cu, use_qk_l2norm=True)
    torch.testing.assert_close(o, o_n, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(S, S_n, atol=1e-4, rtol=1e-4)
    o1, S1 = recurrent_kda_step(q[:, :1], k[:, :1], v[:, :1], g[:, :1], beta[:, :1], None, use_qk_l2norm=True)
    torch.testing.assert_close(o1, o_n[:, :1], atol=1e-5, rtol=1e-5)


def test_small_ops_cuda_match_cpu():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 12, generator=gen)
    w = torch.randn(12, 1, 4, generator=gen)
    cache = torch.randn(2, 12, 3, generator=gen)
    y_c, c_c = short_conv(x, w, cache=cache, output_final_state=True)
    y_g, c_g = short_conv(x.cuda(), w.cuda(), cache=cache.cuda(), output_final_state=True)
    torch.testing.assert_close(y_g.cpu(), y_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c_g.cpu(), c_c)
    cu = torch.tensor([0, 4, 9])
    y_c, _ = short_conv(x[:1], w, cu_seqlens=cu)
    y_g, _ = short_conv(x[:1].cuda(), w.cuda(), cu_seqlens=cu.cuda())
    torch.testing.assert_close(y_g.cpu(), y_c, atol=1e-5, rtol=1e-5)
    gate = torch.randn(2, 9, 12, generator=gen)
    nw = torch.rand(12, generator=gen)
    for dt in (torch.float32, torch.bfloat16):
        a = gated_rms_norm(x.to(dt), nw, gate.to(dt), 1e-5)
        b = gated_rms_norm(x.to(dt).cuda(), nw.cuda(), gate.to(dt).cuda(), 1e-5)
        torch.testing.assert_close(b.cpu().float(), a.float(), atol=1e-2, rtol=1e-2)
        torch.testing.assert_close(rms_norm(x.to(dt).cuda(), nw.cuda(), 1e-6).cpu().float(),
                                   rms_norm(x.to(dt), nw, 1e-6).float(), atol=1e-2, rtol=1e-2)
    A_log, dt_bias = torch.rand(3, generator=gen), torch.randn(12, generator=gen)
    torch.testing.assert_close(kda_gate(x.cuda(), A_log.cuda(), dt_bias.cuda()).cpu(), kda_gate(x, A_log, dt_bias))


def test_moe_on_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(0)
    N, D, I, E = 40, 16, 8, 6
    x = torch.randn(N, D, generator=gen)
    w1, w3, w2 = (torch.randn(E, I, D, generator=gen) * 0.3, torch.randn(E, I, D, generator=gen) * 0.3,
                  torch.randn(E, D, I, generator=gen) * 0.3)
    logits, bias = torch.randn(N, E, generator=gen), torch.randn(E, generator=gen) * 0.1
    idx_c, w_c = moe_route(logits, bias, 2, scaling=2.5)
    idx_g, w_g = moe_route(logits.cuda(), bias.cuda(), 2, scaling=2.5)
    assert torch.equal(idx_g.cpu(), idx_c)
    torch.testing.assert_close(w_g.cpu(), w_c)
    y_c = moe_experts(x, w1, w3, w2, idx_c, w_c)
    y_g = moe_experts(*(t.cuda() for t in (x, w1, w3, w2, idx_g, w_g)))
    torch.testing.assert_close(y_g.cpu(), y_c, atol=1e-4, rtol=1e-4)


@needs_fla
@pytest.mark.parametrize("T", [64, 200])
def test_fla_chunk_kda_matches_torch_reference(T):
    from fla.ops.kda import chunk_kda as fla_chunk_kda

    # bf16 q/k/v/beta as the model passes them (fla autotunes per dtype; bf16 is its main path), fp32 g and h0.
    ins = [t.bfloat16() if i in (0, 1, 2, 4) else t for i, t in enumerate(kda_inputs(2, T, 4, 64, 64, "cuda"))]
    ours = lambda q, k, v, g, b, h: chunk_kda_torch(q, k, v, g, b, initial_state=h,  # noqa: E731
                                                    output_final_state=True, use_qk_l2norm=True)
    theirs = lambda q, k, v, g, b, h: fla_chunk_kda(q, k, v, g, b, initial_state=h,  # noqa: E731
                                                    output_final_state=True, use_qk_l2norm_in_kernel=True)
    o_r, S_r, g_r = grads(ours, ins)
    o_f, S_f, g_f = grads(theirs, ins)
    # fla computes with bf16 tensor-core dots: compare relative to each tensor's scale, as fla's own tests do.
    def close(a, b, name):
        a, b = a.float(), b.float()
        err = (a - b).abs().max().item() / max(b.abs().max().item(), 1e-6)
        assert err < 2e-2, f"{name}: max error / max value = {err:.2e}"

    close(o_f, o_r, "o")
    close(S_f, S_r, "final state")
    for name, a, b in zip(["q", "k", "v", "g", "beta", "h0"], g_f, g_r):
        close(a, b, f"grad {name}")


@needs_fla
def test_fla_fused_recurrent_and_triton_backend():
    from fla.ops.kda import fused_recurrent_kda

    q, k, v, g, beta, h0 = kda_inputs(2, 3, 4, 64, 64, "cuda")
    q, k, v, beta = (t.bfloat16() for t in (q, k, v, beta))
    o_f, S_f = fused_recurrent_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                   use_qk_l2norm_in_kernel=True)
    o_r, S_r = naive_recurrent_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                   use_qk_l2norm=True)
    tol = dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(o_f.float(), o_r.float(), **tol)
    torch.testing.assert_close(S_f, S_r, **tol)
    before = get_backend()
    set_backend("triton")
    try:
        o_t, S_t = recurrent_kda_step(q, k, v, g, beta, h0, use_qk_l2norm=True)
        torch.testing.assert_close(o_t.float(), o_r.float(), **tol)
        o_c, S_c = chunk_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True, use_qk_l2norm=True)
        torch.testing.assert_close(S_c, S_r, **tol)
    finally:
        set_backend(before)
