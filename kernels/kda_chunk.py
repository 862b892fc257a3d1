"""Chunked (WY / UT-transform) KDA for training: exact for any T and any decay, differentiable, NaN-free.

Within a chunk of C tokens let Γ_t = g_1 + … + g_t (per channel, ≤ 0 and decreasing) and S_0 the state at the
chunk start. Unrolling the recurrence of `kda_naive` gives, with U the "new values" β_t (v_t − (D_t S_{t-1})ᵀ k_t):

    (I + L) U = diag(β) (V − (e^Γ ⊙ K) S_0),   L[t,s] = β_t Σ_d k_t[d] k_s[d] e^{Γ_t[d] − Γ_s[d]}  (s < t)
    ⇒ U = u − w S_0  with  [u | w] = (I + L)⁻¹ diag(β) [V | e^Γ ⊙ K]
    o_t = S_0ᵀ (e^{Γ_t} ⊙ q_t) + Σ_{s≤t} U_s ⟨q_t ⊙ e^{Γ_t − Γ_s}, k_s⟩          (q already times scale)
    S_C = e^{Γ_C} ⊙ S_0 + Σ_s (k_s ⊙ e^{Γ_C − Γ_s}) U_sᵀ

The S-dependent part folds into per-chunk affine maps S ← M S + c, so the only sequential work is one small
batched matmul per chunk; that part, with a hand-written backward, is `kda_chunk_fn.ChunkKDAFunction`.

Numerics. Every exponent outside the score matrices is ≤ 0 (Γ_t, Γ_C − Γ_s). The score matrices need
e^{Γ_t − Γ_s} for s ≤ t; those with s > t would be positive and overflow for strongly negative g, so they never go
through exp unmasked (transformers#48455: inf·0 = NaN gradients). Per chunk, one of two exact forms is used:
- factored (fast, two matmuls): e^{Γ_t − ref} · e^{ref − Γ_s} with ref the midpoint of the chunk's Γ range, only
  where that range is ≤ 2·FACTOR_SAFE_RANGE (120: an average decay down to −3.75 per token at chunk 32), so both
  factors stay within e^{±60}; the upper triangle is discarded after the matmul (a select, never a multiply).
- sub-block (any decay): pairwise within sub-blocks (masked to −inf before exp) and, between sub-blocks, factors
  relative to the block boundary that are both ≤ 1. Chunks with g down to −20 per token take this path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixlab.errors import MixlabError

from .dispatch import kda_backend
from .kda_chunk_fn import FACTOR_SAFE_RANGE, ChunkKDAFunction, factor_reference, factor_safe  # noqa: F401
from .kda_common import check_kda_args, fp32, l2norm, pack_varlen, unpack_varlen

# Chunk size when none is given, per device type. Measured (bench/bench_kda_cpu.py, bench/bench_kda_gpu.py):
# on CPU at the demo size (B=32, T=96, H·K=128) 32 beats 16 and 64 for fwd+bwd; on an H200 at B=4, T=2048,
# H=8, K=128 the torch path is faster with 64 than 32.
DEFAULT_CHUNK_SIZE = {"cpu": 32, "cuda": 64}


def default_chunk_size(device: torch.device) -> int:
    return DEFAULT_CHUNK_SIZE.get(device.type, 32)


def _scores_subblock(q, k, G, sub: int):
    """Exact score matrices for any decay. q, k, G: [..., C, K] → (Aqk incl. diagonal, Akk strictly lower).

    Within a sub-block of `sub` tokens the decays are pairwise (masked to −inf above the diagonal before exp).
    Between blocks, block i uses the reference Γ_r at the end of block i−1: rows get e^{Γ_t − Γ_r} ≤ 1 and earlier
    columns e^{Γ_r − Γ_s} ≤ 1 (later columns masked to −inf before exp), and the product is one matmul.
    """
    C = q.shape[-2]
    c = sub if 0 < sub < C and C % sub == 0 else C
    nb = C // c
    dev = q.device
    qk = torch.stack((q, k), -3).unflatten(-2, (nb, c))  # [..., 2, nb, c, K]
    Gb = G.unflatten(-2, (nb, c))  # [..., nb, c, K]
    tri = torch.ones(c, c, dtype=torch.bool, device=dev).tril()
    diff = (Gb.unsqueeze(-2) - Gb.unsqueeze(-3)).masked_fill(~tri[:, :, None], float("-inf"))
    P = diff.exp() * k.unflatten(-2, (nb, c)).unsqueeze(-3)  # [..., nb, c(t), c(s), K]
    A = (P.unsqueeze(-5) * qk.unsqueeze(-2)).sum(-1)  # [..., 2, nb, c(t), c(s)]
    if nb > 1:
        ref = torch.cat((torch.zeros_like(G[..., :1, :]), G[..., c - 1 : C - 1 : c, :]), -2)  # [..., nb, K]
        qk_hat = qk * (Gb - ref.unsqueeze(-2)).exp().unsqueeze(-4)  # rows: x_t e^{Γ_t − Γ_r(i)}
        earlier = torch.arange(C, device=dev)[None, :] < (torch.arange(nb, device=dev) * c)[:, None]  # [nb, C]
        dcol = (ref.unsqueeze(-2) - G.unsqueeze(-3)).masked_fill(~earlier[:, :, None], float("-inf"))
        k_col = dcol.exp() * k.unsqueeze(-3)  # [..., nb, C, K]: k_s e^{Γ_r(i) − Γ_s}, s in blocks < i
        A_off = (qk_hat @ k_col.unsqueeze(-4).transpose(-1, -2)).unflatten(-1, (nb, c))  # [..., 2, nb, c, nb, c]
        eye = torch.eye(nb, dtype=q.dtype, device=dev)[:, None, :, None]
        A = (A_off + A.unsqueeze(-2) * eye).flatten(-2, -1)  # [..., 2, nb, c, C]
    A = A.reshape(*A.shape[:-4], 2, C, C)
    return A[..., 0, :, :], A[..., 1, :, :].tril(-1)


def _scores_factored(q, k, G):
    """Score matrices as two matmuls, e^{Γ_t − Γ_s} = e^{Γ_t − ref} · e^{ref − Γ_s}; only for `factor_safe` chunks."""
    D = G - factor_reference(G)
    Em = D.exp()
    kim = k * (-D).exp()  # not k / Em: the autograd of a division squares Em, which underflows at e^-60
    Aqk = ((q * Em) @ kim.transpose(-1, -2)).tril()
    Akk = ((k * Em) @ kim.transpose(-1, -2)).tril(-1)
    return Aqk, Akk


def _intra_chunk_scores(q, k, G, sub: int):
    """Per chunk, the factored form where it is safe and the sub-block form elsewhere. [N, BH, C, K] inputs.

    Returns (None, None) when every chunk is safe: ChunkKDAFunction then computes the factored form itself.
    """
    unsafe = ~factor_safe(G)  # [N, BH]
    n_unsafe = int(unsafe.sum())
    if n_unsafe == 0:
        return None, None
    if n_unsafe == unsafe.numel():
        return _scores_subblock(q, k, G, sub)
    # Mask before exp: the factored form sees Γ = 0 on unsafe chunks (finite values, then overwritten, and
    # index_copy sends no gradient to what it overwrites).
    Aqk, Akk = _scores_factored(q, k, G.masked_fill(unsafe[..., None, None], 0.0))
    idx = unsafe.flatten().nonzero().squeeze(-1)
    flat = lambda t: t.flatten(0, 1).index_select(0, idx)  # noqa: E731
    Aqk_x, Akk_x = _scores_subblock(flat(q), flat(k), flat(G), sub)
    Aqk = Aqk.flatten(0, 1).index_copy(0, idx, Aqk_x).view_as(Aqk)
    Akk = Akk.flatten(0, 1).index_copy(0, idx, Akk_x).view_as(Akk)
    return Aqk, Akk


def _chunk_core(q, k, v, g, beta, scale: float, state: torch.Tensor | None, C: int, sub_chunk: int = 8):
    """[B, T, H, *] fp32 inputs → (o [B, T, H, V], final state [B, H, K, V])."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    pad = (-T) % C
    if pad:  # zero k, v, g, beta tokens leave the state unchanged; their outputs are dropped
        q, k, v, g = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v, g))
        beta = F.pad(beta, (0, 0, 0, pad))
    N = (T + pad) // C

    def chunks(t):  # [B, Tp, H, D] -> [N, B*H, C, D], contiguous (chunk-major: see kda_chunk_fn._states)
        return t.reshape(B, N, C, H, -1).permute(1, 0, 3, 2, 4).reshape(N, B * H, C, -1).contiguous()

    qc, kc, G = chunks(q * scale), chunks(k), chunks(g).cumsum(-2)
    Aqk, Akk = _intra_chunk_scores(qc, kc, G, sub_chunk)
    S0 = q.new_zeros(B * H, K, V) if state is None else state.to(q.dtype).reshape(B * H, K, V)
    o, S = ChunkKDAFunction.apply(qc, kc, chunks(v), G, chunks(beta.unsqueeze(-1))[..., 0], S0, Aqk, Akk)
    o = o.view(N, B, H, C, V).permute(1, 0, 3, 2, 4).reshape(B, N * C, H, V)[:, :T]
    return o, S.view(B, H, K, V)


