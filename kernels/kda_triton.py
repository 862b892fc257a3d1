"""mixlab's own chunked KDA in Triton: forward and backward as one torch.autograd.Function.

The algorithm is the chunked delta rule of kda_chunk.py / kda_chunk_fn.py (WY representation with the UT
transform inside 64-token chunks, an fp32 state recurrence across chunks), with the same hand-derived backward;
the kernels are in kda_triton_kernels.py. Launches per call: forward 4 (cumsum, scores, solve, recurrence),
backward 4 (recurrence, intra-chunk, scores, reverse cumsum). The backward reuses what the forward saved (score
matrices, the inverse, w, u and the chunk-start states: K·V fp32 per chunk and head).

Requirements: g ≤ 0 (log decay, as `kda_gate` gives), K and V powers of two from 16 to 256, chunk size 64.
q and k are L2-normalised here by `kda_common.l2norm` (torch) when asked. Reference: `chunk_kda_torch` and the
token loop `naive_recurrent_kda`; tests in tests/kernels/test_kda_triton.py (interpreter on CPU, real shapes on GPU).
"""

from __future__ import annotations

import torch
import triton
from torch.autograd.function import once_differentiable

from mixlab.errors import MixlabError

from .kda_common import check_kda_args, l2norm
from .kda_triton_kernels import (
    _cumsum_kernel,
    _intra_bwd_kernel,
    _scores_bwd_kernel,
    _scores_fwd_kernel,
    _solve_fwd_kernel,
    _state_bwd_kernel,
    _state_fwd_kernel,
)

CHUNK = 64
SUB = 16
# Launch options per kernel, chosen on CPU from ptxas's report for sm_90 at K=V=128 (kda_triton_aot.py compiles
# them; no GPU timing has picked them yet). 8 warps: every kernel but the cumsum holds several [64, 128] fp32
# tiles and spills registers at 4 (e.g. the forward recurrence 2.7 KB/thread at 4 warps, 0.7 KB at 8).
# num_stages=1 for the loops: pipelining multi-buffers the per-chunk loads into 409 KB of shared memory, over
# the 227 KB an H100 block may use (the first device run failed there; a slow test checks the limit).
LAUNCH = {
    "_cumsum_kernel": {},
    "_scores_fwd_kernel": {"num_warps": 8},
    "_solve_fwd_kernel": {"num_warps": 8},
    "_state_fwd_kernel": {"num_warps": 8, "num_stages": 1},
    "_state_bwd_kernel": {"num_warps": 8, "num_stages": 1},
    "_intra_bwd_kernel": {"num_warps": 8, "num_stages": 1},
    "_scores_bwd_kernel": {"num_warps": 8},
}


