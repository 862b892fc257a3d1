"""Causal depthwise short convolution (kernel W, no bias) + SiLU, with a cache and packed-sequence support.

Each sequence is laid out as [its W-1 cached inputs | its tokens] and one valid (unpadded) conv1d runs over the
concatenation, so an output only ever sees its own sequence's inputs (and its own cache): no leakage across
packed sequences, and decode / chunked prefill continue exactly from the cache.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from mixlab.errors import MixlabError

from .dispatch import use_fused
from .kda_common import fp32

try:  # triton is optional (gpu / dev extras); without it the reference runs
    from .short_conv_triton import short_conv_triton
except ImportError:
    short_conv_triton = None

# The fused kernel (tested against this reference in the interpreter and on an H100) cut the 1b-a150m step's GPU
# time by 16 % and its peak memory by 10 % (BENCHMARKS.md); MIXLAB_FUSED_SHORT_CONV=0 turns it off.
FUSED_SHORT_CONV = os.environ.get("MIXLAB_FUSED_SHORT_CONV", "1") != "0"

ACTIVATIONS = ("silu", "swish", None, "identity")


def short_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    cache: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    activation: str | None = "silu",
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x [B,T,D], weight [D,1,W] (nn.Conv1d depthwise layout), cache [N,D,W-1] of the previous inputs (oldest first).

    N = B, or the number of sequences in cu_seqlens (B must then be 1). Computes in fp32; returns
    (y [B,T,D] in x.dtype, new cache [N,D,W-1] in x.dtype = each sequence's last W-1 inputs, older ones from the
    given cache or zeros when the sequence is shorter; None unless output_final_state).
    """
    if activation not in ACTIVATIONS:
        raise MixlabError(f"short_conv: unknown activation {activation!r}; choose silu or None")
    if x.dim() != 3:
        raise MixlabError(f"short_conv: x must be [B, T, D], got {tuple(x.shape)}")
    B, T, D = x.shape
    if weight.dim() == 2:
        weight = weight.unsqueeze(1)
    if weight.shape[0] != D or weight.shape[1] != 1:
        raise MixlabError(f"short_conv: weight must be [D={D}, 1, W], got {tuple(weight.shape)}")
    W = weight.shape[-1]
    if cu_seqlens is None:
        n, lens = B, None
    else:
        if B != 1:
            raise MixlabError(f"short_conv: with cu_seqlens the batch size must be 1 (packed), got B={B}")
        if cu_seqlens.dim() != 1 or (not cu_seqlens.is_cuda and (int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != T)):
            # Values are checked on CPU only: reading a CUDA tensor would sync the host in every KDA layer (three
            # times), and the model's layout has validated cu_seqlens once on entry.
            raise MixlabError(f"short_conv: cu_seqlens must be [N+1] starting at 0 and ending at T={T}")
        n = cu_seqlens.numel() - 1
        lens = (cu_seqlens[1:] - cu_seqlens[:-1]).to(x.device)
    if cache is not None and cache.shape != (n, D, W - 1):
        raise MixlabError(f"short_conv: cache must be [{n}, {D}, {W - 1}] (N, D, W-1), got {tuple(cache.shape)}")
    if FUSED_SHORT_CONV and cache is None and not output_final_state and use_fused(x, weight):
        return short_conv_triton(x, weight, cu_seqlens, activation), None

    xf = fp32(x).transpose(1, 2)  # [B, D, T]
    w = weight.to(xf.dtype)
    if cache is None:
        cache_f = xf.new_zeros(n, D, W - 1)
    else:
        cache_f = cache.to(xf.dtype)

    if lens is None:
        ext = torch.cat((cache_f, xf), -1)  # [B, D, W-1+T]
        y = F.conv1d(ext, w, groups=D)  # [B, D, T]
        new_cache = ext[..., ext.shape[-1] - (W - 1) :] if output_final_state else None
    else:
        # One segment per sequence: [cache_n | tokens_n]; token i of sequence s goes to i + (W-1)(s+1).
        dev = x.device
        seq = torch.repeat_interleave(torch.arange(n, device=dev), lens, output_size=T)
        tok_dst = torch.arange(T, device=dev) + (W - 1) * (seq + 1)
        seg_start = cu_seqlens[:-1].to(dev) + (W - 1) * torch.arange(n, device=dev)  # [n]
        cache_dst = (seg_start[:, None] + torch.arange(W - 1, device=dev)).flatten()
        L = T + n * (W - 1)
        ext = xf.new_zeros(D, L)
        ext = ext.index_copy(1, tok_dst, xf[0]).index_copy(1, cache_dst, cache_f.permute(1, 0, 2).reshape(D, -1))
        y_all = F.conv1d(ext.unsqueeze(0), w, groups=D)  # output j sees ext[j : j+W]
        y = y_all.index_select(2, tok_dst - (W - 1))
        if output_final_state:
            seg_end = seg_start + (W - 1) + lens  # exclusive
            idx = (seg_end[:, None] - (W - 1) + torch.arange(W - 1, device=dev)).flatten()
            new_cache = ext.index_select(1, idx).view(D, n, W - 1).permute(1, 0, 2)
        else:
            new_cache = None
    if activation in ("silu", "swish"):
        y = F.silu(y)
    y = y.transpose(1, 2).to(x.dtype)
    return y, (None if new_cache is None else new_cache.to(x.dtype).contiguous())
