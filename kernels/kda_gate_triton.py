"""Fused Triton KDA forget gate g = -exp(A_log)·softplus(f + dt_bias), forward + backward; reference in kda_gate.py.

One launch each way instead of ~8 elementwise kernels and their backward. softplus uses torch's threshold (20) and
an accurate log1p, so the fp32 result matches the reference to rounding. The dt_bias and A_log gradients are summed
per program in fp32; torch adds the few partial rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _softplus(x):
    # log1p(e^x) with Kahan's trick for small e^x (1 + e rounds to 1); x above 20 passes through, as torch does.
    e = tl.exp(tl.minimum(x, 20.0))
    u = 1.0 + e
    lp = tl.where(u == 1.0, e, tl.log(u) * e / tl.where(u == 1.0, 1.0, u - 1.0))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _gate_fwd(F, A, DT, G, M, P, sf, K: tl.constexpr, HAS_DT: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_P: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_p = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    cmask = cols < P
    mask = (rows < M)[:, None] & cmask[None, :]
    x = tl.load(F + rows[:, None] * sf + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_DT:
        x += tl.load(DT + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    a = -tl.exp(tl.load(A + cols // K, mask=cmask, other=0.0).to(tl.float32))
    g = a[None, :] * _softplus(x)
    tl.store(G + rows[:, None] * P + cols[None, :], g, mask=mask)


@triton.jit
def _gate_bwd(F, A, DT, DG, DF, DDT, DA, M, P, sf, K: tl.constexpr, HAS_DT: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_P: tl.constexpr):
    pid = tl.program_id(0)
    pid_p = tl.program_id(1)
    nprog = tl.num_programs(0)
    cols = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    cmask = cols < P
    a = -tl.exp(tl.load(A + cols // K, mask=cmask, other=0.0).to(tl.float32))
    if HAS_DT:
        dt = tl.load(DT + cols, mask=cmask, other=0.0).to(tl.float32)
    acc_dt = tl.zeros([BLOCK_P], dtype=tl.float32)
    acc_a = tl.zeros([BLOCK_P], dtype=tl.float32)
    for start in range(pid * BLOCK_M, M, nprog * BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mask = (rows < M)[:, None] & cmask[None, :]
        x = tl.load(F + rows[:, None] * sf + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_DT:
            x += dt[None, :]
        dg = tl.load(DG + rows[:, None] * P + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dsp = tl.where(x > 20.0, 1.0, tl.sigmoid(x))
        df = dg * a[None, :] * dsp
        tl.store(DF + rows[:, None] * sf + cols[None, :], df.to(DF.dtype.element_ty), mask=mask)
        acc_dt += tl.sum(df, 0)
        acc_a += tl.sum(dg * a[None, :] * _softplus(x), 0)  # dg/dA_log = g
    tl.store(DDT + pid * P + cols, acc_dt, mask=cmask)
    tl.store(DA + pid * P + cols, acc_a, mask=cmask)


_BLOCK_M, _BLOCK_P = 32, 128


class _KDAGateFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f2, A_log, dt_bias, H, K):
        M, P = f2.shape
        g = torch.empty(M, P, dtype=torch.float32, device=f2.device)
        grid = (triton.cdiv(M, _BLOCK_M), triton.cdiv(P, _BLOCK_P))
        dt = dt_bias if dt_bias is not None else A_log
        _gate_fwd[grid](f2, A_log, dt, g, M, P, f2.stride(0), K=K, HAS_DT=dt_bias is not None,
                        BLOCK_M=_BLOCK_M, BLOCK_P=_BLOCK_P)
        ctx.save_for_backward(f2, A_log, dt_bias)
        ctx.H, ctx.K = H, K
        return g

    @staticmethod
    def backward(ctx, dg):
        f2, A_log, dt_bias = ctx.saved_tensors
        M, P = f2.shape
        dg = dg.contiguous()
        df = torch.empty_like(f2)
        if f2.is_cuda:
            cap = 2 * torch.cuda.get_device_properties(f2.device).multi_processor_count
        else:
            cap = 2
        nprog = max(1, min(triton.cdiv(M, _BLOCK_M), max(1, cap // triton.cdiv(P, _BLOCK_P))))
        ddt = torch.empty(nprog, P, dtype=torch.float32, device=f2.device)
        dA = torch.empty(nprog, P, dtype=torch.float32, device=f2.device)
        dt = dt_bias if dt_bias is not None else A_log
        _gate_bwd[(nprog, triton.cdiv(P, _BLOCK_P))](
            f2, A_log, dt, dg, df, ddt, dA, M, P, f2.stride(0), K=ctx.K, HAS_DT=dt_bias is not None,
            BLOCK_M=_BLOCK_M, BLOCK_P=_BLOCK_P,
        )
        d_dt = ddt.sum(0).view_as(dt_bias).to(dt_bias.dtype) if dt_bias is not None else None
        d_A = dA.sum(0).view(ctx.H, ctx.K).sum(-1).view_as(A_log).to(A_log.dtype)
        return df, d_A, d_dt, None, None


def kda_gate_triton(f: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor | None, H: int, K: int) -> torch.Tensor:
    """f [..., H*K] (any float dtype) → g fp32 [..., H, K]. Shapes are checked by `kda_gate`."""
    lead = f.shape[:-1] if f.shape[-1] == H * K else f.shape[:-2]
    f2 = f.reshape(-1, H * K)
    if f2.stride(-1) != 1:
        f2 = f2.contiguous()
    return _KDAGateFn.apply(f2, A_log, dt_bias, H, K).view(*lead, H, K)
