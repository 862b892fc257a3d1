"""Fused Triton RMSNorm and gated RMSNorm (forward + backward), each one launch; references in norm.py.

Rows are normalised in fp32. The plain norm rounds x̂ and the weight to the output dtype before the product, as
KimiRMSNorm (the reference) does; the gated norm keeps everything in fp32 until the final store, as fla's
`fused_norm_gate` does. Weight gradients are summed per program in fp32 and the few partial rows are added by torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_ACT = {"sigmoid": 0, "silu": 1, "swish": 1}


@triton.jit
def _rms_fwd(X, W, G, Y, RSTD, M, N, eps, sx, sg, sy,
             HAS_GATE: tl.constexpr, ACT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    rmask = rows < M
    cmask = cols < N
    mask = rmask[:, None] & cmask[None, :]
    x = tl.load(X + rows[:, None] * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, 1) / N + eps)
    xhat = x * rstd[:, None]
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    if HAS_GATE:
        g = tl.load(G + rows[:, None] * sg + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        s = tl.sigmoid(g)
        if ACT == 1:
            s = g * s
        y = xhat * w[None, :] * s
    else:
        # KimiRMSNorm: weight.to(dtype) * x̂.to(dtype)
        xr = xhat.to(Y.dtype.element_ty).to(tl.float32)
        wr = w.to(Y.dtype.element_ty).to(tl.float32)
        y = xr * wr[None, :]
    tl.store(Y + rows[:, None] * sy + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=rmask)


@triton.jit
def _rms_bwd(X, W, G, DY, RSTD, DX, DG, DW, M, N, sx, sg, sdy, sdx, sdg,
             HAS_GATE: tl.constexpr, ACT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    if not HAS_GATE:
        w = w.to(DX.dtype.element_ty).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(pid * BLOCK_M, M, nprog * BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        rmask = rows < M
        mask = rmask[:, None] & cmask[None, :]
        x = tl.load(X + rows[:, None] * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * sdy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        xhat = x * rstd[:, None]
        if HAS_GATE:
            g = tl.load(G + rows[:, None] * sg + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            s = tl.sigmoid(g)
            if ACT == 1:
                a = g * s
                da_dg = s * (1.0 + g * (1.0 - s))
            else:
                a = s
                da_dg = s * (1.0 - s)
            dw += tl.sum(dy * xhat * a, 0)
            u = dy * w[None, :] * a
            dgate = dy * xhat * w[None, :] * da_dg
            tl.store(DG + rows[:, None] * sdg + cols[None, :], dgate.to(DG.dtype.element_ty), mask=mask)
        else:
            xr = xhat.to(DX.dtype.element_ty).to(tl.float32)
            dw += tl.sum(dy * xr, 0)
            u = dy * w[None, :]
        c = tl.sum(u * xhat, 1) / N
        dx = rstd[:, None] * (u - xhat * c[:, None])
        tl.store(DX + rows[:, None] * sdx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(DW + pid * N + cols, dw, mask=cmask)


def _blocks(N: int) -> tuple[int, int]:
    BLOCK_N = triton.next_power_of_2(N)
    BLOCK_M = max(1, min(64, 4096 // BLOCK_N))
    return BLOCK_M, BLOCK_N


def _rows(t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def _bwd_programs(M: int, BLOCK_M: int, device: torch.device) -> int:
    if device.type == "cuda":
        cap = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        cap = 4  # interpreter: few programs
    return max(1, min(triton.cdiv(M, BLOCK_M), cap))


class _RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, gate, eps, act):
        shape = x.shape
        x2 = _rows(x)
        g2 = _rows(gate) if gate is not None else x2
        M, N = x2.shape
        y = torch.empty_like(x2)
        rstd = torch.empty(M, dtype=torch.float32, device=x.device)
        BLOCK_M, BLOCK_N = _blocks(N)
        _rms_fwd[(triton.cdiv(M, BLOCK_M),)](
            x2, weight, g2, y, rstd, M, N, eps, x2.stride(0), g2.stride(0), y.stride(0),
            HAS_GATE=gate is not None, ACT=act, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
        )
        ctx.save_for_backward(x2, weight, g2 if gate is not None else None, rstd)
        ctx.has_gate, ctx.act, ctx.shape, ctx.gate_dtype = gate is not None, act, shape, (
            None if gate is None else gate.dtype)
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, g2, rstd = ctx.saved_tensors
        M, N = x2.shape
        dy2 = _rows(dy)
        dx = torch.empty_like(x2)
        dg = torch.empty(M, N, dtype=ctx.gate_dtype, device=x2.device) if ctx.has_gate else dx
        BLOCK_M, BLOCK_N = _blocks(N)
        P = _bwd_programs(M, BLOCK_M, x2.device)
        dw = torch.empty(P, N, dtype=torch.float32, device=x2.device)
        gg = g2 if ctx.has_gate else x2
        _rms_bwd[(P,)](
            x2, weight, gg, dy2, rstd, dx, dg, dw, M, N, x2.stride(0), gg.stride(0), dy2.stride(0), dx.stride(0),
            dg.stride(0), HAS_GATE=ctx.has_gate, ACT=ctx.act, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
        )
        dgate = dg.view(ctx.shape) if ctx.has_gate else None
        return dx.view(ctx.shape), dw.sum(0).to(weight.dtype), dgate, None, None


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return _RMSNormFn.apply(x, weight, None, eps, 0)


def gated_rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, gate: torch.Tensor, eps: float = 1e-5,
                          activation: str = "sigmoid") -> torch.Tensor:
    return _RMSNormFn.apply(x, weight, gate, eps, _ACT[activation])
