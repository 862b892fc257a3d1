"""Fused Triton pieces of the grouped MoE (forward + backward); references in moe.py.

- SwiGLU `silu(h1) · h3` on the expert-sorted rows: one launch each way instead of silu, mul and their backward.
- Combine (un-permutation): out[n] = Σ_j w[n,j] · y[inv[n,j]] accumulated in fp32 — a gather, so no atomics and a
  deterministic sum. Backward: dy[inv[n,j]] = w[n,j] · dout[n] (a permutation: each row written once) and
  dw[n,j] = ⟨dout[n], y[inv[n,j]]⟩, in one launch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _swiglu_fwd(A, B, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(A + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs, (a * tl.sigmoid(a) * b).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd(A, B, DY, DA, DB, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(A + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(a)
    tl.store(DA + offs, (dy * b * s * (1.0 + a * (1.0 - s))).to(DA.dtype.element_ty), mask=mask)
    tl.store(DB + offs, (dy * a * s).to(DB.dtype.element_ty), mask=mask)


_EW_BLOCK = 1024


class _SwiGLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        a, b = a.contiguous(), b.contiguous()
        y = torch.empty_like(a)
        n = a.numel()
        _swiglu_fwd[(triton.cdiv(n, _EW_BLOCK),)](a, b, y, n, BLOCK=_EW_BLOCK)
        ctx.save_for_backward(a, b)
        return y

    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.saved_tensors
        dy = dy.contiguous()
        da, db = torch.empty_like(a), torch.empty_like(b)
        n = a.numel()
        _swiglu_bwd[(triton.cdiv(n, _EW_BLOCK),)](a, b, dy, da, db, n, BLOCK=_EW_BLOCK)
        return da, db


def swiglu_triton(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _SwiGLUFn.apply(a, b)


@triton.jit
def _combine_fwd(Y, INV, W, OUT, N, D, KTOP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < N
    mask = rmask[:, None] & (cols < D)[None, :]
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for j in tl.static_range(KTOP):
        src = tl.load(INV + rows * KTOP + j, mask=rmask, other=0).to(tl.int64)
        w = tl.load(W + rows * KTOP + j, mask=rmask, other=0.0).to(tl.float32)
        y = tl.load(Y + src[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        acc += w[:, None] * y
    tl.store(OUT + rows[:, None].to(tl.int64) * D + cols[None, :], acc.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _combine_bwd(Y, INV, W, DOUT, DY, DW, N, D, KTOP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < N
    for j in tl.static_range(KTOP):
        src = tl.load(INV + rows * KTOP + j, mask=rmask, other=0).to(tl.int64)
        w = tl.load(W + rows * KTOP + j, mask=rmask, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK_R], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            mask = rmask[:, None] & (cols < D)[None, :]
            do = tl.load(DOUT + rows[:, None].to(tl.int64) * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            y = tl.load(Y + src[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            dw += tl.sum(do * y, 1)
            tl.store(DY + src[:, None] * D + cols[None, :], (w[:, None] * do).to(DY.dtype.element_ty), mask=mask)
        tl.store(DW + rows * KTOP + j, dw, mask=rmask)


class _CombineFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, inv, w, out_dtype):
        N, k = inv.shape
        D = y.shape[1]
        y = y.contiguous()
        inv = inv.contiguous()
        w = w.contiguous()
        out = torch.empty(N, D, dtype=out_dtype, device=y.device)
        BLOCK_R, BLOCK_D = 16, min(256, triton.next_power_of_2(D))
        _combine_fwd[(triton.cdiv(N, BLOCK_R), triton.cdiv(D, BLOCK_D))](
            y, inv, w, out, N, D, KTOP=k, BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D)
        ctx.save_for_backward(y, inv, w)
        return out

    @staticmethod
    def backward(ctx, dout):
        y, inv, w = ctx.saved_tensors
        N, k = inv.shape
        D = y.shape[1]
        dout = dout.contiguous()
        dy = torch.empty_like(y)
        dw = torch.empty(N, k, dtype=torch.float32, device=y.device)
        BLOCK_R, BLOCK_D = 16, min(256, triton.next_power_of_2(D))
        _combine_bwd[(triton.cdiv(N, BLOCK_R),)](y, inv, w, dout, dy, dw, N, D, KTOP=k, BLOCK_R=BLOCK_R,
                                                 BLOCK_D=BLOCK_D)
        return dy, None, dw.to(w.dtype), None


def combine_triton(y: torch.Tensor, inv: torch.Tensor, w: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """y [N·k, D] expert outputs in sorted order, inv [N, k] their rows, w [N, k] → Σ_j w·y [N, D] in out_dtype."""
    return _CombineFn.apply(y, inv, w, out_dtype)


# --- Kernels of `moe_experts_fused` (moe.py): the routing weight is folded into the SwiGLU output, so the
# un-permutation is a plain gather-sum and its backward a plain gather; the weight gradient comes out of the
# SwiGLU backward as a row reduction. Each works on row-strided views (h1/h3 may be the two halves of one [M, 2I]).

@triton.jit
def _swiglu_w_fwd(H1, H3, W, A, M, I, s_h1, s_h3, s_a, BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    rmask = rows < M
    mask = rmask[:, None] & (cols < I)[None, :]
    r64 = rows.to(tl.int64)[:, None]
    h1 = tl.load(H1 + r64 * s_h1 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    h3 = tl.load(H3 + r64 * s_h3 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + rows, mask=rmask, other=0.0).to(tl.float32)
    a = h1 * tl.sigmoid(h1) * h3 * w[:, None]
    tl.store(A + r64 * s_a + cols[None, :], a.to(A.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_w_bwd(H1, H3, W, DA, DH1, DH3, DW, ORDER, M, I, s_h1, s_h3, s_da, s_dh1, s_dh3,
                  BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < M
    r64 = rows.to(tl.int64)[:, None]
    w = tl.load(W + rows, mask=rmask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_R], dtype=tl.float32)
    for i0 in range(0, I, BLOCK_I):
        cols = i0 + tl.arange(0, BLOCK_I)
        mask = rmask[:, None] & (cols < I)[None, :]
        h1 = tl.load(H1 + r64 * s_h1 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        h3 = tl.load(H3 + r64 * s_h3 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        da = tl.load(DA + r64 * s_da + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        s = tl.sigmoid(h1)
        silu = h1 * s
        dw += tl.sum(da * silu * h3, 1)
        g = da * w[:, None]
        tl.store(DH1 + r64 * s_dh1 + cols[None, :], (g * h3 * s * (1.0 + h1 * (1.0 - s))).to(DH1.dtype.element_ty),
                 mask=mask)
        tl.store(DH3 + r64 * s_dh3 + cols[None, :], (g * silu).to(DH3.dtype.element_ty), mask=mask)
    slot = tl.load(ORDER + rows, mask=rmask, other=0)  # dw back in the caller's slot order: a permutation
    tl.store(DW + slot, dw, mask=rmask)


@triton.jit
def _gather_sum(S1, S2, INV, OUT, N, D, KTOP: tl.constexpr, TWO: tl.constexpr, BLOCK_R: tl.constexpr,
                BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < N
    mask = rmask[:, None] & (cols < D)[None, :]
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for j in tl.static_range(KTOP):
        src = tl.load(INV + rows * KTOP + j, mask=rmask, other=0).to(tl.int64)
        acc += tl.load(S1 + src[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if TWO:
            acc += tl.load(S2 + src[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + rows[:, None].to(tl.int64) * D + cols[None, :], acc.to(OUT.dtype.element_ty), mask=mask)


def _row_major(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def swiglu_weighted_fwd(h1: torch.Tensor, h3: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """a = w[:, None] · silu(h1) · h3 (fp32 math, one rounding) for [M, I] row-strided h1, h3 and w [M]."""
    h1, h3 = _row_major(h1), _row_major(h3)
    M, I = h1.shape
    a = torch.empty(M, I, dtype=h1.dtype, device=h1.device)
    # memory-bound: small row blocks keep registers low (63 at 8 × 256, ptxas sm_90) and occupancy high
    BLOCK_R, BLOCK_I = 8, min(256, triton.next_power_of_2(I))
    _swiglu_w_fwd[(triton.cdiv(M, BLOCK_R), triton.cdiv(I, BLOCK_I))](
        h1, h3, w.contiguous(), a, M, I, h1.stride(0), h3.stride(0), a.stride(0), BLOCK_R=BLOCK_R, BLOCK_I=BLOCK_I)
    return a


def swiglu_weighted_bwd(h1, h3, w, da, dh1, dh3, order) -> torch.Tensor:
    """Backward of `swiglu_weighted_fwd` for the upstream gradient da: writes dh1, dh3 (row-strided [M, I], may be
    halves of one buffer) and returns dw [M] fp32 with dw[order[r]] = Σ_i da[r] · silu(h1[r]) · h3[r] (order: the
    sorted row -> caller's slot permutation, so no gather follows)."""
    h1, h3, da = _row_major(h1), _row_major(h3), _row_major(da)
    assert dh1.stride(-1) == 1 and dh3.stride(-1) == 1
    M, I = h1.shape
    dw = torch.empty(M, dtype=torch.float32, device=h1.device)
    BLOCK_R, BLOCK_I = 4, min(256, triton.next_power_of_2(I))  # 56 registers; 16 rows needed 255 and spilled
    _swiglu_w_bwd[(triton.cdiv(M, BLOCK_R),)](
        h1, h3, w.contiguous(), da, dh1, dh3, dw, order.contiguous(), M, I, h1.stride(0), h3.stride(0),
        da.stride(0), dh1.stride(0), dh3.stride(0), BLOCK_R=BLOCK_R, BLOCK_I=BLOCK_I)
    return dw


def gather_sum(inv: torch.Tensor, out_dtype: torch.dtype, s1: torch.Tensor, s2: torch.Tensor | None = None):
    """out[n] = Σ_j s1[inv[n, j]] (+ s2[inv[n, j]]), accumulated in fp32: the un-permutation without atomics."""
    N, k = inv.shape
    s1 = s1.contiguous()
    D = s1.shape[1]
    out = torch.empty(N, D, dtype=out_dtype, device=s1.device)
    # rows per program so that ~16 row loads are in flight per thread block: 40-72 registers on sm_90 for k = 3..8
    # with one or two sources (16 rows took 124-255 registers and spilled at k = 8)
    BLOCK_R = 4 if k * (1 + (s2 is not None)) <= 4 else 2
    BLOCK_D = min(256, triton.next_power_of_2(D))
    _gather_sum[(triton.cdiv(N, BLOCK_R), triton.cdiv(D, BLOCK_D))](
        s1, s1 if s2 is None else s2.contiguous(), inv.contiguous(), out, N, D, KTOP=k, TWO=s2 is not None,
        BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D)
    return out


# --- Routing permutation as a stable counting sort (replaces argsort + scatter + searchsorted + gathers): the
# expert ids are few, so each slot's sorted position is its expert's start + the count of earlier slots with the
# same expert. Two launches: per-block histograms, then per-block placement, each placing program summing the
# histograms itself (a few KB from L2) instead of a third launch for the scan: at 1b-a150m the eager MoE is bound
# by its host's launches. The result equals the stable argsort's, so everything downstream (including the dW
# summation order) is unchanged.

@triton.jit
def _route_hist(IDX, HIST, M, E, E_P: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    pid = tl.program_id(0)
    ecols = tl.arange(0, E_P)
    cnt = tl.zeros([E_P], dtype=tl.int32)
    for c0 in range(0, BLOCK, CHUNK):
        rows = pid * BLOCK + c0 + tl.arange(0, CHUNK)
        e = tl.load(IDX + rows, mask=rows < M, other=-1).to(tl.int32)
        cnt += tl.sum((e[:, None] == ecols[None, :]).to(tl.int32), 0)
    tl.store(HIST + pid * E_P + ecols, cnt)


@triton.jit
def _route_place(IDX, W, HIST, OFFS, ORDER, INV, TOKEN, WS, M, KTOP, NB, E, E_P: tl.constexpr, BLOCK: tl.constexpr,
                 CHUNK: tl.constexpr, NB_CHUNK: tl.constexpr):
    pid = tl.program_id(0)
    ecols = tl.arange(0, E_P)
    tot = tl.zeros([E_P], dtype=tl.int32)  # slots per expert
    earlier = tl.zeros([E_P], dtype=tl.int32)  # slots per expert in the blocks before this one
    for b0 in range(0, NB, NB_CHUNK):
        b = b0 + tl.arange(0, NB_CHUNK)
        h = tl.load(HIST + b[:, None] * E_P + ecols[None, :], mask=(b < NB)[:, None], other=0)
        tot += tl.sum(h, 0)
        earlier += tl.sum(tl.where((b < pid)[:, None], h, 0), 0)
    ends = tl.cumsum(tot, 0)
    if pid == 0:
        tl.store(OFFS + ecols, ends, mask=ecols < E)
    run = ends - tot + earlier  # next free position per expert
    for c0 in range(0, BLOCK, CHUNK):
        rows = pid * BLOCK + c0 + tl.arange(0, CHUNK)
        rmask = rows < M
        e = tl.load(IDX + rows, mask=rmask, other=-1).to(tl.int32)
        hot = (e[:, None] == ecols[None, :]).to(tl.int32)
        before = tl.cumsum(hot, 0) - hot  # earlier slots of the same expert inside this chunk
        pos = tl.sum(hot * (run[None, :] + before), 1)
        tl.store(ORDER + pos, rows.to(tl.int64), mask=rmask)
        tl.store(INV + rows, pos.to(tl.int64), mask=rmask)
        tl.store(TOKEN + pos, (rows // KTOP).to(tl.int64), mask=rmask)
        tl.store(WS + pos, tl.load(W + rows, mask=rmask, other=0.0).to(tl.float32), mask=rmask)
        run += tl.sum(hot, 0)


def route_sort(topk_idx: torch.Tensor, topk_weight: torch.Tensor, num_experts: int):
    """Stable counting sort of the N·k slots by expert → (order, inv, token_of, w_sorted fp32, offs int32 [E]);
    order/inv/token_of int64 as `torch.sort(stable=True)` would give them. None when the histograms would exceed
    32,768 counts even at 4,096 slots per block (then the caller sorts with torch)."""
    N, k = topk_idx.shape
    M = N * k
    E_P = max(16, triton.next_power_of_2(num_experts))
    BLOCK = 256  # the smallest block (most programs) whose histograms (read whole by every placing program) stay small
    while max(2, triton.next_power_of_2(triton.cdiv(M, BLOCK))) * E_P > 32768 and BLOCK < 4096:
        BLOCK *= 2
    NB = triton.cdiv(M, BLOCK)
    if max(2, triton.next_power_of_2(NB)) * E_P > 32768:
        return None
    CHUNK = max(16, min(64, 4096 // E_P))
    dev = topk_idx.device
    idx = topk_idx.reshape(-1).contiguous()
    w = topk_weight.reshape(-1).contiguous()
    # four allocations for six buffers: each costs host time, and the eager block is host-bound at 1b-a150m
    hist = torch.empty(NB, E_P, dtype=torch.int32, device=dev)
    order, inv, token = torch.empty(3, M, dtype=torch.int64, device=dev).unbind(0)
    offs = torch.empty(num_experts, dtype=torch.int32, device=dev)
    w_s = torch.empty(M, dtype=torch.float32, device=dev)
    _route_hist[(NB,)](idx, hist, M, num_experts, E_P=E_P, BLOCK=BLOCK, CHUNK=CHUNK)
    _route_place[(NB,)](idx, w, hist, offs, order, inv, token, w_s, M, k, NB, num_experts, E_P=E_P, BLOCK=BLOCK,
                        CHUNK=CHUNK, NB_CHUNK=max(2, min(16, 4096 // E_P)))
    return order, inv, token, w_s, offs
