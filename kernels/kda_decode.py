"""One KDA decode token per row, from the q/k/v/f/beta/gate projections to the gated-normed output, over a slot cache.

Per row b (its sequence in cache slot slots[b]) and head h:
    q, k, v = SiLU(depthwise conv over [conv window ‖ new projection])   (window updated in place; rounded to x.dtype)
    q, k    = L2-normalised (fp32);  g = -exp(A_log)·softplus(f + dt_bias);  β = sigmoid(beta_logits)
    S ← S·exp(g);  S ← S + β k (v − Sᵀk)ᵀ;  o = Sᵀ(q·K^-½)          (fp32 state updated in place)
    out = RMSNorm(o) · weight · sigmoid(gate)                        (o rounded to x.dtype first, as the model does)

The reference below is the model's decode math op by op (`short_conv`'s window, `kda_gate`, `recurrent_kda_step`,
`gated_rms_norm`); on CUDA (unless MIXLAB_FUSED_DECODE=0; verified on an H100 by bench/run_engine_gpu.sh)
`kda_decode_triton.py` does all of it in one launch per layer.
Static shapes, no host sync (CUDA-graph safe) on both paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixlab.errors import MixlabError

from .dispatch import env_flag, fused_decode_enabled, use_fused, with_fallback
from .kda_common import fp32, l2norm
from .kda_gate import kda_gate
from .kda_recurrent import recurrent_kda_step
from .norm import gated_rms_norm

try:  # triton is optional (gpu / dev extras); without it the reference runs
    from .kda_decode_triton import kda_decode_step_triton, multi_linear_triton
except ImportError:
    kda_decode_step_triton = multi_linear_triton = None


def fused_projections() -> bool:
    """With the fused decode kernels on (CUDA, the default), `kda_decode_layer` also fuses the layer's
    projections on CUDA (one launch for the six input projections, f_b / g_b inside the step kernel);
    MIXLAB_FUSED_DECODE_PROJ=0 keeps them as nn.Linear GEMMs (to measure each part). Read per call."""
    return fused_decode_enabled() and env_flag("MIXLAB_FUSED_DECODE_PROJ", True)


def kda_step_inplace(q, k, v, g, beta, state: torch.Tensor, scale: float) -> torch.Tensor:
    """One KDA token per row with the fp32 state [B, H, K, V] updated in place (`recurrent_kda_step`'s math for
    T = 1 and L2-normalised q/k, in 2 read-write and 2 read passes over the state instead of ~6 plus copies).
    q, k, g [B, H, K], v [B, H, V], beta [B, H]; returns o [B, H, V] fp32."""
    B, H, K, V = state.shape
    q, k, v, g, beta = (fp32(t) for t in (q, k, v, g, beta))
    q, k = l2norm(q), l2norm(k)
    state.mul_(g.exp().unsqueeze(-1))
    flat = state.view(B * H, K, V)
    pred = torch.bmm(k.reshape(B * H, 1, K), flat)  # [BH, 1, V]
    delta = (v.reshape(B * H, 1, V) - pred) * beta.reshape(B * H, 1, 1)
    flat.baddbmm_(k.reshape(B * H, K, 1), delta)
    return torch.bmm((q * scale).reshape(B * H, 1, K), flat).view(B, H, V)


def _check(xq, conv, wq, state, slots, H) -> None:
    B, P = xq.shape
    if conv.dim() != 4 or conv.shape[1:3] != (3, P) or wq.shape[0] != P or conv.shape[-1] != wq.shape[-1] - 1:
        raise MixlabError(f"kda_decode_step: conv cache must be [slots, 3, P={P}, W-1] with conv weights [P, 1, W], "
                          f"got {tuple(conv.shape)} and {tuple(wq.shape)}")
    if state.dim() != 4 or state.shape[1] != H or state.shape[1] * state.shape[2] != P or state.dtype != torch.float32:
        raise MixlabError(f"kda_decode_step: state must be fp32 [slots, H={H}, K, V] with H·K = {P}, got "
                          f"{tuple(state.shape)} {state.dtype}")
    if slots is not None and slots.shape != (B,):
        raise MixlabError(f"kda_decode_step: slots must be [B={B}], got {tuple(slots.shape)}")


def kda_decode_step_torch(xq, xk, xv, conv, wq, wk, wv, f, A_log, dt_bias, beta_logits, state, slots, gate,
                          norm_weight, eps: float, scale: float) -> torch.Tensor:
    """Reference of `kda_decode_step` (slots None: rows are slots 0..B-1, their state updated in place)."""
    B, P = xq.shape
    _, H, K, V = state.shape
    window = conv[:B] if slots is None else conv.index_select(0, slots)  # [B, 3, P, W-1]
    # q, k and v share one conv pass: [B, 3, P, W] windows ‖ new inputs, weights [3, P, W] (fp32, as short_conv).
    xin = torch.stack([xq, xk, xv], 1)  # [B, 3, P]
    ext = torch.cat([window.float(), xin.float().unsqueeze(-1)], -1)
    w = torch.stack([wq[:, 0], wk[:, 0], wv[:, 0]]).float()
    y = F.silu((ext * w).sum(-1)).to(xq.dtype)  # [B, 3, P]
    if slots is None:
        conv[:B].copy_(ext[..., 1:])
    else:
        conv.index_copy_(0, slots, ext[..., 1:].to(conv.dtype))
    q, k, v = (y[:, j].reshape(B, 1, H, K) for j in range(3))
    with torch.autocast(device_type=xq.device.type, enabled=False):
        g = kda_gate(f, A_log, dt_bias).view(B, 1, H, K)
        beta = torch.sigmoid(beta_logits.float()).view(B, 1, H)
        if slots is None:
            o = kda_step_inplace(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], state[:B], scale)
            o = o.to(v.dtype).unsqueeze(1)
        else:
            o, new_state = recurrent_kda_step(q, k, v, g, beta, state.index_select(0, slots), scale=scale,
                                              use_qk_l2norm=True)
            state.index_copy_(0, slots, new_state.float())
    o = gated_rms_norm(o, norm_weight, gate.view(B, 1, H, V), eps, activation="sigmoid")
    return o.reshape(B, H * V)


def kda_decode_step(xq, xk, xv, conv, wq, wk, wv, f, A_log, dt_bias, beta_logits, state, slots, gate, norm_weight,
                    eps: float, scale: float) -> torch.Tensor:
    """out [B, H·V] in xq.dtype; updates conv (window) and state in place at `slots`.

    xq, xk, xv, f, gate [B, P] (P = H·K = H·V); conv [S, 3, P, W-1] (model dtype); wq, wk, wv [P, 1, W] (conv
    weights); A_log [H] (any shape with H elements); dt_bias [P]; beta_logits [B, H]; state [S, H, K, V] fp32;
    slots [B] int64, or None when the rows are slots 0..B-1; norm_weight [V]. Padding rows may share one scratch
    slot (its contents are then undefined)."""
    H = A_log.numel()
    _check(xq, conv, wq, state, slots, H)
    def reference():
        return kda_decode_step_torch(xq, xk, xv, conv, wq, wk, wv, f, A_log, dt_bias, beta_logits, state, slots,
                                     gate, norm_weight, eps, scale)

    if kda_decode_step_triton is not None and fused_decode_enabled() and use_fused(xq, conv, state, f, gate):
        rows = torch.arange(xq.shape[0], device=xq.device) if slots is None else slots
        return with_fallback("kda_decode_step", lambda: kda_decode_step_triton(
            xq, xk, xv, conv, wq, wk, wv, f, A_log, dt_bias, beta_logits, state, rows, gate, norm_weight, eps, scale),
            reference)
    return reference()


def kda_decode_layer(x, wq, wk, wv, conv, cq, ck, cv, wfa, wfb, A_log, dt_bias, wb, wga, wgb, state, slots,
                     norm_weight, eps: float, scale: float) -> torch.Tensor:
    """A KDA layer's attention for one decode token per row, from its normed input x [B, D] to the gated-normed
    output [B, H·V] (before o_proj), with the layer's weights in nn.Linear layout: wq, wk, wv [P, D]; cq, ck, cv
    the conv weights [P, 1, W]; wfa, wga [KA, D] and wfb, wgb [P, KA] (the low-rank gate factors); wb [H, D].
    Cache, slots and the rest as `kda_decode_step`.

    The projections are nn.Linear's (x·Wᵀ, rounded to x.dtype) and then `kda_decode_step`; with the fused decode
    kernels on (CUDA, the default), the six projections of x are one Triton launch and f_b, g_b run
    inside the step kernel (two launches for the whole layer)."""
    def unfused():
        f = F.linear(F.linear(x, wfa), wfb)
        gate = F.linear(F.linear(x, wga), wgb)
        return kda_decode_step(F.linear(x, wq), F.linear(x, wk), F.linear(x, wv), conv, cq, ck, cv, f, A_log,
                               dt_bias, F.linear(x, wb), state, slots, gate, norm_weight, eps, scale)

    if fused_projections() and multi_linear_triton is not None and use_fused(x, conv, state):
        def fused():
            P, KA = wq.shape[0], wfa.shape[0]
            proj = multi_linear_triton(x, [wq, wk, wv, wfa, wga, wb])  # [B, 3P + 2KA + H]
            rows = torch.arange(x.shape[0], device=x.device) if slots is None else slots
            return kda_decode_step_triton(proj[:, :P], proj[:, P : 2 * P], proj[:, 2 * P : 3 * P], conv, cq, ck, cv,
                                          proj[:, 3 * P : 3 * P + KA], A_log, dt_bias, proj[:, 3 * P + 2 * KA :],
                                          state, rows, proj[:, 3 * P + KA : 3 * P + 2 * KA], norm_weight, eps, scale,
                                          f_b=wfb, g_b=wgb)

        return with_fallback("kda_decode_layer", fused, unfused)
    return unfused()
