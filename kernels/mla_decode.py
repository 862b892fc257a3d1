"""Absorbed-latent MLA attention for one new token per row over a paged latent cache (the engine's decode step).

The latent cache is a block pool `pool` [num_blocks + 1, block_size, C] (C = rank + rope: the RMS-normed latent
followed by the shared, unrotated rope key); row b's blocks are `table[b]` in order and its keys are its first
positions[b] + 1 tokens, the last of them the new token's latent, which the op appends. Per head the query is
already absorbed into latent space: [q_nope · W_uk, q_rot]. Returns the attention-weighted latents o_lat
[B, H, rank] (the caller applies W_uv).

The reference writes the latent, gathers each row's blocks into a contiguous copy and runs two batched GEMMs
(MIXLAB_FUSED_DECODE=0). On CUDA, by default (verified on an H100 by bench/run_engine_gpu.sh), the Triton kernel
(`mla_decode_triton.py`) reads the blocks in place through the table, split over the context (flash-decoding)
so that a long context spreads over the GPU, then merges the splits; the new latent is written and used in the same
launch.
"""

from __future__ import annotations

import torch

from mixlab.errors import MixlabError

from .dispatch import fused_decode_enabled, use_fused, with_fallback

try:  # triton is optional (gpu / dev extras); without it the reference runs
    from .mla_decode_triton import mla_decode_paged_triton
except ImportError:
    mla_decode_paged_triton = None


def _check(q_lat, q_rot, kv_new, rot_new, pool, table, positions) -> None:
    B, H, rank = q_lat.shape if q_lat.dim() == 3 else (None, None, None)
    if B is None or q_rot.dim() != 3 or q_rot.shape[:2] != (B, H) or pool.dim() != 3:
        raise MixlabError(f"mla_decode_paged: q_lat must be [B, H, rank], q_rot [B, H, rope] and pool [blocks, "
                          f"block_size, C], got {tuple(q_lat.shape)}, {tuple(q_rot.shape)}, {tuple(pool.shape)}")
    rope = q_rot.shape[-1]
    if pool.shape[-1] != rank + rope or kv_new.shape != (B, rank) or rot_new.shape != (B, rope):
        raise MixlabError(f"mla_decode_paged: pool's C ({pool.shape[-1]}) must be rank + rope = {rank} + {rope} and "
                          f"the new latent [B, rank] + [B, rope], got {tuple(kv_new.shape)}, {tuple(rot_new.shape)}")
    if table.dim() != 2 or table.shape[0] != B or positions.shape != (B,):
        raise MixlabError(f"mla_decode_paged: table must be [B={B}, blocks] and positions [B], got "
                          f"{tuple(table.shape)} and {tuple(positions.shape)}")


def mla_decode_paged_torch(q_lat, q_rot, kv_new, rot_new, pool, table, positions, scale: float) -> torch.Tensor:
    """Reference: write the new latent, gather the row's blocks, scores in the cache dtype, fp32 softmax over keys
    0..positions[b]."""
    B = q_lat.shape[0]
    bs, C = pool.shape[1], pool.shape[2]
    rank = q_lat.shape[-1]
    latent = torch.cat([kv_new, rot_new], -1)  # [B, C]
    block = table.gather(1, (positions // bs).unsqueeze(1)).squeeze(1)
    pool.view(-1, C).index_copy_(0, block * bs + positions % bs, latent.to(pool.dtype))
    keys = pool.index_select(0, table.reshape(-1)).view(B, -1, C)  # [B, L, C] this row's blocks in order
    L = keys.shape[1]
    q = torch.cat([q_lat, q_rot], -1).to(keys.dtype)
    scores = torch.bmm(q, keys.transpose(1, 2)).float() * scale  # [B, H, L]
    allowed = torch.arange(L, device=q.device)[None, :] <= positions[:, None]
    probs = scores.masked_fill(~allowed[:, None, :], float("-inf")).softmax(-1).to(keys.dtype)
    return torch.bmm(probs, keys[..., :rank])  # [B, H, rank]


def mla_decode_paged(q_lat: torch.Tensor, q_rot: torch.Tensor, kv_new: torch.Tensor, rot_new: torch.Tensor,
                     pool: torch.Tensor, table: torch.Tensor, positions: torch.Tensor, scale: float) -> torch.Tensor:
    """Append each row's new latent at its position, then attend: o_lat [B, H, rank] in pool.dtype.

    q_lat [B, H, rank] (q_nope·W_uk), q_rot [B, H, rope]; kv_new [B, rank] (the normed latent), rot_new [B, rope]
    (the new token's rope key); pool [NB, bs, rank + rope]; table [B, nb] block ids (int64, padded with any valid
    block: positions beyond positions[b] are masked); positions [B] int64 (the new token's position), with
    nb · bs > positions[b]. Strided views are fine. Static shapes and no host sync on either path."""
    _check(q_lat, q_rot, kv_new, rot_new, pool, table, positions)
    def reference():
        return mla_decode_paged_torch(q_lat, q_rot, kv_new, rot_new, pool, table, positions, scale)

    fast = mla_decode_paged_triton is not None and fused_decode_enabled()
    if fast and use_fused(q_lat, pool, table, positions):
        return with_fallback("mla_decode_paged", lambda: mla_decode_paged_triton(
            q_lat, q_rot, kv_new, rot_new, pool, table, positions, scale), reference)
    return reference()
