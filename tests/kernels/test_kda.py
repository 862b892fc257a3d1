"""KDA ops: the naive recurrence against the published math, chunked == naive (values, states, gradients), varlen,
decode step, no NaN gradients with very negative gates, bf16 inputs."""

from __future__ import annotations

import math

import pytest
import torch

from mixlab.errors import MixlabError
from mixlab.kernels import kda_chunk
from mixlab.kernels.kda_chunk_fn import factor_safe
from mixlab.kernels import (
    chunk_kda,
    kda_gate,
    l2norm,
    naive_recurrent_kda,
    recurrent_kda_step,
)


def make_inputs(B=2, T=37, H=2, K=8, V=6, dtype=torch.float32, g_min=-1.0, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = l2norm(torch.randn(B, T, H, K, generator=gen))
    v = torch.randn(B, T, H, V, generator=gen)
    g = torch.rand(B, T, H, K, generator=gen) * g_min  # in [g_min, 0]
    beta = torch.rand(B, T, H, generator=gen)
    s0 = torch.randn(B, H, K, V, generator=gen)
    ts = [t.to(dtype).requires_grad_(requires_grad) for t in (q, k, v, g, beta, s0)]
    return ts


def test_naive_matches_hand_computed_two_tokens():
    # K = V = 2, scale 1. Token 1: q=k=[1,0], v=[2,3], beta=.5, no decay.
    #   S1 = .5·k⊗v = [[1, 1.5], [0, 0]];  o1 = S1ᵀ q1 = [1, 1.5]
    # Token 2: decay α = [.5, 1] (g = [ln .5, 0]), k=[.6,.8], v=[1,-1], beta=1, q=[0,1].
    #   S' = diag(α) S1 = [[.5, .75], [0, 0]];  S'ᵀk = [.3, .45];  v − S'ᵀk = [.7, −1.45]
    #   S2 = S' + k⊗(.7, −1.45) = [[.92, −.12], [.56, −1.16]];  o2 = S2ᵀ q2 = [.56, −1.16]
    # The same S2 from the tech report's form S2 = (I − β k kᵀ) Diag(α) S1 + β k vᵀ.
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)
    k = torch.tensor([[1.0, 0.0], [0.6, 0.8]]).view(1, 2, 1, 2)
    v = torch.tensor([[2.0, 3.0], [1.0, -1.0]]).view(1, 2, 1, 2)
    g = torch.tensor([[0.0, 0.0], [math.log(0.5), 0.0]]).view(1, 2, 1, 2)
    beta = torch.tensor([0.5, 1.0]).view(1, 2, 1)
    o, S = naive_recurrent_kda(q, k, v, g, beta, scale=1.0, output_final_state=True)
    torch.testing.assert_close(o.view(2, 2), torch.tensor([[1.0, 1.5], [0.56, -1.16]]))
    torch.testing.assert_close(S.view(2, 2), torch.tensor([[0.92, -0.12], [0.56, -1.16]]))
    k2, v2 = k[0, 1, 0], v[0, 1, 0]
    S1 = torch.tensor([[1.0, 1.5], [0.0, 0.0]])
    S2 = (torch.eye(2) - torch.outer(k2, k2)) @ torch.diag(torch.tensor([0.5, 1.0])) @ S1 + torch.outer(k2, v2)
    torch.testing.assert_close(S.view(2, 2), S2)
    # chunked form gives the same numbers
    o_c, S_c = chunk_kda(q, k, v, g, beta, scale=1.0, output_final_state=True, chunk_size=2)
    torch.testing.assert_close(o_c, o)
    torch.testing.assert_close(S_c, S)


def test_naive_default_scale_and_l2norm_flag():
    q, k, v, g, beta, _ = make_inputs(B=1, T=5, H=1, K=16, V=4)
    qr, kr = q * 3.0, k * 0.5
    o_flag, _ = naive_recurrent_kda(qr, kr, v, g, beta, use_qk_l2norm=True)
    qn = qr / torch.sqrt(qr.square().sum(-1, keepdim=True) + 1e-6)
    kn = kr / torch.sqrt(kr.square().sum(-1, keepdim=True) + 1e-6)
    o_ref, _ = naive_recurrent_kda(qn, kn, v, g, beta, scale=16**-0.5)
    torch.testing.assert_close(o_flag, o_ref)


@pytest.mark.parametrize("T", [1, 16, 31, 33, 70])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunk_equals_naive_fp32(T, with_state):
    q, k, v, g, beta, s0 = make_inputs(T=T, g_min=-2.0)
    init = s0 if with_state else None
    o_ref, S_ref = naive_recurrent_kda(q, k, v, g, beta, initial_state=init, output_final_state=True)
    for C in (16, 32):
        o, S = chunk_kda(q, k, v, g, beta, initial_state=init, output_final_state=True, chunk_size=C)
        torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(S, S_ref, atol=1e-5, rtol=1e-5)


