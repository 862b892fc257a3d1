"""Fused Triton causal depthwise short convolution + SiLU (forward + backward) for the training case: no cache in,
no state out, optionally packed sequences (cu_seqlens); reference in short_conv.py.

The reference runs cast, transpose, concat, conv1d, SiLU, transpose and cast (and their backward) per projection;
here one launch forward and two backward (dz, then dx and the weight-gradient partials). Sequences are handled by
each row's sequence start: row r of the flattened [B·T] input sees inputs r-W+1 … r that lie at or after its start
(b·T without cu_seqlens, its cu_seqlens entry with them), so nothing leaks across rows or packed sequences.
On by default on CUDA (MIXLAB_FUSED_SHORT_CONV=0 turns it off); the cached / state-returning calls (decode, chunked
prefill) keep the reference.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


@triton.jit
def _seq_start(SS, rows, R, T, VARLEN: tl.constexpr):
    if VARLEN:
        return tl.load(SS + rows, mask=rows < R, other=R)
    return (rows // T) * T


@triton.jit
def _conv_z(X, Wt, rows, cols, start, rmask, cmask, sx, W: tl.constexpr, BLOCK_R: tl.constexpr,
            BLOCK_D: tl.constexpr):
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for j in tl.static_range(W):
        src = rows - (W - 1) + j
        m = rmask & (src >= start)
        xv = tl.load(X + src[:, None].to(tl.int64) * sx + cols[None, :], mask=m[:, None] & cmask[None, :],
                     other=0.0).to(tl.float32)
        wv = tl.load(Wt + cols * W + j, mask=cmask, other=0.0).to(tl.float32)
        acc += xv * wv[None, :]
    return acc


@triton.jit
def _conv_fwd(X, Wt, Y, SS, R, T, D, sx, W: tl.constexpr, VARLEN: tl.constexpr, ACT: tl.constexpr,
              BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < R
    cmask = cols < D
    start = _seq_start(SS, rows, R, T, VARLEN)
    z = _conv_z(X, Wt, rows, cols, start, rmask, cmask, sx, W, BLOCK_R, BLOCK_D)
    if ACT:
        z = z * tl.sigmoid(z)
    tl.store(Y + rows[:, None].to(tl.int64) * D + cols[None, :], z.to(Y.dtype.element_ty),
             mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _conv_bwd_dz(X, Wt, DY, DZ, SS, R, T, D, sx, W: tl.constexpr, VARLEN: tl.constexpr, ACT: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < R
    cmask = cols < D
    mask = rmask[:, None] & cmask[None, :]
    off = rows[:, None].to(tl.int64) * D + cols[None, :]
    dz = tl.load(DY + off, mask=mask, other=0.0).to(tl.float32)
    if ACT:
        start = _seq_start(SS, rows, R, T, VARLEN)
        z = _conv_z(X, Wt, rows, cols, start, rmask, cmask, sx, W, BLOCK_R, BLOCK_D)
        s = tl.sigmoid(z)
        dz = dz * s * (1.0 + z * (1.0 - s))
    tl.store(DZ + off, dz, mask=mask)


@triton.jit
def _conv_bwd_dx(X, Wt, DZ, DX, DW, SS, R, T, D, sx, W: tl.constexpr, BLOCK_W: tl.constexpr, VARLEN: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    jidx = tl.arange(0, BLOCK_W)
    dw = tl.zeros([BLOCK_W, BLOCK_D], dtype=tl.float32)
    for r0 in range(pid * BLOCK_R, R, nprog * BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        rmask = rows < R
        start = _seq_start(SS, rows, R, T, VARLEN)
        dzt = tl.load(DZ + rows[:, None].to(tl.int64) * D + cols[None, :], mask=rmask[:, None] & cmask[None, :],
                      other=0.0)
        dx = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
        for j in tl.static_range(W):
            wv = tl.load(Wt + cols * W + j, mask=cmask, other=0.0).to(tl.float32)
            # dx[r] += w[j] · dz[o] for the output o = r + W-1-j, if o exists and r lies in o's sequence
            o = rows + (W - 1) - j
            so = _seq_start(SS, o, R, T, VARLEN)
            mo = rmask & (o < R) & (so <= rows)
            dzo = tl.load(DZ + o[:, None].to(tl.int64) * D + cols[None, :], mask=mo[:, None] & cmask[None, :],
                          other=0.0)
            dx += dzo * wv[None, :]
            # dw[j] += dz[r] · x[r - (W-1) + j] where that input is in r's sequence
            src = rows - (W - 1) + j
            ms = rmask & (src >= start)
            xv = tl.load(X + src[:, None].to(tl.int64) * sx + cols[None, :], mask=ms[:, None] & cmask[None, :],
                         other=0.0).to(tl.float32)
            contrib = tl.sum(dzt * xv, 0)
            dw += tl.where(jidx[:, None] == j, contrib[None, :], 0.0)
        tl.store(DX + rows[:, None].to(tl.int64) * D + cols[None, :], dx.to(DX.dtype.element_ty),
                 mask=rmask[:, None] & cmask[None, :])
    tl.store(DW + pid * D * W + cols[None, :] * W + jidx[:, None], dw, mask=(jidx[:, None] < W) & cmask[None, :])


_BLOCK_R, _BLOCK_D = 32, 64
# The dx / weight-gradient kernel runs a grid-stride loop over row blocks: this many programs per SM in all (fewer
# programs, fewer fp32 dw partials to sum) with rows of _DX_BLOCK_R per iteration. bench_short_conv.py --sweep times
# the choices on a GPU.
_DX_PROGRAMS_PER_SM, _DX_BLOCK_R = 4, 32


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count  # a host query: once per device


class _ShortConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, seq_start, act):
        B, T, D = x.shape
        W = weight.shape[-1]
        x2 = x.reshape(B * T, D)  # a view when x is row-strided (a column slice of a joint projection's output)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        w2 = weight.reshape(D, W).contiguous()
        R = B * T
        y = torch.empty(R, D, dtype=x.dtype, device=x.device)
        varlen = seq_start is not None
        ss = seq_start if varlen else w2
        grid = (triton.cdiv(R, _BLOCK_R), triton.cdiv(D, _BLOCK_D))
        _conv_fwd[grid](x2, w2, y, ss, R, T, D, x2.stride(0), W=W, VARLEN=varlen, ACT=act, BLOCK_R=_BLOCK_R,
                        BLOCK_D=_BLOCK_D)
        ctx.save_for_backward(x2, w2, seq_start)
        ctx.shape, ctx.act, ctx.wshape, ctx.wdtype = (B, T, D), act, weight.shape, weight.dtype
        return y.view(B, T, D)

    @staticmethod
    def backward(ctx, dy):
        x2, w2, seq_start = ctx.saved_tensors
        B, T, D = ctx.shape
        W = w2.shape[-1]
        R = B * T
        varlen = seq_start is not None
        ss = seq_start if varlen else w2
        dy2 = dy.reshape(R, D).contiguous()
        dz = torch.empty(R, D, dtype=torch.float32, device=x2.device)
        grid = (triton.cdiv(R, _BLOCK_R), triton.cdiv(D, _BLOCK_D))
        _conv_bwd_dz[grid](x2, w2, dy2, dz, ss, R, T, D, x2.stride(0), W=W, VARLEN=varlen, ACT=ctx.act,
                           BLOCK_R=_BLOCK_R, BLOCK_D=_BLOCK_D)
        nd = triton.cdiv(D, _BLOCK_D)
        cap = _DX_PROGRAMS_PER_SM * _sm_count(x2.device) if x2.is_cuda else 2
        nprog = max(1, min(triton.cdiv(R, _DX_BLOCK_R), max(1, cap // nd)))
        dx = torch.empty(R, D, dtype=x2.dtype, device=x2.device)
        dwp = torch.empty(nprog, D, W, dtype=torch.float32, device=x2.device)
        _conv_bwd_dx[(nprog, nd)](x2, w2, dz, dx, dwp, ss, R, T, D, x2.stride(0), W=W,
                                  BLOCK_W=triton.next_power_of_2(W), VARLEN=varlen, BLOCK_R=_DX_BLOCK_R,
                                  BLOCK_D=_BLOCK_D)
        return dx.view(B, T, D), dwp.sum(0).view(ctx.wshape).to(ctx.wdtype), None, None


def short_conv_triton(x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
                      activation: str | None = "silu") -> torch.Tensor:
    """x [B, T, D], weight [D, 1, W] → y [B, T, D] in x.dtype (fp32 compute). Arguments are checked by short_conv."""
    seq_start = None
    if cu_seqlens is not None:
        T = x.shape[1]
        cu = cu_seqlens.to(device=x.device, dtype=torch.int32)
        lens = cu[1:] - cu[:-1]
        seq_start = torch.repeat_interleave(cu[:-1], lens, output_size=T)  # output_size: no host sync
    return _ShortConvFn.apply(x, weight, seq_start, activation in ("silu", "swish"))
