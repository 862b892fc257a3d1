"""mixlab's own chunked KDA in Triton: forward and backward as one torch.autograd.Function.

The algorithm is the chunked delta rule of kda_chunk.py / kda_chunk_fn.py (WY representation with the UT
transform inside 64-token chunks, an fp32 state recurrence across chunks), with the same hand-derived backward;
the kernels are in kda_triton_kernels.py. Launches per call: forward 6 (cumsum, scores in two: the diagonal 16×16
sub-blocks token by token and the rest as tensor-core dots, solve, recurrence, output), backward 7 (output part,
recurrence, intra-chunk in two, scores in two, reverse cumsum), plus one L2-norm launch each for q and k each way
when asked. Only the state update runs sequentially over chunks; the backward reuses what the forward saved (score
matrices, the inverse, w, u, qg, kd, v_new and the chunk-start states, in the inputs' 16-bit dtype like fla-core's,
or fp32 for fp32 inputs).

Requirements: g ≤ 0 (log decay, as `kda_gate` gives), K and V powers of two from 16 to 256, chunk size 64.
q and k are L2-normalised inside the op (`_l2norm_fwd`, the Triton twin of `kda_common.l2norm`) when asked.
Reference: `chunk_kda_torch` and the token loop `naive_recurrent_kda`; tests in tests/kernels/test_kda_triton.py
(interpreter on CPU, real shapes on GPU).
"""

from __future__ import annotations

import math

import torch
import triton
from torch.autograd.function import once_differentiable

from mixlab.errors import MixlabError

from .kda_common import check_kda_args
from .kda_triton_kernels import (
    _cumsum_kernel,
    _dv0_bwd_kernel,
    _intra_bwd_kernel,
    _intra_bwd_v_kernel,
    _l2norm_bwd_kernel,
    _l2norm_fwd_kernel,
    _output_fwd_kernel,
    _scores_diag_bwd_kernel,
    _scores_diag_fwd_kernel,
    _scores_off_bwd_kernel,
    _scores_off_fwd_kernel,
    _solve_fwd_kernel,
    _state_bwd_kernel,
    _state_fwd_kernel,
)

CHUNK = 64
SUB = 16
# Launch options per kernel at K=V=128 (bf16 intermediates): first from ptxas's report for sm_90 (`python -P -m
# mixlab.kernels.kda_triton_aot`: registers, spills, shared memory), then by H100 timing of the alternatives in
# bench_kda_gpu.SWEEP (bench/gpu_kda.sh; the score kernels, the solve and the state V block in waves 7 and 8). The
# recurrences pipeline their per-chunk loads (num_stages=2: 80–140 KB of shared memory, under the 227 KB an H100
# block may use; a slow test checks the limit).
LAUNCH = {
    "_cumsum_kernel": {},
    "_scores_off_fwd_kernel": {"num_warps": 2},
    "_scores_diag_fwd_kernel": {"num_warps": 1},
    "_scores_off_bwd_kernel": {"num_warps": 4},
    "_scores_diag_bwd_kernel": {"num_warps": 1},
    "_solve_fwd_kernel": {"num_warps": 4},
    "_state_fwd_kernel": {"num_warps": 4, "num_stages": 2},
    "_output_fwd_kernel": {"num_warps": 4},
    "_dv0_bwd_kernel": {"num_warps": 4},
    "_state_bwd_kernel": {"num_warps": 4, "num_stages": 2},
    "_intra_bwd_v_kernel": {"num_warps": 4},
    "_intra_bwd_kernel": {"num_warps": 8, "num_stages": 1},
    "_l2norm_fwd_kernel": {"num_warps": 4},
    "_l2norm_bwd_kernel": {"num_warps": 4},
}
# fp32 intermediates (fp32 inputs) double the recurrences' pipelined tiles: one stage keeps them in shared memory
# (the backward's would need 240 KB at two), 8 warps keeps their registers from spilling. The off-diagonal score
# backward over fp32 q, k: 8 warps (H100 sweep, wave 8: 2.47 against 2.75 ms at 4).
LAUNCH_FP32 = {"_state_fwd_kernel": {"num_warps": 8, "num_stages": 1},
               "_state_bwd_kernel": {"num_warps": 8, "num_stages": 1},
               "_scores_off_bwd_kernel": {"num_warps": 8}}