def _chunk_layout(cu: torch.Tensor, seq_len: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """cu_seqlens [N+1] → (chunk index pairs [NT, 2] int32 (sequence, chunk), first chunk of each sequence [N]).

    seq_len: the common length of equal-length sequences (a [B, T] batch), which needs no host sync (so a CUDA
    graph can capture the op); None for varlen, which reads the chunk count back once.
    """
    if seq_len is not None:
        n, nc = cu.numel() - 1, triton.cdiv(seq_len, CHUNK)
        j = torch.arange(n * nc, device=cu.device, dtype=torch.int32)
        co = torch.arange(n, device=cu.device, dtype=torch.int32) * nc
        return torch.stack((j // nc, j % nc), 1).contiguous(), co
    lens = cu[1:] - cu[:-1]
    nchunks = (lens + CHUNK - 1) // CHUNK
    offsets = torch.cumsum(nchunks, 0) - nchunks
    total = int(nchunks.sum())  # one host sync per call (also what sizes the grid)
    seq = torch.repeat_interleave(torch.arange(lens.numel(), device=cu.device), nchunks, output_size=total)
    within = torch.arange(total, device=cu.device) - offsets[seq]
    return torch.stack((seq, within), 1).to(torch.int32).contiguous(), offsets.to(torch.int32)


def _bv(dv: int) -> int:
    return min(dv, 32)


class KDATritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, beta, scale, initial_state, output_final_state, cu, seq_len):
        """q, k, g [1, T, H, K] (token-flat), v [1, T, H, V], beta [1, T, H]; cu int32 [N+1]; state [N, H, K, V];
        seq_len: the length of every sequence when they are equal (no varlen), else None."""
        _, T, H, K = q.shape
        DV = v.shape[-1]
        N = cu.numel() - 1
        dev = q.device
        ci, co = _chunk_layout(cu, seq_len)
        NT = ci.shape[0]
        f32 = dict(device=dev, dtype=torch.float32)
        G = torch.empty(T, H, K, **f32)
        _cumsum_kernel[(NT, H)](g, G, cu, ci, H=H, K=K, C=CHUNK, REVERSE=False, **LAUNCH["_cumsum_kernel"])
        Aqk = torch.empty(T, H, CHUNK, **f32)
        Akk = torch.empty(T, H, CHUNK, **f32)
        _scores_fwd_kernel[(NT, CHUNK // SUB, H)](q, k, G, Aqk, Akk, cu, ci, scale, H=H, K=K, C=CHUNK, BC=SUB,
                                                    **LAUNCH["_scores_fwd_kernel"])
        Tm = torch.empty(T, H, CHUNK, **f32)
        w = torch.empty(T, H, K, **f32)
        u = torch.empty(T, H, DV, **f32)
        _solve_fwd_kernel[(NT, H)](k, v, G, beta, Akk, Tm, w, u, cu, ci, H=H, K=K, DV=DV, C=CHUNK,
                                   **LAUNCH["_solve_fwd_kernel"])
        o = torch.empty_like(v)
        starts = torch.empty(NT, H, K, DV, **f32)
        ST = torch.empty(N, H, K, DV, **f32) if output_final_state else starts
        S0 = initial_state.float().contiguous() if initial_state is not None else starts
        BV = _bv(DV)
        _state_fwd_kernel[(DV // BV, N * H)](
            q, k, G, w, u, Aqk, o, S0, starts, ST, cu, co, scale, H=H, K=K, DV=DV, C=CHUNK, BV=BV,
            HAS_S0=initial_state is not None, STORE_ST=output_final_state, **LAUNCH["_state_fwd_kernel"],
        )
        ctx.save_for_backward(q, k, v, G, beta, Aqk, Akk, Tm, w, u, starts, cu, ci, co)
        ctx.scale = scale
        ctx.has_s0 = initial_state is not None
        ctx.s0_dtype = None if initial_state is None else initial_state.dtype
        ctx.g_dtype = g.dtype
        return o, (ST if output_final_state else None)

    @staticmethod
    @once_differentiable
    def backward(ctx, do, dST):
        q, k, v, G, beta, Aqk, Akk, Tm, w, u, starts, cu, ci, co = ctx.saved_tensors
        _, T, H, K = q.shape
        DV = v.shape[-1]
        N = cu.numel() - 1
        NT = ci.shape[0]
        scale = ctx.scale
        f32 = dict(device=q.device, dtype=torch.float32)
        do = do.contiguous()
        BV = _bv(DV)
        dnext = torch.empty_like(starts)
        dS0 = torch.empty(N, H, K, DV, **f32)
        _state_bwd_kernel[(DV // BV, N * H)](
            q, k, G, w, Aqk, do, dST.contiguous() if dST is not None else dS0, dnext, dS0, cu, co, scale,
            H=H, K=K, DV=DV, C=CHUNK, BV=BV, HAS_DST=dST is not None, **LAUNCH["_state_bwd_kernel"],
        )
        dq = torch.empty(T, H, K, **f32)
        dk = torch.empty(T, H, K, **f32)
        dG = torch.empty(T, H, K, **f32)
        dv = torch.empty_like(v)
        dbeta = torch.empty(T, H, **f32)
        dAqk = torch.empty(T, H, CHUNK, **f32)
        dAkk = torch.empty(T, H, CHUNK, **f32)
        _intra_bwd_kernel[(NT, H)](
            q, k, v, G, beta, Aqk, Akk, Tm, w, u, starts, dnext, do, dq, dk, dv, dG, dbeta, dAqk, dAkk, cu, ci,
            scale, H=H, K=K, DV=DV, C=CHUNK, BV=BV, **LAUNCH["_intra_bwd_kernel"],
        )
        _scores_bwd_kernel[(NT, CHUNK // SUB, H)](
            q, k, G, dAqk, dAkk, dq, dk, dG, cu, ci, scale, H=H, K=K, C=CHUNK, BC=SUB,
            **LAUNCH["_scores_bwd_kernel"],
        )
        dg = torch.empty(T, H, K, **f32)
        _cumsum_kernel[(NT, H)](dG, dg, cu, ci, H=H, K=K, C=CHUNK, REVERSE=True, **LAUNCH["_cumsum_kernel"])
        shape = q.shape
        return (
            dq.view(shape).to(q.dtype), dk.view(shape).to(k.dtype), dv, dg.view(shape).to(ctx.g_dtype),
            dbeta.view(beta.shape).to(beta.dtype), None, dS0.to(ctx.s0_dtype) if ctx.has_s0 else None, None, None,
            None,
        )


def _pow2_dim(op: str, name: str, n: int) -> None:
    if n < 16 or n > 256 or n & (n - 1):
        raise MixlabError(f"{op}: {name} must be a power of two between 16 and 256 for the Triton kernel, got {n}")


def chunk_kda_triton(
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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`chunk_kda` with mixlab's Triton kernels (same arguments and results as `kda_chunk.chunk_kda`).

    q, k [B,T,H,K]; v [B,T,H,V]; g [B,T,H,K] log decay ≤ 0 (fp32 preferred); beta [B,T,H]; initial_state
    [N,H,K,V]; cu_seqlens [N+1] with B = 1 for packed sequences. Returns (o in v.dtype, final state fp32 or None).
    """
    check_kda_args("chunk_kda_triton", q, k, v, g, beta, initial_state, cu_seqlens)
    B, T, H, K = q.shape
    _pow2_dim("chunk_kda_triton", "K", K)
    _pow2_dim("chunk_kda_triton", "V", v.shape[-1])
    scale = K ** -0.5 if scale is None else float(scale)
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)  # fp32: the kernels compute in fp32 anyway
    if cu_seqlens is None:
        cu = torch.arange(0, B + 1, device=q.device, dtype=torch.int32) * T
    else:
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    flat = lambda t: t.reshape(1, B * T, *t.shape[2:]).contiguous()  # noqa: E731
    o, S = KDATritonFunction.apply(
        flat(q), flat(k), flat(v), flat(g.float()), flat(beta), scale, initial_state, output_final_state, cu,
        T if cu_seqlens is None else None,
    )
    return o.view(v.shape), S
