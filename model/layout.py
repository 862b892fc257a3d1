"""How the tokens of one forward are laid out for the layers: dense [B, T] rows, or packed varlen.

Three inputs can split a batch into independent sequences, and every layer must reset at each boundary
(conv windows, KDA state, MLA attention):
- `cu_seqlens` (B = 1, packed),
- `position_ids` resets (TRL padding-free packing passes only these): a new sequence starts wherever
  `position_ids[t] != position_ids[t-1] + 1`,
- a 2-D `attention_mask` with zeros (left or right padding): padding tokens are dropped, never seen by a layer.

When any of these applies, the real tokens are gathered into one packed row [1, N, D] with `cu_seqlens` (the
layout fla's varlen kernels use) and scattered back to [B, T, D] after the last layer; padding positions come out
as zero hidden states. Otherwise the batch stays dense and the kernels run batched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mixlab.errors import MixlabError

from .cache import KimiLinearCache


@dataclass
class SeqLayout:
    batch: int
    seqlen: int
    cu_seqlens: torch.Tensor | None = None  # varlen mode: hidden states are [1, N, D]
    token_index: torch.Tensor | None = None  # varlen mode: flat index (into B*T) of each kept token
    seg_ids: torch.Tensor | None = None  # varlen mode: [N] sequence id of each token
    cache: KimiLinearCache | None = None
    has_past: bool = False
    count_mask: torch.Tensor | None = None  # dense mode: [B*T] bool, the tokens MoE load statistics count

    @property
    def varlen(self) -> bool:
        return self.cu_seqlens is not None

    @property
    def num_seqs(self) -> int:
        return self.cu_seqlens.numel() - 1 if self.varlen else self.batch

    def group_ids(self, device: torch.device) -> torch.Tensor:
        """Sequence id of every token the layers see (for the sequence-level aux loss)."""
        if self.varlen:
            return self.seg_ids
        return torch.arange(self.batch, device=device).repeat_interleave(self.seqlen)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        if not self.varlen:
            return x
        return x.reshape(-1, *x.shape[2:]).index_select(0, self.token_index).unsqueeze(0)

    def to_padded_seqs(self, x: torch.Tensor) -> torch.Tensor:
        """Varlen [1, N, ...] → [S, Tmax, ...], one right-padded row per sequence (for causal attention, where the
        trailing padding can never be attended by a real token)."""
        flat, S, tmax = self._seq_index()
        out = x.new_zeros(S * tmax, *x.shape[2:]).index_copy(0, flat, x[0])
        return out.view(S, tmax, *x.shape[2:])

    def from_padded_seqs(self, y: torch.Tensor) -> torch.Tensor:
        flat, _, _ = self._seq_index()
        return y.reshape(-1, *y.shape[2:]).index_select(0, flat).unsqueeze(0)

    def _seq_index(self):
        if getattr(self, "_seq_index_cache", None) is None:
            lens = self.cu_seqlens[1:] - self.cu_seqlens[:-1]
            tmax = int(lens.max())
            pos = torch.arange(self.seg_ids.numel(), device=self.seg_ids.device) - self.cu_seqlens[self.seg_ids]
            self._seq_index_cache = (self.seg_ids * tmax + pos, lens.numel(), tmax)
        return self._seq_index_cache

    def unpack(self, h: torch.Tensor) -> torch.Tensor:
        """[1, N, ...] → [B, T, ...] with zeros at padding positions."""
        if not self.varlen:
            return h
        out = h.new_zeros(self.batch * self.seqlen, *h.shape[2:])
        return out.index_copy(0, self.token_index, h[0]).view(self.batch, self.seqlen, *h.shape[2:])


def _check_cu_seqlens(cu: torch.Tensor, total: int) -> torch.Tensor:
    cu = torch.as_tensor(cu).flatten().long()
    if cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != total or bool((cu[1:] <= cu[:-1]).any()):
        raise MixlabError(
            f"cu_seqlens must be strictly increasing from 0 to the packed length {total}, got {cu.tolist()[:8]}..."
        )
    return cu


def build_layout(
    batch: int,
    seqlen: int,
    device: torch.device,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    cache: KimiLinearCache | None,
    cache_optional: bool = False,
) -> SeqLayout:
    """`cache_optional`: the cache was not asked for explicitly; packed inputs then simply run without one."""
    if attention_mask is not None and attention_mask.dim() != 2:
        raise MixlabError(
            f"attention_mask must be a 2-D [batch, seq] 0/1 padding mask, got {attention_mask.dim()}-D "
            "(packed sequences: pass cu_seqlens or position_ids resets instead of a 4-D mask)"
        )
    has_past = cache is not None and cache.seen_tokens > 0
    if has_past:
        if cu_seqlens is not None:
            raise MixlabError("cu_seqlens cannot be combined with a non-empty generation cache")
        if attention_mask is not None and not bool(attention_mask[:, -seqlen:].bool().all()):
            raise MixlabError("padding in tokens appended to a generation cache is not supported (pad on the left)")
        cache.begin_forward(torch.ones(batch, seqlen, dtype=torch.bool, device=device))
        return SeqLayout(batch, seqlen, cache=cache, has_past=True)

    valid = None
    if attention_mask is not None:
        if attention_mask.shape != (batch, seqlen):
            raise MixlabError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match input [{batch}, {seqlen}]"
            )
        valid = attention_mask.bool()
        if bool(valid.all()):
            valid = None
    starts = None  # [B, T] bool: a new sequence starts here (besides each row's first kept token)
    if cu_seqlens is not None:
        if batch != 1:
            raise MixlabError(f"cu_seqlens needs a packed batch of size 1, got batch size {batch}")
        if valid is not None:
            raise MixlabError("pass either cu_seqlens or an attention_mask with padding, not both")
        cu = _check_cu_seqlens(cu_seqlens, seqlen).to(device)
        starts = torch.zeros(seqlen, dtype=torch.bool, device=device)
        starts[cu[:-1]] = True
        starts = starts.unsqueeze(0)
    elif position_ids is not None and seqlen > 1:
        pos = position_ids.to(device).expand(batch, seqlen) if position_ids.dim() == 2 else None
        if pos is None:
            raise MixlabError(f"position_ids must be [batch, seq], got shape {tuple(position_ids.shape)}")
        reset = pos[:, 1:] != pos[:, :-1] + 1
        if bool(reset.any()):
            starts = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=device), reset], 1)

    if cache is not None:
        cache.begin_forward(
            valid if valid is not None else torch.ones(batch, seqlen, dtype=torch.bool, device=device)
        )
    if valid is None and starts is None:
        return SeqLayout(batch, seqlen, cache=cache)

    keep = valid if valid is not None else torch.ones(batch, seqlen, dtype=torch.bool, device=device)
    prev_keep = torch.cat([torch.zeros(batch, 1, dtype=torch.bool, device=device), keep[:, :-1]], 1)
    start = keep & ~prev_keep  # first real token of a row (after left padding) or after a gap
    if starts is not None:
        start = start | (starts & keep)
    token_index = keep.flatten().nonzero().squeeze(1)
    start_flat = start.flatten().index_select(0, token_index)
    seg_ids = start_flat.long().cumsum(0) - 1
    lens = torch.bincount(seg_ids, minlength=int(seg_ids[-1]) + 1 if seg_ids.numel() else 0)
    cu = torch.cat([lens.new_zeros(1), lens.cumsum(0)])
    if cache is not None:
        rows = token_index // seqlen
        if cu.numel() - 1 != batch or not bool((rows.index_select(0, cu[:-1].long()) == torch.arange(
                batch, device=device)).all()):
            if cache_optional:
                return SeqLayout(batch, seqlen, cu_seqlens=cu, token_index=token_index, seg_ids=seg_ids)
            raise MixlabError(
                "a generation cache needs exactly one sequence per batch row with at least one real token; "
                "packed inputs (cu_seqlens / position_ids resets) or all-padding rows cannot be cached"
            )
    return SeqLayout(batch, seqlen, cu_seqlens=cu, token_index=token_index, seg_ids=seg_ids, cache=cache)