def test_chunk_l2norm_flag_and_no_final_state():
    q, k, v, g, beta, _ = make_inputs(T=20)
    k = k * 4.0
    o, S = chunk_kda(q, k, v, g, beta, use_qk_l2norm=True)
    assert S is None
    o_ref, _ = naive_recurrent_kda(q, k, v, g, beta, use_qk_l2norm=True)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)


def test_chunk_gradients_match_naive():
    inputs = make_inputs(B=1, T=21, H=2, K=4, V=3, dtype=torch.float64, g_min=-3.0, requires_grad=True)
    q, k, v, g, beta, s0 = inputs
    gen = torch.Generator().manual_seed(1)
    w_o = torch.randn(1, 21, 2, 3, generator=gen, dtype=torch.float64)
    w_s = torch.randn(1, 2, 4, 3, generator=gen, dtype=torch.float64)

    def loss(fn, **kw):
        o, S = fn(q, k, v, g, beta, initial_state=s0, output_final_state=True, **kw)
        return (o * w_o).sum() + (S * w_s).sum()

    grads_ref = torch.autograd.grad(loss(naive_recurrent_kda), inputs)
    grads = torch.autograd.grad(loss(chunk_kda, chunk_size=8), inputs)
    for name, a, b in zip(["q", "k", "v", "g", "beta", "initial_state"], grads, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7, msg=f"grad of {name}")


@pytest.mark.parametrize(
    "case",
    ["all_factored", "mixed", "all_subblock"],
)
def test_chunk_gradients_match_naive_on_every_score_path(case):
    # The factored score form is used per chunk only while the chunk's decay spread is ≤ 2·FACTOR_SAFE_RANGE;
    # the exact sub-block form takes the other chunks. Both, and their mix, must give the naive gradients.
    B, T, H, K, V, C = 1, 24, 2, 4, 3, 8
    inputs = make_inputs(B=B, T=T, H=H, K=K, V=V, dtype=torch.float64, g_min=-1.0, requires_grad=True)
    q, k, v, g, beta, s0 = inputs
    with torch.no_grad():
        if case == "mixed":
            g[:, 8:16, 0] = -20.0  # one chunk of head 0 spreads by 140 > 120
        elif case == "all_subblock":
            g.mul_(60.0)  # up to −60 per token everywhere
    G = g.detach().view(B, T // C, C, H, K).transpose(2, 3).cumsum(-2)  # [B, N, H, C, K]
    n_unsafe = int((~factor_safe(G)).sum())
    expected = {"all_factored": 0, "mixed": 1, "all_subblock": B * (T // C) * H}[case]
    assert n_unsafe == expected
    gen = torch.Generator().manual_seed(2)
    w_o = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)

    def loss(fn, **kw):
        o, S = fn(q, k, v, g, beta, initial_state=s0, output_final_state=True, **kw)
        return (o * w_o).sum() + S.square().sum()

    l_ref, l_chunk = loss(naive_recurrent_kda), loss(chunk_kda, chunk_size=C)
    torch.testing.assert_close(l_chunk, l_ref, atol=1e-10, rtol=1e-10)
    grads_ref = torch.autograd.grad(l_ref, inputs)
    grads = torch.autograd.grad(l_chunk, inputs)
    for name, a, b in zip(["q", "k", "v", "g", "beta", "initial_state"], grads, grads_ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7, msg=f"grad of {name} ({case})")


def test_score_forms_agree():
    gen = torch.Generator().manual_seed(4)
    q, k = torch.randn(2, 3, 16, 5, generator=gen, dtype=torch.float64), torch.randn(2, 3, 16, 5, generator=gen,
                                                                                         dtype=torch.float64)
    G = (-torch.rand(2, 3, 16, 5, generator=gen, dtype=torch.float64) * 2).cumsum(-2)
    ref = kda_chunk._scores_factored(q, k, G)
    for sub in (1, 4, 8, 16):
        got = kda_chunk._scores_subblock(q, k, G, sub)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_chunk_gradcheck_small():
    q, k, v, g, beta, s0 = make_inputs(B=1, T=6, H=1, K=3, V=2, dtype=torch.float64, requires_grad=True)
    fn = lambda *a: chunk_kda(*a[:5], initial_state=a[5], output_final_state=True, chunk_size=4)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v, g, beta, s0))