L2_ROWS = 32  # rows per program of the L2 norm
# The score matrices' diagonal 16×16 sub-blocks run one token per program for SCORES_BH heads (fla-core's forward
# does the same); the rest are tensor-core dots, K in blocks of SCORES_OFF_BK. An H100 sweep (wave 7) chose these.
SCORES_BH = 2
SCORES_OFF_BK = {"fwd": 32, "bwd": 128}
SOLVE_BD = 64  # K and V block of the solve's w, u, qg, kd tiles
# L2-normalised q and k in the inputs' 16-bit dtype, as fla-core's l2norm_fwd gives them (False: fp32). Six kernels
# read q and k; fp32 copies double those bytes. Measured against fp32 in bench_kda_gpu.SWEEP.
QK_NORM_16BIT = True


def launch_options(name: str, store_dtype: torch.dtype) -> dict:
    """num_warps / num_stages of kernel `name` for intermediates of `store_dtype`."""
    return {**LAUNCH[name], **(LAUNCH_FP32.get(name, {}) if store_dtype == torch.float32 else {})}


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


STATE_BV = 64  # an H100 sweep (waves 4 and 7): 64 beats 32 by ~0.5 ms at 16k tokens (state and intra backward)


def _bv(dv: int) -> int:
    """V block of the recurrences (one program per V block, sequence and head) and of the backward's V loop."""
    return min(dv, STATE_BV)


def _bv_out(dv: int) -> int:
    """V block of the parallel per-chunk kernels (output, dv0)."""
    return min(dv, 64)


def gpu_store_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the intermediates the kernels pass each other (w, u, qg, kd, v_new, chunk states, du) and of their
    tensor-core dots, for inputs of `dtype`: their 16-bit dtype (as fla-core does), else fp32. Score matrices, Tm,
    Γ and the recurrent state itself stay fp32."""
    return dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32


def _store_dtype(v: torch.Tensor) -> torch.dtype:
    # CPU tensors run in the Triton interpreter, whose 16-bit tl.dot multiplies the raw bits: fp32 there (the
    # tests patch the interpreter's dot to check the 16-bit path on CPU too).
    return torch.float32 if v.device.type == "cpu" else gpu_store_dtype(v.dtype)


L2_EPS = 1e-6  # kda_common.l2norm's


def _l2norm_fwd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`kda_common.l2norm`'s forward in one kernel: (y = x (Σx² + eps)^-½ per row of the last dim, r = (Σx² + eps)^-½
    for the backward); y in the KDA intermediates' dtype when QK_NORM_16BIT (16-bit on a GPU for 16-bit x), else
    fp32. x contiguous."""
    D = x.shape[-1]
    n = x.numel() // D
    y = torch.empty(x.shape, device=x.device, dtype=_store_dtype(x) if QK_NORM_16BIT else torch.float32)
    r = torch.empty(n, device=x.device, dtype=torch.float32)
    _l2norm_fwd_kernel[(triton.cdiv(n, L2_ROWS),)](x, y, r, n, L2_EPS, D=D, BR=L2_ROWS, **LAUNCH["_l2norm_fwd_kernel"])
    return y, r


