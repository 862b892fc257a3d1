"""Fused KDA decode step in Triton: one launch per layer; reference and op in kda_decode.py.

Program (b, h) owns head h of row b: it reads the head's q/k/v conv windows and the [K, V] fp32 state of slot
slots[b], runs conv + SiLU, L2 norm, the forget gate, β, the decay + delta-rule update and the output, writes the
window and the state back in place, and applies the gated RMS norm to its output. A program holds the whole head
(the norm and the window update need all of it), so nothing is shared between programs and the in-place writes
cannot race (except padding rows sharing the scratch slot, whose results are discarded).

Roundings follow the reference: conv outputs and o are rounded to the activation dtype, everything else is fp32.
"""

from __future__ import annotations

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
def _kda_decode_kernel(XQ, XK, XV, sx, CONV, WQ, WK, WV, F, sf, A_LOG, DT, BL, sbl, STATE, SLOTS, GATE, sg, NW, OUT,
                       eps, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, W: tl.constexpr,
                       BK: tl.constexpr, BV: tl.constexpr, BW: tl.constexpr):
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
    gate = tl.load(GATE + b.to(tl.int64) * sg + chv, mask=vm, other=0.0).to(tl.float32)
    o = o * tl.load(NW + vs, mask=vm, other=0.0).to(tl.float32) * tl.sigmoid(gate)
    tl.store(OUT + b.to(tl.int64) * (H * V) + chv, o.to(OUT.dtype.element_ty), mask=vm)


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def kda_decode_step_triton(xq, xk, xv, conv, wq, wk, wv, f, A_log, dt_bias, beta_logits, state, slots, gate,
                           norm_weight, eps: float, scale: float) -> torch.Tensor:
    """Arguments as `kda_decode.kda_decode_step` (checked there); slots is a [B] tensor here."""
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
    _kda_decode_kernel[(B, H)](
        xq, xk, xv, xq.stride(0), conv, wq, wk, wv, f, f.stride(0), A_log, dt_bias, beta_logits, beta_logits.stride(0),
        state, slots, gate, gate.stride(0), norm_weight, out, eps, scale,
        H=H, K=K, V=V, W=W, BK=BK, BV=BV, BW=triton.next_power_of_2(max(W - 1, 1)), num_warps=warps, num_stages=1,
    )
    return out
