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

import heapq

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


class PagedHybridCache:
    """The generation engine's cache: fixed-size per-sequence slots for the KDA layers, a block pool for MLA.

    KDA state does not grow with the sequence, so each running sequence owns one *slot*: per KDA layer the q/k/v
    conv windows `conv[layer][slot]` [3, P, W-1] (model dtype) and the recurrent state `state[layer][slot]`
    [H, K, V] (fp32). MLA latents grow by one row per token, so they live in fixed-size *blocks*
    (`latent[layer]` [num_blocks + 1, block_size, C], C = kv_lora_rank + qk_rope_head_dim); a sequence's
    block table lists its blocks in order. Slot `num_slots` and block `num_blocks` are scratch: padding rows of a
    fixed-shape (CUDA-graph) decode step read and write there and never touch a live sequence.

    Allocation is all-or-nothing and explicit (`alloc`/`free`); the engine reserves a sequence's blocks for
    prompt + max_new_tokens at admission, so a running sequence can never run out of cache.
    """

    def __init__(self, config: KimiLinearConfig, *, num_slots: int, num_blocks: int, block_size: int,
                 device: torch.device | str, dtype: torch.dtype) -> None:
        if num_slots < 1 or num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_slots, num_blocks and block_size must be >= 1, got {num_slots}, {num_blocks}, "
                             f"{block_size}")
        self.config = config
        self.num_slots, self.num_blocks, self.block_size = num_slots, num_blocks, block_size
        self.device, self.dtype = torch.device(device), dtype
        n = config.num_hidden_layers
        H, K, W = config.kda_num_heads, config.kda_head_dim, config.conv_kernel_size
        C = config.kv_lora_rank + config.qk_rope_head_dim
        self.conv: list[torch.Tensor | None] = [None] * n
        self.state: list[torch.Tensor | None] = [None] * n
        self.latent: list[torch.Tensor | None] = [None] * n
        for i in range(n):
            if config.is_kda_layer(i):
                self.conv[i] = torch.zeros(num_slots + 1, 3, H * K, W - 1, dtype=dtype, device=self.device)
                self.state[i] = torch.zeros(num_slots + 1, H, K, K, dtype=torch.float32, device=self.device)
            else:
                self.latent[i] = torch.zeros(num_blocks + 1, block_size, C, dtype=dtype, device=self.device)
        self._free_slots = list(range(num_slots))  # a heap: the lowest free slot goes first, so a full batch
        # occupies slots 0..B-1 and the engine can update their state in place (no gather/scatter)
        self._free_blocks = list(range(num_blocks - 1, -1, -1))

    # ----------------------------------------------------------------------------------------------- sizing
    @staticmethod
    def bytes_per_slot(config: KimiLinearConfig, dtype: torch.dtype) -> int:
        H, K, W = config.kda_num_heads, config.kda_head_dim, config.conv_kernel_size
        item = torch.empty(0, dtype=dtype).element_size()
        n_kda = sum(config.is_kda_layer(i) for i in range(config.num_hidden_layers))
        return n_kda * (3 * H * K * (W - 1) * item + H * K * K * 4)

    @staticmethod
    def bytes_per_block(config: KimiLinearConfig, block_size: int, dtype: torch.dtype) -> int:
        item = torch.empty(0, dtype=dtype).element_size()
        n_mla = sum(not config.is_kda_layer(i) for i in range(config.num_hidden_layers))
        return n_mla * block_size * (config.kv_lora_rank + config.qk_rope_head_dim) * item

    @property
    def scratch_slot(self) -> int:
        return self.num_slots

    @property
    def scratch_block(self) -> int:
        return self.num_blocks

    @property
    def free_slots(self) -> int:
        return len(self._free_slots)

    @property
    def free_blocks(self) -> int:
        return len(self._free_blocks)

    def blocks_for(self, num_tokens: int) -> int:
        return max(1, -(-num_tokens // self.block_size))

    # ----------------------------------------------------------------------------------------------- allocation
    def alloc(self, slots: int, blocks_each: int) -> list[tuple[int, list[int]]] | None:
        """`slots` sequences with `blocks_each` blocks each, or None (nothing taken) when they do not fit now."""
        if slots > len(self._free_slots) or slots * blocks_each > len(self._free_blocks):
            return None
        return [(heapq.heappop(self._free_slots), [self._free_blocks.pop() for _ in range(blocks_each)])
                for _ in range(slots)]

    @torch.no_grad()
    def move_slot(self, src: int, dst: int) -> None:
        """Move a live sequence's KDA state from slot `src` to the free slot `dst`; `src` becomes free."""
        self._free_slots.remove(dst)
        heapq.heapify(self._free_slots)
        heapq.heappush(self._free_slots, src)
        for i, conv in enumerate(self.conv):
            if conv is not None:
                conv[dst].copy_(conv[src])
                self.state[i][dst].copy_(self.state[i][src])

    def free(self, slot: int, blocks: list[int]) -> None:
        heapq.heappush(self._free_slots, slot)
        self._free_blocks.extend(reversed(blocks))

    # ----------------------------------------------------------------------------------------------- copies
    def _token_index(self, blocks: list[int], start: int, count: int) -> torch.Tensor:
        pos = torch.arange(start, start + count)
        table = torch.tensor(blocks, dtype=torch.long)
        return (table[pos // self.block_size] * self.block_size + pos % self.block_size).to(self.device)

    @torch.no_grad()
    def write_prefill(self, source: KimiLinearCache, row: int, slot: int, blocks: list[int], start: int,
                      length: int) -> None:
        """Copy row `row` of a prefill's `KimiLinearCache` into `slot` and `blocks`.

        The KDA conv/recurrent state is the row's final state. The MLA latents of the forward's real tokens (the
        last `length` positions of the row: prompts are left-padded) go to token positions start..start+length."""
        for i, conv in enumerate(self.conv):
            if conv is None:
                continue
            conv[slot].copy_(torch.stack([c[row] for c in source.conv_states[i]]))
            self.state[i][slot].copy_(source.recurrent_states[i][row])
        index = self._token_index(blocks, start, length)
        for i, lat in enumerate(self.latent):
            if lat is None:
                continue
            rows = source.latents[i][row, source.latents[i].shape[1] - length :]
            lat.view(-1, lat.shape[-1]).index_copy_(0, index, rows.to(lat.dtype))

    @torch.no_grad()
    def fork(self, src: tuple[int, list[int]], dst: tuple[int, list[int]], num_tokens: int) -> None:
        """Copy a sequence's state and its first `num_tokens` latents into another allocation (n samples)."""
        for i, conv in enumerate(self.conv):
            if conv is not None:
                conv[dst[0]].copy_(conv[src[0]])
                self.state[i][dst[0]].copy_(self.state[i][src[0]])
        a, b = self._token_index(src[1], 0, num_tokens), self._token_index(dst[1], 0, num_tokens)
        for lat in self.latent:
            if lat is not None:
                flat = lat.view(-1, lat.shape[-1])
                flat.index_copy_(0, b, flat.index_select(0, a))

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for group in (self.conv, self.state, self.latent) for t in group
                   if t is not None)
