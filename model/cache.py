"""`KimiLinearCache`: the generation cache of the hybrid model (a `transformers.Cache` subclass).

Per KDA layer: the three short-conv windows (q, k, v; each [B, P, W-1], the last W-1 pre-conv inputs, model
dtype) and the recurrent state [B, H, K, V] in fp32. Per MLA layer: the *compressed* latent per token
([B, L, kv_lora_rank + qk_rope_head_dim] = normalised kv latent ‖ shared rope-slot key), never the expanded K/V;
decoding absorbs `kv_b_proj` into the query and the output (see `modeling.KimiMLAAttention`).

One key mask [B, L] (True = real token) is shared by the MLA layers, so left-padded prompts stay masked while
decoding. It is advanced once per forward by the model (`begin_forward`), not per layer.

The cache does not use `transformers`' per-layer `CacheLayerMixin` machinery (its API moved between 5.17 and
5.24); it implements the methods `generate` calls: `get_seq_length`, `is_linear`, `is_compileable`,
`reorder_cache` (beam search) and `batch_repeat_interleave` / `batch_select_indices`.
"""

from __future__ import annotations

import torch
from transformers import Cache

from .config import KimiLinearConfig


class KimiLinearCache(Cache):
    is_compileable = False
    is_croppable = False

    def __init__(self, config: KimiLinearConfig, batch_size: int | None = None) -> None:
        # Deliberately not calling Cache.__init__: it expects transformers' layer objects.
        self.config = config
        self.num_rows = batch_size
        n = config.num_hidden_layers
        self.layer_is_kda = [config.is_kda_layer(i) for i in range(n)]
        self.conv_states: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = [None] * n
        self.recurrent_states: list[torch.Tensor | None] = [None] * n
        self.latents: list[torch.Tensor | None] = [None] * n
        self.key_mask: torch.Tensor | None = None  # [B, L] bool
        self.seen_tokens = 0
        self.layers = []  # for code that inspects `cache.layers`
        self.offloading = False

    # ------------------------------------------------------------------------------------------- generate API
    def __len__(self) -> int:
        return len(self.layer_is_kda)

    def __repr__(self) -> str:
        return f"KimiLinearCache(batch={self.num_rows}, seen_tokens={self.seen_tokens})"

    @property
    def is_linear(self) -> list[bool]:
        return list(self.layer_is_kda)

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self.layer_is_kda)

    @property
    def is_dummy(self) -> list[bool]:
        return [False] * len(self.layer_is_kda)

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self.seen_tokens

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    @property
    def has_previous_state(self) -> bool:
        return self.seen_tokens > 0

    def _map(self, fn) -> None:
        for i in range(len(self.layer_is_kda)):
            if self.conv_states[i] is not None:
                self.conv_states[i] = tuple(fn(t) for t in self.conv_states[i])
            if self.recurrent_states[i] is not None:
                self.recurrent_states[i] = fn(self.recurrent_states[i])
            if self.latents[i] is not None:
                self.latents[i] = fn(self.latents[i])
        if self.key_mask is not None:
            self.key_mask = fn(self.key_mask)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))
        if self.num_rows is not None:
            self.num_rows *= repeats

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices])

    def reset(self) -> None:
        n = len(self.layer_is_kda)
        self.conv_states, self.recurrent_states, self.latents = [None] * n, [None] * n, [None] * n
        self.key_mask, self.seen_tokens = None, 0

    # ------------------------------------------------------------------------------------------- model API
    def begin_forward(self, new_mask: torch.Tensor) -> None:
        """Append the key mask [B, T_new] (True = real token) of the tokens this forward adds."""
        new_mask = new_mask.bool()
        self.key_mask = new_mask if self.key_mask is None else torch.cat([self.key_mask, new_mask], 1)
        self.num_rows = new_mask.shape[0]

    def end_forward(self, num_new_tokens: int) -> None:
        self.seen_tokens += num_new_tokens

    def update_kda(self, layer_idx: int, conv: tuple[torch.Tensor, ...], state: torch.Tensor) -> None:
        self.conv_states[layer_idx] = tuple(conv)
        self.recurrent_states[layer_idx] = state.float()

    def append_latent(self, layer_idx: int, latent: torch.Tensor) -> torch.Tensor:
        """Append [B, T_new, C] latents; returns all latents of the layer [B, L, C]."""
        old = self.latents[layer_idx]
        self.latents[layer_idx] = latent if old is None else torch.cat([old, latent], 1)
        return self.latents[layer_idx]

    def memory_bytes(self) -> int:
        total = 0
        for group in (self.recurrent_states, self.latents):
            total += sum(t.numel() * t.element_size() for t in group if t is not None)
        for conv in self.conv_states:
            if conv is not None:
                total += sum(t.numel() * t.element_size() for t in conv)
        return total