def test_no_nan_gradients_with_very_negative_gates():
    q, k, v, g, beta, s0 = make_inputs(B=2, T=70, H=2, K=8, V=8, g_min=-20.0, requires_grad=True)
    with torch.no_grad():
        g[:, ::3] = -20.0  # many tokens at the extreme
    o, S = chunk_kda(q, k, v, g, beta, initial_state=s0, output_final_state=True, chunk_size=32)
    (o.square().sum() + S.sum()).backward()
    for t in (q, k, v, g, beta, s0):
        assert torch.isfinite(t.grad).all()
    o_ref, S_ref = naive_recurrent_kda(q, k, v, g, beta, initial_state=s0, output_final_state=True)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(S, S_ref, atol=1e-5, rtol=1e-5)


def test_no_nan_gradients_through_kda_gate_path():
    # end to end as the model uses it: raw gate logits → kda_gate → chunk_kda, with huge logits
    B, T, H, K = 1, 40, 2, 8
    f = (torch.randn(B, T, H * K) * 50).requires_grad_(True)
    A_log = torch.log(torch.full((H,), 16.0)).requires_grad_(True)
    dt_bias = torch.zeros(H * K, requires_grad=True)
    q, k, v, _, beta, _ = make_inputs(B=B, T=T, H=H, K=K, V=K)
    g = kda_gate(f, A_log, dt_bias)
    assert g.min() < -100  # far below -20 per token
    o, S = chunk_kda(q, k, v, g, beta, output_final_state=True, chunk_size=16)
    (o.sum() + S.sum()).backward()
    for t in (f, A_log, dt_bias):
        assert torch.isfinite(t.grad).all()