def _l2norm_bwd(y: torch.Tensor, r: torch.Tensor, dy: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """dx of `_l2norm_fwd` (in `dtype`) from its saved (y, r) and dy (contiguous, any float dtype)."""
    D = y.shape[-1]
    dx = torch.empty(y.shape, device=y.device, dtype=dtype)
    n = r.numel()
    _l2norm_bwd_kernel[(triton.cdiv(n, L2_ROWS),)](y, r, dy, dx, n, D=D, BR=L2_ROWS, **LAUNCH["_l2norm_bwd_kernel"])
    return dx


class KDATritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, beta, scale, initial_state, output_final_state, cu, seq_len, qk_l2norm):
        """q, k, g [1, T, H, K] (token-flat), v [1, T, H, V], beta [1, T, H]; cu int32 [N+1]; state [N, H, K, V];
        seq_len: the length of every sequence when they are equal (no varlen), else None; qk_l2norm: L2-normalise
        q and k first (inside the op, as fla-core does: the backward takes the norm's gradient from the fp32 dq
        and dk, with no cast to q's dtype and back between two autograd nodes)."""
        ctx.dtypes = (q.dtype, k.dtype, g.dtype)
        rq = rk = None
        if qk_l2norm:
            (q, rq), (k, rk) = _l2norm_fwd(q), _l2norm_fwd(k)
        _, T, H, K = q.shape
        DV = v.shape[-1]
        N = cu.numel() - 1
        dev = q.device
        ci, co = _chunk_layout(cu, seq_len)
        NT = ci.shape[0]
        f32 = dict(device=dev, dtype=torch.float32)
        sd = dict(device=dev, dtype=_store_dtype(v))
        G = torch.empty(T, H, K, **f32)
        _cumsum_kernel[(NT, H)](g, G, cu, ci, H=H, K=K, C=CHUNK, REVERSE=False, **LAUNCH["_cumsum_kernel"])
        Aqk = torch.empty(T, H, CHUNK, **f32)
        Akk = torch.empty(T, H, CHUNK, **f32)
        _scores_off_fwd_kernel[(NT * (CHUNK // SUB), H)](
            q, k, G, Aqk, Akk, cu, ci, scale, H=H, K=K, C=CHUNK, BC=SUB, BK=min(SCORES_OFF_BK["fwd"], K),
            **LAUNCH["_scores_off_fwd_kernel"])
        BH = math.gcd(H, SCORES_BH)
        _scores_diag_fwd_kernel[(NT * CHUNK, H // BH)](q, k, G, Aqk, Akk, cu, ci, scale, H=H, K=K, C=CHUNK, BC=SUB,
                                                       BH=BH, **LAUNCH["_scores_diag_fwd_kernel"])
        Tm = torch.empty(T, H, CHUNK, **f32)
        w, qg, kd = (torch.empty(T, H, K, **sd) for _ in range(3))
        u = torch.empty(T, H, DV, **sd)
        _solve_fwd_kernel[(NT, H)](q, k, v, G, beta, Akk, Tm, w, u, qg, kd, cu, ci, scale, H=H, K=K, DV=DV, C=CHUNK,
                                   BC=SUB, BD=min(SOLVE_BD, K, DV), **LAUNCH["_solve_fwd_kernel"])
        starts = torch.empty(NT, H, K, DV, **sd)
        v_new = torch.empty(T, H, DV, **sd)
        ST = torch.empty(N, H, K, DV, **f32) if output_final_state else None
        S0 = initial_state.float().contiguous() if initial_state is not None else None
        BV = _bv(DV)
        _state_fwd_kernel[(N * H * (DV // BV),)](
            kd, G, w, u, v_new, S0 if S0 is not None else G, starts, ST if ST is not None else G, cu, co,
            H=H, K=K, DV=DV, C=CHUNK, BV=BV, HAS_S0=S0 is not None, STORE_ST=ST is not None,
            **launch_options("_state_fwd_kernel", starts.dtype),
        )
        o = torch.empty_like(v)
        BVO = _bv_out(DV)
        _output_fwd_kernel[(NT, DV // BVO, H)](qg, starts, Aqk, v_new, o, cu, ci, H=H, K=K, DV=DV, C=CHUNK, BV=BVO,
                                               **LAUNCH["_output_fwd_kernel"])
        ctx.save_for_backward(q, k, v, G, beta, Aqk, Akk, Tm, w, u, qg, kd, v_new, starts, cu, ci, co, rq, rk)
        ctx.scale = scale
        ctx.has_s0 = initial_state is not None
        ctx.s0_dtype = None if initial_state is None else initial_state.dtype
        return o, ST

    @staticmethod
    @once_differentiable
    def backward(ctx, do, dST):
        q, k, v, G, beta, Aqk, Akk, Tm, w, u, qg, kd, v_new, starts, cu, ci, co, rq, rk = ctx.saved_tensors
        T, H, K = G.shape
        DV = v.shape[-1]
        N = cu.numel() - 1
        NT = ci.shape[0]
        f32 = dict(device=G.device, dtype=torch.float32)
        do = do.contiguous()
        BV = _bv(DV)
        dv0 = torch.empty_like(v_new)
        dAqk = torch.empty(T, H, CHUNK, **f32)
        _dv0_bwd_kernel[(NT, H)](Aqk, v_new, do, dv0, dAqk, cu, ci, H=H, DV=DV, C=CHUNK, BV=_bv_out(DV),
                                 **LAUNCH["_dv0_bwd_kernel"])
        dnext = torch.empty_like(starts)
        du = torch.empty_like(v_new)
        dS0 = torch.empty(N, H, K, DV, **f32)
        _state_bwd_kernel[(N * H * (DV // BV),)](
            qg, kd, G, w, do, dv0, du, dST.contiguous() if dST is not None else dS0, dnext, dS0, cu, co,
            H=H, K=K, DV=DV, C=CHUNK, BV=BV, HAS_DST=dST is not None,
            **launch_options("_state_bwd_kernel", starts.dtype),
        )
        dq = torch.empty(T, H, K, **f32)
        dk = torch.empty(T, H, K, **f32)
        dG = torch.empty(T, H, K, **f32)
        dv = torch.empty_like(v)
        dbeta = torch.empty(T, H, **f32)
        dAkk = torch.empty(T, H, CHUNK, **f32)
        _intra_bwd_v_kernel[(NT, H)](v, beta, Tm, u, du, dv, dbeta, dAkk, cu, ci, H=H, DV=DV, C=CHUNK,
                                     BV=_bv_out(DV), **LAUNCH["_intra_bwd_v_kernel"])
        _intra_bwd_kernel[(NT, H)](
            k, G, beta, Akk, Tm, w, qg, v_new, starts, dnext, do, du, dq, dk, dG, dbeta, dAkk, cu, ci,
            H=H, K=K, DV=DV, C=CHUNK, BV=BV, **LAUNCH["_intra_bwd_kernel"],
        )
        BK = min(SCORES_OFF_BK["bwd"], K)
        _scores_off_bwd_kernel[(NT * (CHUNK // SUB) * (K // BK), H)](
            q, k, G, dAqk, dAkk, dq, dk, dG, cu, ci, ctx.scale, H=H, K=K, C=CHUNK, BC=SUB, BK=BK,
            **launch_options("_scores_off_bwd_kernel", q.dtype))
        BH = math.gcd(H, SCORES_BH)  # after the off-diagonal part: it applies `scale` to the finished dq
        _scores_diag_bwd_kernel[(NT * CHUNK, H // BH)](
            q, k, G, dAqk, dAkk, dq, dk, dG, cu, ci, ctx.scale, H=H, K=K, C=CHUNK, BC=SUB, BH=BH,
            **LAUNCH["_scores_diag_bwd_kernel"])
        dg = torch.empty(T, H, K, **f32)
        _cumsum_kernel[(NT, H)](dG, dg, cu, ci, H=H, K=K, C=CHUNK, REVERSE=True, **LAUNCH["_cumsum_kernel"])
        shape = (1, T, H, K)
        q_dtype, k_dtype, g_dtype = ctx.dtypes
        if rq is not None:  # the L2 norm's backward, from fp32 dq and dk
            dq, dk = _l2norm_bwd(q, rq, dq, q_dtype), _l2norm_bwd(k, rk, dk, k_dtype)
        return (
            dq.view(shape).to(q_dtype), dk.view(shape).to(k_dtype), dv, dg.view(shape).to(g_dtype),
            dbeta.view(1, T, H).to(beta.dtype), None, dS0.to(ctx.s0_dtype) if ctx.has_s0 else None, None, None,
            None, None,
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
    if cu_seqlens is None:
        cu = torch.arange(0, B + 1, device=q.device, dtype=torch.int32) * T
    else:
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    flat = lambda t: t.reshape(1, B * T, *t.shape[2:]).contiguous()  # noqa: E731
    o, S = KDATritonFunction.apply(
        flat(q), flat(k), flat(v), flat(g.float()), flat(beta), scale, initial_state, output_final_state, cu,
        T if cu_seqlens is None else None, use_qk_l2norm,
    )
    return o.view(v.shape), S
