"""Fused KDA decode step in Triton: one launch per layer; reference and op in kda_decode.py.

Program (b, h) owns head h of row b: it reads the head's q/k/v conv windows and the [K, V] fp32 state of slot
slots[b], runs conv + SiLU, L2 norm, the forget gate, β, the decay + delta-rule update and the output, writes the
window and the state back in place, and applies the gated RMS norm to its output. A program holds the whole head
(the norm and the window update need all of it), so nothing is shared between programs and the in-place writes
cannot race (except padding rows sharing the scratch slot, whose results are discarded).

Roundings follow the reference: conv outputs and o are rounded to the activation dtype, everything else is fp32.

The CUDA default (MIXLAB_FUSED_DECODE=0 turns it off); checked against the reference on an H100
(bench/run_engine_gpu.sh), in the interpreter and compiled for sm_90 on CPU (tests/evals_engine/test_decode_aot.py).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .kda_gate_triton import _softplus


@triton.jit
def _conv_silu(X, WT, row_x, cbase, ch, cm, ws, wm, W: tl.constexpr):
    """Depthwise causal conv of the new input over its window, SiLU, and the window shifted by one (returned)."""
    old = tl.load(cbase + ch[:, None] * (W - 1) + ws[None, :], mask=cm[:, None] & wm[None, :], other=0.0)
    nxt = tl.load(cbase + ch[:, None] * (W - 1) + ws[None, :] + 1, mask=cm[:, None] & (ws + 1 < W - 1)[None, :],
                  other=0.0)
    xn = tl.load(X + row_x + ch, mask=cm, other=0.0)
    w_old = tl.load(WT + ch[:, None] * W + ws[None, :], mask=cm[:, None] & wm[None, :], other=0.0).to(tl.float32)
    w_new = tl.load(WT + ch * W + (W - 1), mask=cm, other=0.0).to(tl.float32)
    y = tl.sum(old.to(tl.float32) * w_old, 1) + xn.to(tl.float32) * w_new
    y = y * tl.sigmoid(y)
    y = y.to(X.dtype.element_ty).to(tl.float32)  # the reference rounds q/k/v to the activation dtype
    shifted = tl.where((ws == W - 2)[None, :], xn[:, None].to(nxt.dtype), nxt)
    return y, shifted


@triton.jit
def _lowrank(A, sa, WB, b, ch, cm, KA, BC: tl.constexpr, BR: tl.constexpr):
    """(a[b] · WBᵀ)[ch] for the rank-KA factor a [B, KA] and WB [P, KA], rounded to a's dtype (an nn.Linear)."""
    rs = tl.arange(0, BR)
    acc = tl.zeros([BC], tl.float32)
    for r0 in range(0, KA, BR):
        rm = r0 + rs < KA
        a = tl.load(A + b.to(tl.int64) * sa + r0 + rs, mask=rm, other=0.0).to(tl.float32)
        w = tl.load(WB + ch[:, None] * KA + r0 + rs[None, :], mask=cm[:, None] & rm[None, :], other=0.0)
        acc += tl.sum(w.to(tl.float32) * a[None, :], 1)
    return acc.to(A.dtype.element_ty).to(tl.float32)


