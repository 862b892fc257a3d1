"""Next-token choice on the device: greedy, temperature, top-p, with per-row seeded uniforms.

Each sequence draws from its own CPU-seeded stream of uniforms (keyed by seed, prompt index and sample index), so
its samples do not depend on which other sequences share its batch, and are the same on CPU and GPU. The draw is an
inverse CDF over the vocabulary with one uniform per row and step: one vectorised op per step, no host sync, so it
runs inside the decode step's CUDA graph.
"""

from __future__ import annotations

import hashlib

import torch


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{prompt_index}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def row_uniforms(keys: list[tuple[int, int]], seed: int, steps: int) -> torch.Tensor:
    """[rows, steps] float64 uniforms in (0, 1], one CPU-seeded stream per (prompt, sample)."""
    streams = []
    for p, j in keys:
        g = torch.Generator().manual_seed(row_seed(seed, p, j))
        streams.append(1.0 - torch.rand(steps, generator=g, dtype=torch.float64))
    return torch.stack(streams)


def sample_rows(logits: torch.Tensor, greedy: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                uniforms: torch.Tensor, any_sampled: bool = True) -> torch.Tensor:
    """Next token per row from fp32 logits [B, V]; greedy [B] bool, temperature/top_p/uniforms [B].

    Sampled rows: logits / temperature, keep the smallest prefix (by probability) whose mass reaches top_p (the top
    token always survives), then the first token whose CDF (vocabulary order) reaches u · total."""
    best = logits.argmax(dim=-1)
    if not any_sampled:
        return best
    scaled = logits / temperature.clamp(min=1e-5).to(logits.dtype).unsqueeze(-1)
    sorted_logits, sorted_idx = scaled.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    drop = (probs.cumsum(dim=-1) - probs) > top_p.to(probs.dtype).unsqueeze(-1)
    nucleus = sorted_logits.masked_fill(drop, float("-inf"))
    kept = torch.full_like(scaled, float("-inf")).scatter(-1, sorted_idx, nucleus)
    cdf = kept.softmax(dim=-1).cumsum(dim=-1)
    target = (uniforms.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    drawn = torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)
    return torch.where(greedy, best, drawn)
