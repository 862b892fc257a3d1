"""Shared helpers of the KDA ops: argument checks, the in-kernel L2 norm, varlen (cu_seqlens) packing."""

from __future__ import annotations

import torch

from mixlab.errors import MixlabError


def fp32(x: torch.Tensor) -> torch.Tensor:
    """Upcast to fp32 for compute; fp64 stays fp64 (lets tests run the ops in double precision)."""
    return x if x.dtype == torch.float64 else x.float()


class _L2Norm(torch.autograd.Function):
    """y = x · r, r = (Σx² + eps)^-½; backward dx = r (dy − y Σ(dy·y)): 4 passes instead of autograd's ~10."""

    @staticmethod
    def forward(ctx, x, eps):
        r = torch.rsqrt(torch.linalg.vecdot(x, x).unsqueeze(-1) + eps)
        y = x * r
        ctx.save_for_backward(y, r)
        return y

    @staticmethod
    def backward(ctx, dy):
        y, r = ctx.saved_tensors
        return (dy - y * torch.linalg.vecdot(dy, y).unsqueeze(-1)) * r, None


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum(x²) + eps) over the last dim, in fp32 (fla's `use_qk_l2norm_in_kernel`)."""
    return _L2Norm.apply(fp32(x), eps)


def check_kda_args(op, q, k, v, g, beta, initial_state, cu_seqlens) -> None:
    """One-line MixlabErrors for wrong shapes, before any compute."""
    if q.dim() != 4 or k.shape != q.shape:
        raise MixlabError(f"{op}: q and k must both be [B, T, H, K], got {tuple(q.shape)} and {tuple(k.shape)}")
    B, T, H, K = q.shape
    if v.dim() != 4 or v.shape[:3] != (B, T, H):
        raise MixlabError(f"{op}: v must be [B, T, H, V] = [{B}, {T}, {H}, V], got {tuple(v.shape)}")
    if g.shape != q.shape:
        raise MixlabError(f"{op}: g must have the shape of q {tuple(q.shape)}, got {tuple(g.shape)}")
    if beta.shape != (B, T, H):
        raise MixlabError(f"{op}: beta must be [B, T, H] = [{B}, {T}, {H}], got {tuple(beta.shape)}")
    n = B
    if cu_seqlens is not None:
        if B != 1:
            raise MixlabError(f"{op}: with cu_seqlens the batch size must be 1 (packed), got B={B}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or int(cu_seqlens[-1]) != T or int(cu_seqlens[0]) != 0:
            raise MixlabError(f"{op}: cu_seqlens must be [N+1] starting at 0 and ending at T={T}")
        n = cu_seqlens.numel() - 1
    if initial_state is not None and initial_state.shape != (n, H, K, v.shape[-1]):
        raise MixlabError(
            f"{op}: initial_state must be [{n}, {H}, {K}, {v.shape[-1]}] (N, H, K, V), got {tuple(initial_state.shape)}"
        )


def unpack_varlen(x: torch.Tensor, cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[1, T, ...] packed → ([N, Tmax, ...] right-padded with zeros, flat index of each token in the padded view).

    Zero padding after a sequence is exact for KDA: k = v = g = beta = 0 leaves the state unchanged.
    """
    lens = cu_seqlens[1:] - cu_seqlens[:-1]
    n, tmax = lens.numel(), int(lens.max())
    T = x.shape[1]
    seq = torch.repeat_interleave(torch.arange(n, device=x.device), lens, output_size=T)
    pos = torch.arange(T, device=x.device) - cu_seqlens[:-1].to(x.device)[seq]
    flat = seq * tmax + pos
    out = x.new_zeros((n * tmax, *x.shape[2:])).index_copy(0, flat, x[0])
    return out.view(n, tmax, *x.shape[2:]), flat


def pack_varlen(y: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """Inverse of `unpack_varlen`: [N, Tmax, ...] → [1, T, ...]."""
    return y.flatten(0, 1).index_select(0, flat).unsqueeze(0)
