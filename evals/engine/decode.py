"""One decode step of the Kimi Linear hybrid over the engine's paged cache, with static shapes (CUDA-graph safe).

This is the model's own math for one new token per sequence (`model/modeling.py`, the layers' `has_past, T == 1`
branch) rewritten for a batch whose sequences live in cache *slots* (KDA) and *blocks* (MLA) rather than in the
rows of a `KimiLinearCache`. It calls the same `mixlab.kernels` ops and the model's own parameters (never copies
of them, so in-place weight updates, e.g. between GRPO steps, are seen at once). Its oracle is the model's full
forward: tests check greedy tokens against recomputation from scratch and against transformers `generate`.

Every tensor shape depends only on (batch rows, gathered MLA blocks), and nothing synchronises with the host, so
a step can be captured once per shape as a CUDA graph. Padding rows point at the cache's scratch slot/block.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from mixlab.kernels import gated_rms_norm, kda_gate, l2norm, moe_experts, moe_route, recurrent_kda_step
from mixlab.kernels.kda_common import fp32
from mixlab.model.cache import PagedHybridCache


def moe_decode(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, idx: torch.Tensor,
               weight: torch.Tensor, mode: str) -> torch.Tensor:
    """Σ_k weight·Expert(x) like `kernels.moe_experts`, without its host sync (bincount → per-expert loop).

    mode "gather": gathers the N·k chosen experts' weights and runs one batched GEMM per matrix (cheap while
    N·k < E); "dense": runs every expert on every token and weights the results (reads each expert once: the
    better choice once most experts are hit); both are shape-static and sync-free. "sparse":
    `kernels.moe_experts` itself (host-synchronising; eager CPU path)."""
    if mode == "sparse":
        return moe_experts(x, w1, w3, w2, idx, weight)
    N, D = x.shape
    k = idx.shape[1]
    if mode == "gather":
        flat = idx.reshape(-1)
        xs = x.repeat_interleave(k, 0).unsqueeze(-1)  # [Nk, D, 1]
        a = torch.bmm(w1.index_select(0, flat), xs)
        b = torch.bmm(w3.index_select(0, flat), xs)
        y = torch.bmm(w2.index_select(0, flat), F.silu(a) * b).squeeze(-1)  # [Nk, D]
        return (y.float().view(N, k, D) * weight.float().unsqueeze(-1)).sum(1).to(x.dtype)
    E = w1.shape[0]
    xe = x.unsqueeze(0).expand(E, N, D)
    h = F.silu(torch.bmm(xe, w1.transpose(1, 2))) * torch.bmm(xe, w3.transpose(1, 2))  # [E, N, I]
    y = torch.bmm(h, w2.transpose(1, 2))  # [E, N, D]
    dense = torch.zeros(N, E, dtype=torch.float32, device=x.device).scatter(1, idx, weight.float())
    return torch.einsum("ne,end->nd", dense, y.float()).to(x.dtype)


def moe_mode(device: torch.device, rows: int, top_k: int, num_experts: int) -> str:
    """CPU: the kernel op (its host sync is free there). CUDA: a shape-static form, chosen by how many experts
    the step can hit. MIXLAB_ENGINE_MOE=sparse|gather|dense overrides (sparse on CUDA is `moe_experts`, whose bf16
    grouped-GEMM fast path has no host sync either)."""
    forced = os.environ.get("MIXLAB_ENGINE_MOE", "").strip().lower()
    if forced in ("sparse", "gather", "dense"):
        return forced
    if device.type != "cuda":
        return "sparse"
    return "gather" if rows * top_k < num_experts else "dense"


def kda_step_inplace(q, k, v, g, beta, state: torch.Tensor, scale: float) -> torch.Tensor:
    """One KDA token per row with the fp32 state [B, H, K, V] updated in place (`recurrent_kda_step`'s math for
    T = 1 and L2-normalised q/k, in 2 read-write and 2 read passes over the state instead of ~6 plus copies).
    q, k, g [B, H, K], v [B, H, V], beta [B, H]; returns o [B, H, V] fp32."""
    B, H, K, V = state.shape
    q, k, v, g, beta = (fp32(t) for t in (q, k, v, g, beta))
    q, k = l2norm(q), l2norm(k)
    state.mul_(g.exp().unsqueeze(-1))
    flat = state.view(B * H, K, V)
    pred = torch.bmm(k.reshape(B * H, 1, K), flat)  # [BH, 1, V]
    delta = (v.reshape(B * H, 1, V) - pred) * beta.reshape(B * H, 1, 1)
    flat.baddbmm_(k.reshape(B * H, K, 1), delta)
    return torch.bmm((q * scale).reshape(B * H, 1, K), flat).view(B, H, V)


def _kda(attn, x: torch.Tensor, cache: PagedHybridCache, slots: torch.Tensor | None) -> torch.Tensor:
    """slots None: the rows are slots 0..B-1 in order, so their state is updated in place (CPU eager path)."""
    B = x.shape[0]
    H, K = attn.num_heads, attn.head_dim
    i = attn.layer_idx
    conv_pool, state_pool = cache.conv[i], cache.state[i]
    window = conv_pool[:B] if slots is None else conv_pool.index_select(0, slots)  # [B, 3, P, W-1]
    # q, k and v share one conv pass: [B, 3, P, W] windows ‖ new inputs, weights [3, P, W] (fp32, as short_conv).
    xin = torch.stack([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], 1)  # [B, 3, P]
    ext = torch.cat([window.float(), xin.float().unsqueeze(-1)], -1)
    w = torch.stack([attn.q_conv1d.weight[:, 0], attn.k_conv1d.weight[:, 0], attn.v_conv1d.weight[:, 0]]).float()
    y = F.silu((ext * w).sum(-1)).to(x.dtype)  # [B, 3, P]
    if slots is None:
        conv_pool[:B].copy_(ext[..., 1:])
    else:
        conv_pool.index_copy_(0, slots, ext[..., 1:].to(conv_pool.dtype))
    outs = [y[:, j].reshape(B, 1, H, K) for j in range(3)]
    q, k, v = outs
    f = attn.f_b_proj(attn.f_a_proj(x))
    beta_logits = attn.b_proj(x)
    with torch.autocast(device_type=x.device.type, enabled=False):
        g = kda_gate(f, attn.A_log, attn.dt_bias).view(B, 1, H, K)
        beta = torch.sigmoid(beta_logits.float()).view(B, 1, H)
        if slots is None:
            o = kda_step_inplace(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], state_pool[:B], K**-0.5)
            o = o.to(v.dtype).unsqueeze(1)
        else:
            o, new_state = recurrent_kda_step(q, k, v, g, beta, state_pool.index_select(0, slots), scale=K**-0.5,
                                              use_qk_l2norm=True)
            state_pool.index_copy_(0, slots, new_state.float())
    gate = attn.g_b_proj(attn.g_a_proj(x)).view(B, 1, H, K)
    o = gated_rms_norm(o, attn.o_norm.weight, gate, attn.o_norm.eps, activation="sigmoid")
    return attn.o_proj(o.reshape(B, H * K))


def _mla(attn, x: torch.Tensor, cache: PagedHybridCache, positions: torch.Tensor, table: torch.Tensor
         ) -> torch.Tensor:
    B = x.shape[0]
    H, rank, rope, nope = attn.num_heads, attn.rank, attn.rope, attn.nope
    pool = cache.latent[attn.layer_idx]
    bs, C = pool.shape[1], pool.shape[2]
    q = attn.q_proj(x).view(B, H, attn.q_head_dim)
    kv_lat, k_rot = attn.kv_a_proj_with_mqa(x).split([rank, rope], -1)
    latent = torch.cat([attn.kv_a_layernorm(kv_lat), k_rot], -1)  # [B, C]
    block = table.gather(1, (positions // bs).unsqueeze(1)).squeeze(1)
    pool.view(-1, C).index_copy_(0, block * bs + positions % bs, latent.to(pool.dtype))
    keys = pool.index_select(0, table.reshape(-1)).view(B, -1, C)  # [B, L, C] this row's blocks in order
    L = keys.shape[1]
    w = attn.kv_b_proj.weight.view(H, nope + attn.v_dim, rank)
    q_nope, q_rot = q.split([nope, rope], -1)
    q_lat = torch.einsum("bhn,hnr->bhr", q_nope, w[:, :nope])
    scores = torch.bmm(torch.cat([q_lat, q_rot], -1), keys.transpose(1, 2)).float() * attn.scale  # [B, H, L]
    allowed = torch.arange(L, device=x.device)[None, :] <= positions[:, None]
    probs = scores.masked_fill(~allowed[:, None, :], float("-inf")).softmax(-1).to(keys.dtype)
    o_lat = torch.bmm(probs, keys[..., :rank])  # [B, H, rank]
    o = torch.einsum("bhr,hvr->bhv", o_lat, w[:, nope:])
    return attn.o_proj(o.reshape(B, H * attn.v_dim))


def _moe(block, x: torch.Tensor, mode: str) -> torch.Tensor:
    cfg = block.config
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