def chunk_kda_torch(
    q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
    use_qk_l2norm=False, chunk_size=None,
):
    """Pure-torch `chunk_kda` (see that function); runs on any device."""
    check_kda_args("chunk_kda", q, k, v, g, beta, initial_state, cu_seqlens)
    chunk_size = default_chunk_size(q.device) if chunk_size is None else chunk_size
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
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked KDA, equal to `naive_recurrent_kda` (fp32) for any T; differentiable; never NaN gradients.

    q, k [B,T,H,K]; v [B,T,H,V]; g [B,T,H,K] log decay (≤ 0, fp32 preferred); beta [B,T,H];
    initial_state [N,H,K,V] fp32; cu_seqlens int [N+1] with B = 1 restarts the state per sequence.
    Computes in fp32; returns (o in v.dtype, final state fp32 [N,H,K,V] or None). chunk_size None picks the
    measured best for the device (DEFAULT_CHUNK_SIZE). With CUDA tensors on the fast path this calls mixlab's own
    Triton kernels, or fla's `chunk_kda` (chunk size 64) with MIXLAB_KDA_BACKEND=fla (see `dispatch.kda_backend`).
    """
    backend = kda_backend(q, k, v, g, beta, initial_state)
    if backend == "mixlab":
        from .kda_triton import chunk_kda_triton  # triton only on the GPU path (as norm.py does)

        return chunk_kda_triton(
            q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
            cu_seqlens=cu_seqlens, use_qk_l2norm=use_qk_l2norm,
        )
    if backend == "fla":
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
