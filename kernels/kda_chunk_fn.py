"""Hand-written forward/backward of the chunked KDA core, as one torch.autograd.Function.

Given the intra-chunk score matrices (computed outside, with autograd, by `kda_chunk._intra_chunk_scores`), it
does everything else: the UT transform, the chunk-to-chunk state recurrence and the outputs. The layout
[N, BH, C, *] (chunk-major) is contiguous, the unit-triangular inverse is computed once and reused, and the backward needs about a
dozen batched matmuls instead of the autograd graph of the forward. Gradients are tested against autograd through
the naive recurrence (tests/kernels/test_kda.py).

Notation per chunk (batched over BH and N): Γ = cumsum(g) within the chunk, E = e^Γ (≤ 1), el = e^{Γ_C};
qg = q⊙E, kg = k⊙E, kd = k⊙e^{Γ_C − Γ} (≤ 1, so every exp here is of a number ≤ 0);
Aqk[t,s] = Σ_d q_t k_s e^{Γ_t − Γ_s} (s ≤ t), Akk the same with k_t (s < t);
T = (I + diag(β) Akk)⁻¹; u = T (β⊙v); w = T (β⊙kg);
M = diag(el) − kdᵀw, c = kdᵀu, S_{n+1} = M_n S_n + c_n; qs = qg − Aqk w; o = qs S_n + Aqk u.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


# Largest |exponent| the factored score form may meet: e^{±60} keeps every factor (and every product of
# factors that the causal mask later discards) finite in fp32, and products with e^{-60} far above denormals.
FACTOR_SAFE_RANGE = 60.0


def factor_reference(G: torch.Tensor) -> torch.Tensor:
    """Per chunk and channel, the midpoint of Γ's range: |Γ_t − reference| ≤ (Γ_1 − Γ_C) / 2 for every t.

    The factored score form writes e^{Γ_t − Γ_s} = e^{Γ_t − ref} · e^{ref − Γ_s}; with the midpoint both factors
    stay within e^{±FACTOR_SAFE_RANGE} for chunks whose decay spread is up to 2·FACTOR_SAFE_RANGE.
    """
    return (0.5 * (G[..., :1, :] + G[..., -1:, :])).detach()


def factor_safe(G: torch.Tensor) -> torch.Tensor:
    """[..., C, K] → [...] bool: whether the factored score form is safe for each chunk."""
    return (G[..., 0, :] - G[..., -1, :]).detach().abs().amax(-1) <= 2 * FACTOR_SAFE_RANGE


def _b(x: torch.Tensor) -> torch.Tensor:
    """[N, BH, R, C] (or a transposed view of a contiguous one) → [N·BH, R, C] view for baddbmm."""
    return x.flatten(0, 1)


def _T(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2)


def _bmm_acc(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """out += alpha · a @ b on [N, BH, *, *] tensors, in place (out must be a fresh contiguous tensor)."""
    assert out.is_contiguous(), "in-place accumulation needs a contiguous output (flatten would copy)"
    _b(out).baddbmm_(_b(a), _b(b), alpha=alpha)
    return out


def _states(M, c, S0):
    """S_{n+1} = M_n S_n + c_n over the chunk axis (dim 0, so every S_n is contiguous and written in place).

    Returns (starts [N,BH,K,V] = S_0 … S_{N-1}, final state [BH,K,V]).
    """
    N = c.shape[0]
    starts = torch.empty_like(c)
    starts[0] = S0
    for n in range(N - 1):
        torch.baddbmm(c[n], M[n], starts[n], out=starts[n + 1])
    return starts, torch.baddbmm(c[N - 1], M[N - 1], starts[N - 1])


# Written without torch.cat and with in-place accumulating matmuls: on CPU every extra pass over memory costs
# about as much as a small batched matmul.
class ChunkKDAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, G, beta, S0, Aqk, Akk):
        """Chunk-major layout: q (already scaled), k, G: [N,BH,C,K]; v: [N,BH,C,V]; beta: [N,BH,C]; S0: [BH,K,V];
        Aqk, Akk: [N,BH,C,C] (lower triangular incl. / excl. the diagonal), or both None to compute them here in
        the factored form (see `factor_reference`) — only valid when every chunk is `factor_safe` (the caller checks).

        Returns (o [N,BH,C,V], final state [BH,K,V]).
        """
        C = q.shape[-2]
        E = G.exp()
        el = E[..., -1:, :]
        qg, kg = q * E, k * E
        ctx.internal_scores = Aqk is None
        Em = None
        if ctx.internal_scores:
            Em = (G - factor_reference(G)).exp()
            kim = k / Em
            Aqk = ((q * Em) @ _T(kim)).tril_()
            Akk = ((k * Em) @ _T(kim)).tril_(-1)
        Ed = (G[..., -1:, :] - G).exp()
        kd = k * Ed
        b = beta.unsqueeze(-1)
        eye = torch.eye(C, dtype=q.dtype, device=q.device)
        # unitriangular=True: the solver takes the diagonal as ones, i.e. solves with I + β·stril(Akk).
        T = torch.linalg.solve_triangular(b * Akk, eye.expand_as(Akk), upper=False, unitriangular=True)
        u = T @ (b * v)
        w = T @ (b * kg)
        c = _T(kd) @ u
        M = _bmm_acc(torch.diag_embed(el.squeeze(-2)), _T(kd), w, alpha=-1.0)
        qs = torch.baddbmm(_b(qg), _b(Aqk), _b(w), alpha=-1.0).view_as(qg)
        starts, S = _states(M, c, S0)
        o = _bmm_acc(Aqk @ u, qs, starts)
        ctx.save_for_backward(q, k, v, beta, E, Ed, Em, qg, kg, Aqk, Akk, T, u, w, M, qs, starts)
        return o, S

    @staticmethod
    @once_differentiable
    def backward(ctx, dO, dS_final):
        q, k, v, beta, E, Ed, Em, qg, kg, Aqk, Akk, T, u, w, M, qs, starts = ctx.saved_tensors
        N = qg.shape[0]
        el = E[..., -1:, :]
        kd = k * Ed
        b = beta.unsqueeze(-1)
        dO = dO.contiguous()
        # Through the chunk-to-chunk state recurrence, backwards: dS_n = M_nᵀ dS_{n+1} + qs_nᵀ dO_n.
        X = _T(qs) @ dO
        dS_next = torch.empty_like(starts)  # gradient w.r.t. S_{n+1} (= dc_n)
        if dS_final is None:
            dS_next[N - 1].zero_()
        else:
            dS_next[N - 1] = dS_final
        for n in range(N - 1, 0, -1):
            torch.baddbmm(X[n], _T(M[n]), dS_next[n], out=dS_next[n - 1])
        dS0 = torch.baddbmm(X[0], _T(M[0]), dS_next[0])
        dM = dS_next @ _T(starts)
        dqs = dO @ _T(starts)
        # Within chunks (o = qs S + Aqk u, qs = qg − Aqk w, c = kdᵀu, M = diag(el) − kdᵀw).
        dAqk = _bmm_acc(dO @ _T(u), dqs, _T(w), alpha=-1.0).tril_()
        du = _bmm_acc(kd @ dS_next, _T(Aqk), dO)
        dw = _bmm_acc(kd @ dM, _T(Aqk), dqs).neg_()
        dkd = _bmm_acc(u @ _T(dS_next), w, _T(dM), alpha=-1.0)
        # [u | w] = T [β v | β kg], T = (I + β Akk)⁻¹  ⇒  d(I + β Akk) = −(dvb uᵀ + dkb wᵀ).
        dvb = _T(T) @ du
        dkb = _T(T) @ dw
        dIL = _bmm_acc(dvb @ _T(u), dkb, _T(w)).tril_(-1).neg_()
        dbeta = torch.linalg.vecdot(dvb, v) + torch.linalg.vecdot(dkb, kg) + torch.linalg.vecdot(dIL, Akk)
        dAkk = dIL.mul_(b)
        # Through qg = q e^Γ, kg = k e^Γ, kd = k e^{Γ_C − Γ}, el = e^{Γ_C} (Aqk, Akk: returned to autograd).
        dkg = b * dkb
        dq = dqs * E
        dk = torch.addcmul(dkg * E, dkd, Ed)
        kd_dkd = kd * dkd
        dG = torch.addcmul(qg * dqs, kg, dkg).sub_(kd_dkd)
        dG[..., -1:, :] += kd_dkd.sum(-2, keepdim=True) + torch.diagonal(dM, dim1=-2, dim2=-1).unsqueeze(-2) * el
        if not ctx.internal_scores:
            return dq, dk, b * dvb, dG, dbeta, dS0, dAqk, dAkk
        # Through Aqk = tril(qm kimᵀ), Akk = stril(km kimᵀ): qm = q Em, km = k Em, kim = k / Em, Em = e^{Γ − Γ_ref}.
        # The reference cancels in every product, so it is held constant (no gradient through it).
        qm, km, kim = q * Em, k * Em, k / Em
        dqm = dAqk @ kim
        dkm = dAkk @ kim
        dkim = _bmm_acc(_T(dAqk) @ qm, _T(dAkk), km)
        dq.addcmul_(dqm, Em)
        dk.addcmul_(dkm, Em).addcmul_(dkim, torch.reciprocal(Em))
        dG.addcmul_(qm, dqm).addcmul_(km, dkm).addcmul_(kim, dkim, value=-1.0)
        return dq, dk, b * dvb, dG, dbeta, dS0, None, None