def test_cu_seqlens_equals_separate_calls():
    lens = [5, 33, 1, 20]
    H, K, V = 2, 8, 4
    T = sum(lens)
    q, k, v, g, beta, _ = make_inputs(B=1, T=T, H=H, K=K, V=V)
    s0 = torch.randn(len(lens), H, K, V)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    o, S = chunk_kda(q, k, v, g, beta, initial_state=s0, output_final_state=True, cu_seqlens=cu, chunk_size=16)
    assert S.shape == (len(lens), H, K, V)
    o_n, S_n = naive_recurrent_kda(q, k, v, g, beta, initial_state=s0, output_final_state=True, cu_seqlens=cu)
    torch.testing.assert_close(o, o_n, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(S, S_n, atol=1e-5, rtol=1e-5)
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        sl = slice(a, b)
        o_i, S_i = chunk_kda(
            q[:, sl], k[:, sl], v[:, sl], g[:, sl], beta[:, sl], initial_state=s0[i : i + 1], output_final_state=True
        )
        torch.testing.assert_close(o[:, sl], o_i, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(S[i : i + 1], S_i, atol=1e-5, rtol=1e-5)


def test_cu_seqlens_gradients_do_not_leak():
    lens = [7, 9]
    q, k, v, g, beta, _ = make_inputs(B=1, T=16, H=1, K=4, V=4, requires_grad=True)
    cu = torch.tensor([0, 7, 16])
    o, _ = chunk_kda(q, k, v, g, beta, cu_seqlens=cu, chunk_size=4)
    o[:, 7:].sum().backward()  # the second sequence only
    for t in (q, k, v, g, beta):
        assert t.grad[:, : lens[0]].abs().max() == 0


def test_recurrent_step_matches_naive():
    q, k, v, g, beta, s0 = make_inputs(B=2, T=12, H=2, K=8, V=6)
    o_ref, S_ref = naive_recurrent_kda(q, k, v, g, beta, initial_state=s0, output_final_state=True)
    # chunked prefill of 9 tokens, then three single-token decode steps
    o_pre, S = chunk_kda(q[:, :9], k[:, :9], v[:, :9], g[:, :9], beta[:, :9], initial_state=s0,
                         output_final_state=True)
    s_before = S.clone()
    outs = [o_pre]
    for t in range(9, 12):
        sl = slice(t, t + 1)
        o_t, S_new = recurrent_kda_step(q[:, sl], k[:, sl], v[:, sl], g[:, sl], beta[:, sl], S)
        if t == 9:
            torch.testing.assert_close(S, s_before)  # the input state is not modified
        S = S_new
        outs.append(o_t)
    torch.testing.assert_close(torch.cat(outs, 1), o_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(S, S_ref, atol=1e-5, rtol=1e-5)
    assert S.dtype == torch.float32


def test_recurrent_step_l2norm_and_zero_state():
    q, k, v, g, beta, _ = make_inputs(B=1, T=1, H=2, K=8, V=6)
    o, S = recurrent_kda_step(q * 2, k * 3, v, g, beta, None, use_qk_l2norm=True)
    o_ref, S_ref = naive_recurrent_kda(q * 2, k * 3, v, g, beta, use_qk_l2norm=True, output_final_state=True)
    torch.testing.assert_close(o, o_ref)
    torch.testing.assert_close(S, S_ref)


def test_bf16_inputs_accepted():
    q, k, v, g, beta, s0 = make_inputs(T=40)
    qb, kb, vb, bb = (t.bfloat16() for t in (q, k, v, beta))
    o, S = chunk_kda(qb, kb, vb, g, bb, initial_state=s0, output_final_state=True)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    o_ref, S_ref = naive_recurrent_kda(qb, kb, vb, g, bb, initial_state=s0, output_final_state=True)
    assert o_ref.dtype == torch.bfloat16
    torch.testing.assert_close(o.float(), o_ref.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(S, S_ref, atol=1e-4, rtol=1e-4)
    o1, S1 = recurrent_kda_step(qb[:, :1], kb[:, :1], vb[:, :1], g[:, :1].bfloat16(), bb[:, :1], s0)
    assert o1.dtype == torch.bfloat16 and S1.dtype == torch.float32


def test_kda_gate_formula_and_shapes():
    H, K = 3, 4
    f = torch.randn(2, 5, H * K) * 10
    f[0, 0, 0] = 30.0  # above the softplus threshold: linear branch
    A_log = torch.log(torch.rand(H) * 15 + 1)
    dt_bias = torch.randn(H * K)
    g = kda_gate(f, A_log.view(1, 1, H, 1), dt_bias)
    assert g.shape == (2, 5, H, K) and g.dtype == torch.float32
    x = f.view(2, 5, H, K) + dt_bias.view(H, K)
    ref = -A_log.exp().view(H, 1) * torch.where(x > 20, x, torch.log1p(torch.exp(x)))
    torch.testing.assert_close(g, ref)
    torch.testing.assert_close(kda_gate(f.view(2, 5, H, K).bfloat16(), A_log, dt_bias),
                               kda_gate(f.bfloat16(), A_log, dt_bias))
    assert (kda_gate(f, A_log, None) <= 0).all()
    with pytest.raises(MixlabError, match="multiple"):
        kda_gate(torch.randn(2, 7), A_log, None)


def test_bad_shapes_raise_mixlab_error():
    q, k, v, g, beta, s0 = make_inputs(B=2, T=8)
    with pytest.raises(MixlabError, match="batch size must be 1"):
        chunk_kda(q, k, v, g, beta, cu_seqlens=torch.tensor([0, 8]))
    with pytest.raises(MixlabError, match="beta"):
        chunk_kda(q, k, v, g, beta[..., :1])
    with pytest.raises(MixlabError, match="initial_state"):
        chunk_kda(q, k, v, g, beta, initial_state=s0[:1])
    with pytest.raises(MixlabError, match="cu_seqlens"):
        naive_recurrent_kda(q[:1], k[:1], v[:1], g[:1], beta[:1], cu_seqlens=torch.tensor([0, 5]))


def test_l2norm_formula_and_gradcheck():
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(l2norm(x), x / torch.sqrt(x.square().sum(-1, keepdim=True) + 1e-6))
    assert torch.autograd.gradcheck(l2norm, (x,))
    assert l2norm(torch.randn(2, 4).bfloat16()).dtype == torch.float32


def test_factored_path_at_its_safety_bound_fp32():
    # Constant decay of -3.8 per token: every chunk of 32 spreads by 31 * 3.8 = 117.8, just inside the factored
    # form's bound (120), so its factors reach e^{±59}. Values and gradients must still be finite and exact.
    q, k, v, _, beta, s0 = make_inputs(B=1, T=64, H=2, K=8, V=8, requires_grad=False)
    g = torch.full_like(q, -3.8)
    g[..., 0] = -0.01  # channels of very different speeds in the same chunk
    G = g.view(1, 2, 32, 2, 8).transpose(2, 3).cumsum(-2)
    assert bool(factor_safe(G).all())
    inputs = [t.clone().requires_grad_(True) for t in (q, k, v, g, beta, s0)]
    o, S = chunk_kda(*inputs[:5], initial_state=inputs[5], output_final_state=True, chunk_size=32)
    (o.sum() + S.sum()).backward()
    grads = [t.grad for t in inputs]
    ref_in = [t.clone().requires_grad_(True) for t in (q, k, v, g, beta, s0)]
    o_r, S_r = naive_recurrent_kda(*ref_in[:5], initial_state=ref_in[5], output_final_state=True)
    (o_r.sum() + S_r.sum()).backward()
    torch.testing.assert_close(o, o_r, atol=1e-5, rtol=1e-5)
    for name, a, t in zip(["q", "k", "v", "g", "beta", "initial_state"], grads, ref_in):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, t.grad, atol=1e-4, rtol=1e-4, msg=f"grad of {name}")
