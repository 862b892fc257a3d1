"""One decode step of the Kimi Linear hybrid over the engine's paged cache, with static shapes (CUDA-graph safe).

This is the model's own math for one new token per sequence (`model/modeling.py`, the layers' `has_past, T == 1`
branch) rewritten for a batch whose sequences live in cache *slots* (KDA) and *blocks* (MLA) rather than in the
rows of a `KimiLinearCache`. It calls the same `mixlab.kernels` ops and the model's own parameters (never copies
of them, so in-place weight updates, e.g. between GRPO steps, are seen at once). Its oracle is the model's full
forward: tests check greedy tokens against recomputation from scratch and against transformers `generate`.

Every tensor shape depends only on (batch rows, gathered MLA blocks), and nothing synchronises with the host, so
a step can be captured once per shape as a CUDA graph. Padding rows point at the cache's scratch slot/block.
The attention parts are two kernel ops: `kda_decode_layer` (projections, conv window, gate, state update, gated
norm) and `mla_decode_paged` (appends the latent and attends through the block table); MoE mode "fused" is
`moe_decode_block`. On CUDA they run their Triton kernels by default (KDA layer in two launches, MLA read in
place without a gather copy, MoE in five launches; measured on an H100, BENCHMARKS.md); MIXLAB_FUSED_DECODE=0 runs
their torch references, as CPU tensors always do.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from mixlab.errors import MixlabError
from mixlab.kernels import kda_decode_layer, mla_decode_paged, moe_decode_block, moe_experts, moe_route
from mixlab.kernels.decode_moe import moe_experts_gather
from mixlab.kernels.dispatch import fused_decode_enabled
from mixlab.model.cache import PagedHybridCache
from mixlab.yamlio import did_you_mean


def moe_decode(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, idx: torch.Tensor,
               weight: torch.Tensor, mode: str) -> torch.Tensor:
    """Σ_k weight·Expert(x) like `kernels.moe_experts`, without its host sync (bincount → per-expert loop).

    mode "gather": gathers the N·k chosen experts' weights and runs one batched GEMM per matrix (cheap while
    N·k < E); "dense": runs every expert on every token and weights the results (reads each expert once: the
    better choice once most experts are hit); both are shape-static and sync-free. "sparse":
    `kernels.moe_experts` itself (host-synchronising; eager CPU path)."""
    if mode == "sparse":
        return moe_experts(x, w1, w3, w2, idx, weight)
    if mode == "gather":
        return moe_experts_gather(x, w1, w3, w2, idx, weight)
    N, D = x.shape
    E = w1.shape[0]
    xe = x.unsqueeze(0).expand(E, N, D)
    h = F.silu(torch.bmm(xe, w1.transpose(1, 2))) * torch.bmm(xe, w3.transpose(1, 2))  # [E, N, I]
    y = torch.bmm(h, w2.transpose(1, 2))  # [E, N, D]
    dense = torch.zeros(N, E, dtype=torch.float32, device=x.device).scatter(1, idx, weight.float())
    return torch.einsum("ne,end->nd", dense, y.float()).to(x.dtype)


MOE_MODES = ("sparse", "gather", "dense", "fused")


def moe_mode(device: torch.device, rows: int, top_k: int, num_experts: int) -> str:
    """CPU: the kernel op (its host sync is free there). CUDA: a shape-static form, chosen by how many experts
    the step can hit; "fused" (`moe_decode_block`: router, experts and combine in five Triton launches on CUDA, the
    gather form elsewhere) unless MIXLAB_FUSED_DECODE=0. MIXLAB_ENGINE_MOE=sparse|gather|dense|fused overrides
    (sparse on CUDA is `moe_experts`, whose bf16 grouped-GEMM fast path has no host sync either)."""
    forced = os.environ.get("MIXLAB_ENGINE_MOE", "").strip().lower()
    if forced:
        if forced not in MOE_MODES:
            raise MixlabError(f"MIXLAB_ENGINE_MOE={forced!r}{did_you_mean(forced, MOE_MODES)}; choose one of "
                              f"{', '.join(MOE_MODES)}")
        return forced
    if device.type != "cuda":
        return "sparse"
    if fused_decode_enabled():  # the default (MIXLAB_FUSED_DECODE=0: the shape-static torch forms below)
        return "fused"
    return "gather" if rows * top_k < num_experts else "dense"


def _kda(attn, x: torch.Tensor, cache: PagedHybridCache, slots: torch.Tensor | None) -> torch.Tensor:
    """slots None: the rows are slots 0..B-1, so their state is updated in place (CPU eager path)."""
    i = attn.layer_idx
    o = kda_decode_layer(x, attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, cache.conv[i],
                         attn.q_conv1d.weight, attn.k_conv1d.weight, attn.v_conv1d.weight, attn.f_a_proj.weight,
                         attn.f_b_proj.weight, attn.A_log, attn.dt_bias, attn.b_proj.weight, attn.g_a_proj.weight,
                         attn.g_b_proj.weight, cache.state[i], slots, attn.o_norm.weight, attn.o_norm.eps,
                         attn.head_dim**-0.5)
    return attn.o_proj(o)


def _mla(attn, x: torch.Tensor, cache: PagedHybridCache, positions: torch.Tensor, table: torch.Tensor
         ) -> torch.Tensor:
    B = x.shape[0]
    H, rank, rope, nope = attn.num_heads, attn.rank, attn.rope, attn.nope
    q = attn.q_proj(x).view(B, H, attn.q_head_dim)
    kv_lat, k_rot = attn.kv_a_proj_with_mqa(x).split([rank, rope], -1)
    w = attn.kv_b_proj.weight.view(H, nope + attn.v_dim, rank)
    q_nope, q_rot = q.split([nope, rope], -1)
    q_lat = torch.einsum("bhn,hnr->bhr", q_nope, w[:, :nope])
    # Appends the new latent and attends over the row's blocks through the table (in place on CUDA: no gather).
    o_lat = mla_decode_paged(q_lat, q_rot, attn.kv_a_layernorm(kv_lat), k_rot, cache.latent[attn.layer_idx], table,
                             positions, attn.scale)
    o = torch.einsum("bhr,hvr->bhv", o_lat, w[:, nope:])
    return attn.o_proj(o.reshape(B, H * attn.v_dim))


def _moe(block, x: torch.Tensor, mode: str) -> torch.Tensor:
    cfg = block.config
    if mode == "fused":
        se = block.shared_experts
        shared = None if se is None else (se.gate_proj.weight, se.up_proj.weight, se.down_proj.weight)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return moe_decode_block(x, block.gate.weight, block.gate.e_score_correction_bias, block.experts.w1,
                                    block.experts.w3, block.experts.w2, block.top_k, renormalize=cfg.moe_renormalize,
                                    scaling=cfg.routed_scaling_factor, weights_use_bias=cfg.router_weights_use_bias,
                                    activation=cfg.moe_router_activation_func, shared=shared)
    with torch.autocast(device_type=x.device.type, enabled=False):
        logits = F.linear(x.float(), block.gate.weight.float())
    idx, weight = moe_route(logits, block.gate.e_score_correction_bias, block.top_k, renormalize=cfg.moe_renormalize,
                            scaling=cfg.routed_scaling_factor, weights_use_bias=cfg.router_weights_use_bias,
                            activation=cfg.moe_router_activation_func)
    ex = block.experts
    y = moe_decode(x, ex.w1, ex.w3, ex.w2, idx, weight, mode)
    if block.shared_experts is not None:
        y = y + block.shared_experts(x)
    return y


def decode_step(model, cache: PagedHybridCache, tokens: torch.Tensor, slots: torch.Tensor | None,
                positions: torch.Tensor, table: torch.Tensor, moe: str | None = None) -> torch.Tensor:
    """Feed one token per row; returns next-token logits [B, V] in fp32 and updates the cache in place.

    tokens, slots, positions [B] int64: the token, its sequence's slot, its position (= tokens already cached);
    slots None means row b is slot b (then the KDA state is updated in place);
    table [B, nb] int64: the sequence's first nb blocks (scratch-padded), nb · block_size > every position."""
    inner = model.model
    cfg = model.config
    mode = moe or moe_mode(tokens.device, tokens.shape[0], cfg.num_experts_per_token, cfg.num_experts)
    h = inner.embed_tokens(tokens)
    for layer in inner.layers:
        x = layer.input_layernorm(h)
        if layer.is_kda:
            h = h + _kda(layer.self_attn, x, cache, slots)
        else:
            h = h + _mla(layer.self_attn, x, cache, positions, table)
        x = layer.post_attention_layernorm(h)
        h = h + (_moe(layer.block_sparse_moe, x, mode) if layer.is_moe else layer.mlp(x))
    h = inner.norm(h)
    return model.lm_head(h).float()

