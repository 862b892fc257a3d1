"""Chunked (WY / UT-transform) KDA for training: exact, differentiable with plain autograd, NaN-free.

Within a chunk of C tokens let Γ_t = g_1 + … + g_t (per channel, ≤ 0 and decreasing) and S_0 the state at the
chunk start. Unrolling the recurrence of `kda_naive` gives, with U the "new values" β_t (v_t − (D_t S_{t-1})ᵀ k_t):

    (I + L) U = diag(β) (V − (e^Γ ⊙ K) S_0),   L[t,s] = β_t Σ_d k_t[d] k_s[d] e^{Γ_t[d] − Γ_s[d]}  (s < t)
    ⇒ U = u − w S_0  with  [u | w] = (I + L)⁻¹ diag(β) [V | e^Γ ⊙ K]          (one triangular solve)
    o_t = scale · (S_0ᵀ (e^{Γ_t} ⊙ q_t) + Σ_{s≤t} U_s ⟨q_t ⊙ e^{Γ_t − Γ_s}, k_s⟩)
    S_C = e^{Γ_C} ⊙ S_0 + Σ_s (k_s ⊙ e^{Γ_C − Γ_s}) U_sᵀ

Every exponent is a difference Γ_t − Γ_s with s ≤ t (or Γ_t itself), so it is ≤ 0 and exp never overflows, even
for g of −20 per token. The pairwise differences with s > t would be positive (and overflow for strongly negative
g); they are set to −inf BEFORE exp, so neither the values nor their gradients can become inf·0 = NaN
(transformers#48455). The S-dependent part is folded into per-chunk affine maps S ← M S + c, so the only
sequential work is one small batched matmul per chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixlab.errors import MixlabError

from .dispatch import use_triton
from .kda_common import check_kda_args, fp32, l2norm, pack_varlen, unpack_varlen

# Measured on CPU (bench/bench_kda_cpu.py): chunk 16/32 are fastest at the demo size; see bench/results.
DEFAULT_CHUNK_SIZE = 32


def _chunk_core(q, k, v, g, beta, scale: float, state: torch.Tensor | None, C: int):
    """fp32 core on [B, T, H, *]. Returns (o fp32 [B,T,H,V], final state [B,H,K,V])."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    pad = (-T) % C
    if pad:  # zero k, v, g, beta tokens leave the state unchanged; their outputs are dropped
        q, k, v, g = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v, g))
        beta = F.pad(beta, (0, 0, 0, pad))
    N = (T + pad) // C

    def chunks(t):  # [B, Tp, H, D] -> [B, H, N, C, D]
        return t.reshape(B, N, C, H, -1).permute(0, 3, 1, 2, 4)

    q, k, v, g = chunks(q), chunks(k), chunks(v), chunks(g)
    beta = beta.reshape(B, N, C, H).permute(0, 3, 1, 2)  # [B, H, N, C]
    q = q * scale
    G = g.cumsum(-2)  # Γ, within-chunk prefix sums
    G_last = G[..., -1:, :]  # [B, H, N, 1, K]

    # Pairwise decays e^{Γ_t − Γ_s} for s ≤ t, exactly 0 above the diagonal (masked before exp).
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    diff = (G.unsqueeze(-2) - G.unsqueeze(-3)).masked_fill(~causal[:, :, None], float("-inf"))
    decay_k = diff.exp() * k.unsqueeze(-3)  # [B,H,N,C(t),C(s),K]: e^{Γ_t-Γ_s} k_s
    # For each t: [q_t | k_t] against all s in one batched matmul -> Aqk[t,s], Akk[t,s].
    qk = torch.stack((q, k), -1)  # [B,H,N,C,K,2]
    A = torch.matmul(decay_k, qk)  # [B,H,N,C,C,2]
    Aqk, Akk = A[..., 0], A[..., 1]

    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    IL = eye + Akk.tril(-1) * beta.unsqueeze(-1)  # I + L (unit lower triangular)
    rhs = beta.unsqueeze(-1) * torch.cat((v, G.exp() * k), -1)
    uw = torch.linalg.solve_triangular(IL, rhs, upper=False, unitriangular=True)
    u, w = uw[..., :V], uw[..., V:]

    k_dec = k * (G_last - G).exp()  # k_s e^{Γ_C − Γ_s}
    k_dec_t = k_dec.transpose(-1, -2)  # [B,H,N,K,C]
    M = torch.diag_embed(G_last.squeeze(-2).exp()) - k_dec_t @ w  # [B,H,N,K,K]
    c = k_dec_t @ u  # [B,H,N,K,V]
    q_state = q * G.exp() - Aqk @ w  # what multiplies S_0 in o
    o = Aqk @ u

    S = q.new_zeros(B, H, K, V) if state is None else state.to(q.dtype)
    starts = []
    for n in range(N):
        starts.append(S)
        S = torch.baddbmm(c[:, :, n].reshape(B * H, K, V), M[:, :, n].reshape(B * H, K, K), S.reshape(B * H, K, V))
        S = S.view(B, H, K, V)
    if state is not None or N > 1:
        o = o + q_state @ torch.stack(starts, 2)
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]
    return o, S


def chunk_kda_torch(
    q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
    use_qk_l2norm=False, chunk_size=DEFAULT_CHUNK_SIZE,
):
    """Pure-torch `chunk_kda` (see that function); runs on any device."""
    check_kda_args("chunk_kda", q, k, v, g, beta, initial_state, cu_seqlens)
    if chunk_size < 1:
        raise MixlabError(f"chunk_kda: chunk_size must be ≥ 1, got {chunk_size}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out_dtype = v.dtype
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    q, k, v, g, beta = (fp32(t) for t in (q, k, v, g, beta))
    if cu_seqlens is None:
        o, S = _chunk_core(q, k, v, g, beta, scale, initial_state, chunk_size)
        return o.to(out_dtype), (S if output_final_state else None)
    # Packed sequences: run them as a right-padded batch (padding is exact, see unpack_varlen).
    padded = []
    for t in (q, k, v, g, beta):
        p, flat = unpack_varlen(t, cu_seqlens)
        padded.append(p)
    o, S = _chunk_core(*padded, scale, initial_state, chunk_size)
    return pack_varlen(o, flat).to(out_dtype), (S if output_final_state else None)


def chunk_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked KDA, equal to `naive_recurrent_kda` (fp32) for any T; differentiable; never NaN gradients.

    q, k [B,T,H,K]; v [B,T,H,V]; g [B,T,H,K] log decay (≤ 0, fp32 preferred); beta [B,T,H];
    initial_state [N,H,K,V] fp32; cu_seqlens int [N+1] with B = 1 restarts the state per sequence.
    Computes in fp32; returns (o in v.dtype, final state fp32 [N,H,K,V] or None).
    On the "triton" backend with CUDA tensors this calls fla's `chunk_kda` (chunk size 64).
    """
    if use_triton(q, k, v, g, beta, initial_state):
        from fla.ops.kda import chunk_kda as fla_chunk_kda

        check_kda_args("chunk_kda", q, k, v, g, beta, initial_state, cu_seqlens)
        o, S = fla_chunk_kda(
            q, k, v, g.float(), beta, scale=scale,
            initial_state=None if initial_state is None else initial_state.float(),
            output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm,
            cu_seqlens=None if cu_seqlens is None else cu_seqlens.long(),
        )
        return o.to(v.dtype), S
    return chunk_kda_torch(
        q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
        cu_seqlens=cu_seqlens, use_qk_l2norm=use_qk_l2norm, chunk_size=chunk_size,
    )