@triton.jit
def _kda_decode_kernel(XQ, XK, XV, sx, CONV, WQ, WK, WV, F, sf, A_LOG, DT, BL, sbl, STATE, SLOTS, GATE, sg, NW, OUT,
                       WFB, WGB, KA, eps, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, W: tl.constexpr,
                       BK: tl.constexpr, BV: tl.constexpr, BW: tl.constexpr, LOWRANK: tl.constexpr,
                       BR: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    P: tl.constexpr = H * K
    slot = tl.load(SLOTS + b).to(tl.int64)
    ks = tl.arange(0, BK)
    vs = tl.arange(0, BV)
    ws = tl.arange(0, BW)
    km = ks < K
    vm = vs < V
    wm = ws < W - 1
    row_x = b.to(tl.int64) * sx
    cbase = CONV + slot * (3 * P * (W - 1))
    chk = h * K + ks
    chv = h * V + vs
    q, wq_new = _conv_silu(XQ, WQ, row_x, cbase, chk, km, ws, wm, W)
    k, wk_new = _conv_silu(XK, WK, row_x, cbase + P * (W - 1), chk, km, ws, wm, W)
    v, wv_new = _conv_silu(XV, WV, row_x, cbase + 2 * P * (W - 1), chv, vm, ws, wm, W)
    # Every read of the windows above happens before any write below (threads of a program run out of step).
    tl.debug_barrier()
    tl.store(cbase + chk[:, None] * (W - 1) + ws[None, :], wq_new, mask=km[:, None] & wm[None, :])
    tl.store(cbase + P * (W - 1) + chk[:, None] * (W - 1) + ws[None, :], wk_new, mask=km[:, None] & wm[None, :])
    tl.store(cbase + 2 * P * (W - 1) + chv[:, None] * (W - 1) + ws[None, :], wv_new, mask=vm[:, None] & wm[None, :])

    q = q * tl.rsqrt(tl.sum(q * q, 0) + 1e-6)
    k = k * tl.rsqrt(tl.sum(k * k, 0) + 1e-6)
    if LOWRANK:  # F, GATE hold f_a(x), g_a(x) [B, KA]: the f_b / g_b projections happen here
        f = _lowrank(F, sf, WFB, b, chk, km, KA, BK, BR)
    else:
        f = tl.load(F + b.to(tl.int64) * sf + chk, mask=km, other=0.0).to(tl.float32)
    f += tl.load(DT + chk, mask=km, other=0.0).to(tl.float32)
    g = -tl.exp(tl.load(A_LOG + h).to(tl.float32)) * _softplus(f)
    beta = tl.sigmoid(tl.load(BL + b.to(tl.int64) * sbl + h).to(tl.float32))

    sp = STATE + (slot * H + h) * (K * V) + ks[:, None] * V + vs[None, :]
    smask = km[:, None] & vm[None, :]
    S = tl.load(sp, mask=smask, other=0.0)
    S = S * tl.exp(g)[:, None]
    pred = tl.sum(S * k[:, None], 0)
    u = beta * (v - pred)
    S = S + k[:, None] * u[None, :]
    o = tl.sum(S * (q * scale)[:, None], 0)
    tl.store(sp, S, mask=smask)

    o = o.to(OUT.dtype.element_ty).to(tl.float32)  # the reference rounds o to the activation dtype before the norm
    o = tl.where(vm, o, 0.0)
    o = o * tl.rsqrt(tl.sum(o * o, 0) / V + eps)
    if LOWRANK:
        gate = _lowrank(GATE, sg, WGB, b, chv, vm, KA, BV, BR)
    else:
        gate = tl.load(GATE + b.to(tl.int64) * sg + chv, mask=vm, other=0.0).to(tl.float32)
    o = o * tl.load(NW + vs, mask=vm, other=0.0).to(tl.float32) * tl.sigmoid(gate)
    tl.store(OUT + b.to(tl.int64) * (H * V) + chv, o.to(OUT.dtype.element_ty), mask=vm)


@triton.jit
def _proj_kernel(X, sx, W0, W1, W2, W3, W4, W5, OUT, so, B, D, N0, N1, N2, N3, N4, N5, BM: tl.constexpr,
                 BN: tl.constexpr, BKD: tl.constexpr, LOWP: tl.constexpr):
    """OUT[:, off_j : off_j + N_j] = X · W_jᵀ for six weights [N_j, D] sharing the input: one launch."""
    pm = tl.program_id(0)
    pn = tl.program_id(1)
    c0 = tl.cdiv(N0, BN)
    c1 = c0 + tl.cdiv(N1, BN)
    c2 = c1 + tl.cdiv(N2, BN)
    c3 = c2 + tl.cdiv(N3, BN)
    c4 = c3 + tl.cdiv(N4, BN)
    Wp = W0
    n = N0
    t = pn
    base = 0
    if pn >= c0:
        Wp = W1
        n = N1
        t = pn - c0
        base = N0
    if pn >= c1:
        Wp = W2
        n = N2
        t = pn - c1
        base = N0 + N1
    if pn >= c2:
        Wp = W3
        n = N3
        t = pn - c2
        base = N0 + N1 + N2
    if pn >= c3:
        Wp = W4
        n = N4
        t = pn - c3
        base = N0 + N1 + N2 + N3
    if pn >= c4:
        Wp = W5
        n = N5
        t = pn - c4
        base = N0 + N1 + N2 + N3 + N4
    rows = pm * BM + tl.arange(0, BM)
    cols = t * BN + tl.arange(0, BN)
    ds = tl.arange(0, BKD)
    rm = rows < B
    cm = cols < n
    acc = tl.zeros([BM, BN], tl.float32)
    for d0 in range(0, D, BKD):
        dm = d0 + ds < D
        xt = tl.load(X + rows[:, None].to(tl.int64) * sx + d0 + ds[None, :], mask=rm[:, None] & dm[None, :], other=0.0)
        wt = tl.trans(tl.load(Wp + cols[:, None].to(tl.int64) * D + d0 + ds[None, :], mask=cm[:, None] & dm[None, :],
                              other=0.0))
        if LOWP:
            acc += tl.dot(xt, wt)
        else:
            acc += tl.dot(xt.to(tl.float32), wt.to(tl.float32), input_precision="ieee")
    tl.store(OUT + rows[:, None].to(tl.int64) * so + base + cols[None, :], acc.to(OUT.dtype.element_ty),
             mask=rm[:, None] & cm[None, :])


def multi_linear_triton(x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """[x·W_0ᵀ | x·W_1ᵀ | ...] for up to six nn.Linear weights [N_j, D] (same dtype as x): one launch."""
    B, D = x.shape
    ws = [w.contiguous() for w in weights]
    ns = [w.shape[0] for w in ws] + [0] * (6 - len(ws))
    ws = ws + [ws[0]] * (6 - len(ws))
    x = _rows(x)
    out = torch.empty(B, sum(ns), dtype=x.dtype, device=x.device)
    BM, BN, BKD = max(16, min(64, triton.next_power_of_2(B))), 32, 64
    tiles = sum(triton.cdiv(n, BN) for n in ns)
    lowp = x.dtype in (torch.bfloat16, torch.float16) and os.environ.get("TRITON_INTERPRET") != "1"
    _proj_kernel[(triton.cdiv(B, BM), tiles)](x, x.stride(0), *ws, out, out.stride(0), B, D, *ns, BM=BM, BN=BN,
                                              BKD=BKD, LOWP=lowp, num_warps=4)
    return out


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def kda_decode_step_triton(xq, xk, xv, conv, wq, wk, wv, f, A_log, dt_bias, beta_logits, state, slots, gate,
                           norm_weight, eps: float, scale: float, f_b=None, g_b=None) -> torch.Tensor:
    """Arguments as `kda_decode.kda_decode_step` (checked there); slots is a [B] tensor here. With f_b and g_b (the
    [P, KA] weights), f and gate are the rank-KA factors f_a(x), g_a(x) and the kernel applies f_b, g_b itself."""
    B, P = xq.shape
    _, H, K, V = state.shape
    W = wq.shape[-1]
    xq, xk, xv, f, gate, beta_logits = (_rows(t) for t in (xq, xk, xv, f, gate, beta_logits))
    if xk.stride(0) != xq.stride(0) or xv.stride(0) != xq.stride(0):
        xq, xk, xv = xq.contiguous(), xk.contiguous(), xv.contiguous()
    assert conv.is_contiguous() and state.is_contiguous(), "the cache pools are contiguous"
    out = torch.empty(B, H * V, dtype=xq.dtype, device=xq.device)
    BK, BV = triton.next_power_of_2(K), triton.next_power_of_2(V)
    # A whole [K, V] fp32 state per program: 8 warps keep a 128 × 128 head in registers (64 values a thread).
    warps = 8 if BK * BV >= 128 * 128 else 4
    lowrank = f_b is not None
    KA = f.shape[-1] if lowrank else 0
    if lowrank:
        f_b, g_b = f_b.contiguous(), g_b.contiguous()
    _kda_decode_kernel[(B, H)](
        xq, xk, xv, xq.stride(0), conv, wq, wk, wv, f, f.stride(0), A_log, dt_bias, beta_logits, beta_logits.stride(0),
        state, slots, gate, gate.stride(0), norm_weight, out, f_b if lowrank else f, g_b if lowrank else gate, KA, eps,
        scale, H=H, K=K, V=V, W=W, BK=BK, BV=BV, BW=triton.next_power_of_2(max(W - 1, 1)), LOWRANK=lowrank, BR=32,
        num_warps=warps, num_stages=1,
    )
    return out
