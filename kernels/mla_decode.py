"""Absorbed-latent MLA attention for one new token per row over a paged latent cache (the engine's decode step).

The latent cache is a block pool `pool` [num_blocks + 1, block_size, C] (C = rank + rope: the RMS-normed latent
followed by the shared, unrotated rope key); row b's blocks are `table[b]` in order and its keys are its first
positions[b] + 1 tokens. Per head the query is already absorbed into latent space: q [B, H, C] = [q_nope · W_uk,
q_rot]. Returns the attention-weighted latents o_lat [B, H, rank] (the caller applies W_uv).

The reference gathers each row's blocks into a contiguous copy and runs two batched GEMMs; on CUDA (fast path) the
Triton kernel (`mla_decode_triton.py`) reads the blocks in place through the table, split over the context
(flash-decoding) so that a long context spreads over the GPU, then merges the splits.
"""

from __future__ import annotations

import torch

from mixlab.errors import MixlabError

from .dispatch import use_fused

try:  # triton is optional (gpu / dev extras); without it the reference runs
    from .mla_decode_triton import mla_decode_paged_triton
except ImportError:
    mla_decode_paged_triton = None


def _check(q: torch.Tensor, pool: torch.Tensor, table: torch.Tensor, positions: torch.Tensor, rank: int) -> None:
    if q.dim() != 3 or pool.dim() != 3 or q.shape[-1] != pool.shape[-1]:
        raise MixlabError(f"mla_decode_paged: q must be [B, H, C] and pool [blocks, block_size, C] with the same C, "
                          f"got {tuple(q.shape)} and {tuple(pool.shape)}")
    B = q.shape[0]
    if table.dim() != 2 or table.shape[0] != B or positions.shape != (B,):
        raise MixlabError(f"mla_decode_paged: table must be [B={B}, blocks] and positions [B], got "
                          f"{tuple(table.shape)} and {tuple(positions.shape)}")
    if not 0 < rank <= q.shape[-1]:
        raise MixlabError(f"mla_decode_paged: rank {rank} must be in (0, C={q.shape[-1]}]")


def mla_decode_paged_torch(q: torch.Tensor, pool: torch.Tensor, table: torch.Tensor, positions: torch.Tensor,
                           rank: int, scale: float) -> torch.Tensor:
    """Reference: gather the row's blocks, scores in the cache dtype, fp32 softmax over keys 0..positions[b]."""
    B = q.shape[0]
    C = pool.shape[-1]
    keys = pool.index_select(0, table.reshape(-1)).view(B, -1, C)  # [B, L, C] this row's blocks in order
    L = keys.shape[1]
    scores = torch.bmm(q.to(keys.dtype), keys.transpose(1, 2)).float() * scale  # [B, H, L]
    allowed = torch.arange(L, device=q.device)[None, :] <= positions[:, None]
    probs = scores.masked_fill(~allowed[:, None, :], float("-inf")).softmax(-1).to(keys.dtype)
    return torch.bmm(probs, keys[..., :rank])  # [B, H, rank]


def mla_decode_paged(q: torch.Tensor, pool: torch.Tensor, table: torch.Tensor, positions: torch.Tensor, rank: int,
                     scale: float) -> torch.Tensor:
    """o_lat [B, H, rank] in pool.dtype. q [B, H, C]; pool [NB, bs, C]; table [B, nb] block ids (int64, padded
    with any valid block: positions beyond positions[b] are masked); positions [B] int64, with nb · bs >
    positions[b]. Static shapes and no host sync on either path (CUDA-graph safe)."""
    _check(q, pool, table, positions, rank)
    if mla_decode_paged_triton is not None and use_fused(q, pool, table, positions):
        return mla_decode_paged_triton(q, pool, table, positions, rank, scale)
    return mla_decode_paged_torch(q, pool, table, positions, rank, scale)
