"""Kimi Linear hybrid decoder (KDA + NoPE MLA, 3:1; sparse MoE FFN) as a trainable transformers model.

Module and parameter names follow the official HF checkpoint (reference §2) so that the only difference between
the in-memory and the saved state dict is the expert layout: here experts are stacked ([E, I, D]) for grouped
compute, on disk they are `experts.{e}.w1/w2/w3.weight` — see `state_dict_adapter.py`, the one place that
converts. All math goes through `mixlab.kernels` ops (pure torch on CPU, fla/Triton on GPU); this module never
calls Triton directly.

fp32 islands: `A_log`, `dt_bias`, `e_score_correction_bias`, the forget gate g, beta, the router logits and the KDA
recurrent state stay fp32, also after `model.to(torch.bfloat16)` (see `_Fp32ParamsMixin`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from mixlab.errors import MixlabError
from mixlab.kernels import (
    chunk_kda,
    expert_counts,
    gated_rms_norm,
    joint_linear,
    kda_gate,
    moe_experts,
    moe_route,
    recurrent_kda_step,
    rms_norm,
    short_conv,
)
from mixlab.kernels.dispatch import env_flag

from .cache import KimiLinearCache
from .config import KimiLinearConfig
from .layout import SeqLayout, build_layout
from .state_dict_adapter import diff_inventory, is_official, official_shapes, stacked_target

FP32_PARAM_NAMES = ("A_log", "dt_bias", "e_score_correction_bias")


class _Fp32ParamsMixin:
    """Re-casts the listed parameters to fp32 after every `.to()` / `.half()` / `.bfloat16()`."""

    _fp32_names: tuple[str, ...] = ()

    def _apply(self, fn, recurse=True):  # noqa: D401 - torch hook
        super()._apply(fn, recurse)  # type: ignore[misc]
        for name in self._fp32_names:
            p = getattr(self, name, None)
            if p is not None and p.is_floating_point() and p.dtype != torch.float32:
                p.data = p.data.float()
        return self


def _project(x: torch.Tensor, *linears: nn.Module) -> list[torch.Tensor]:
    """Each Linear applied to x; through `joint_linear` (one GEMM on the fast path) when all are plain bias-free
    nn.Linear without hooks: it reads their weights directly, which would bypass an adapter's or a hook's change."""
    if all(type(m) is nn.Linear and m.bias is None and not (m._forward_hooks or m._forward_pre_hooks) for m in linears):
        return joint_linear(x, [m.weight for m in linears])
    return [m(x) for m in linears]


class KimiRMSNorm(nn.Module):
    """`weight * x̂` with x̂ computed in fp32 (KimiRMSNorm)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class KimiGatedNormWeight(nn.Module):
    """Holds `o_norm.weight` [head_dim]; the op is `gated_rms_norm` (RMSNorm · weight · sigmoid(gate))."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps


# ------------------------------------------------------------------------------------------------------- KDA
class KimiDeltaAttention(_Fp32ParamsMixin, nn.Module):
    _fp32_names = ("A_log", "dt_bias")

    def __init__(self, config: KimiLinearConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        D, H, K, W = config.hidden_size, config.kda_num_heads, config.kda_head_dim, config.conv_kernel_size
        P = H * K
        self.num_heads, self.head_dim, self.conv_size = H, K, W
        self.q_proj = nn.Linear(D, P, bias=False)
        self.k_proj = nn.Linear(D, P, bias=False)
        self.v_proj = nn.Linear(D, P, bias=False)
        # Depthwise causal conv weights [P, 1, W] (fla ShortConvolution = nn.Conv1d(groups=P, bias=False)).
        self.q_conv1d = nn.Conv1d(P, P, W, groups=P, bias=False)
        self.k_conv1d = nn.Conv1d(P, P, W, groups=P, bias=False)
        self.v_conv1d = nn.Conv1d(P, P, W, groups=P, bias=False)
        self.f_a_proj = nn.Linear(D, K, bias=False)
        self.f_b_proj = nn.Linear(K, P, bias=False)
        self.A_log = nn.Parameter(torch.empty(1, 1, H, 1, dtype=torch.float32))
        self.dt_bias = nn.Parameter(torch.empty(P, dtype=torch.float32))
        self.b_proj = nn.Linear(D, H, bias=False)
        self.g_a_proj = nn.Linear(D, K, bias=False)
        self.g_b_proj = nn.Linear(K, P, bias=False)
        self.o_norm = KimiGatedNormWeight(K, config.rms_norm_eps)
        self.o_proj = nn.Linear(P, D, bias=False)

    def forward(self, x: torch.Tensor, layout: SeqLayout) -> torch.Tensor:
        B, T, _ = x.shape
        H, K = self.num_heads, self.head_dim
        cache = layout.cache
        store = cache is not None
        conv_prev = cache.conv_states[self.layer_idx] if layout.has_past else (None, None, None)
        state = cache.recurrent_states[self.layer_idx] if layout.has_past else None
        cu = layout.cu_seqlens

        # the six projections of x: one GEMM on the fast path (the short conv reads its column slices in place)
        q_in, k_in, v_in, f_a, beta_logits, g_a = _project(x, self.q_proj, self.k_proj, self.v_proj, self.f_a_proj,
                                                            self.b_proj, self.g_a_proj)
        convs = []
        outs = []
        for y_in, conv, prev in ((q_in, self.q_conv1d, conv_prev[0]), (k_in, self.k_conv1d, conv_prev[1]),
                                 (v_in, self.v_conv1d, conv_prev[2])):
            y, c = short_conv(y_in, conv.weight, cache=prev, cu_seqlens=cu, activation="silu",
                              output_final_state=store)
            outs.append(y.view(B, T, H, K))
            convs.append(c)
        q, k, v = outs
        f = self.f_b_proj(f_a)
        with torch.autocast(device_type=x.device.type, enabled=False):
            g = kda_gate(f, self.A_log, self.dt_bias)  # fp32 [B, T, H, K]
            beta = torch.sigmoid(beta_logits.float())  # fp32 [B, T, H]
        scale = K**-0.5
        # The KDA core stays fp32 under a bf16 autocast too (the ops upcast their inputs themselves).
        with torch.autocast(device_type=x.device.type, enabled=False):
            if layout.has_past and T == 1:
                o, new_state = recurrent_kda_step(q, k, v, g, beta, state, scale=scale, use_qk_l2norm=True)
            else:
                o, new_state = chunk_kda(q, k, v, g, beta, scale=scale, initial_state=state,
                                         output_final_state=store, cu_seqlens=cu, use_qk_l2norm=True)
        if store:
            cache.update_kda(self.layer_idx, tuple(convs), new_state)
        gate = self.g_b_proj(g_a).view(B, T, H, K)
        o = gated_rms_norm(o, self.o_norm.weight, gate, self.o_norm.eps, activation="sigmoid")
        return self.o_proj(o.reshape(B, T, H * K))


# ------------------------------------------------------------------------------------------------------- MLA
class KimiMLAAttention(nn.Module):
    """NoPE multi-head latent attention. The 'rope' slice exists in the weights but is never rotated."""

    def __init__(self, config: KimiLinearConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        D = config.hidden_size
        self.num_heads = H = config.num_attention_heads
        self.nope, self.rope, self.v_dim = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        self.rank = config.kv_lora_rank
        self.q_head_dim = self.nope + self.rope
        self.scale = self.q_head_dim**-0.5
        self.q_proj = nn.Linear(D, H * self.q_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(D, self.rank + self.rope, bias=False)
        self.kv_a_layernorm = KimiRMSNorm(self.rank, config.rms_norm_eps)
        self.kv_b_proj = nn.Linear(self.rank, H * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(H * self.v_dim, D, bias=False)

    def forward(self, x: torch.Tensor, layout: SeqLayout) -> torch.Tensor:
        B, T, _ = x.shape
        H = self.num_heads
        q = self.q_proj(x).view(B, T, H, self.q_head_dim)
        kv_lat, k_rot = self.kv_a_proj_with_mqa(x).split([self.rank, self.rope], -1)
        kv_lat = self.kv_a_layernorm(kv_lat)
        cache = layout.cache
        if cache is not None:
            latent = torch.cat([kv_lat, k_rot], -1)
            if layout.varlen:  # cache rows keep the padded [B, T] layout; the key mask hides the padding
                latent = layout.unpack(latent)
            all_latent = cache.append_latent(self.layer_idx, latent)
            if layout.has_past:
                return self._absorbed(q, all_latent, cache.key_mask, T)
        return self._expanded(q, kv_lat, k_rot, layout)

    def _expanded(self, q, kv_lat, k_rot, layout: SeqLayout) -> torch.Tensor:
        """Prefill / training: expand the latent to per-head K and V, then SDPA (causal, block-diagonal if packed)."""
        B, T, H, _ = q.shape
        kv = self.kv_b_proj(kv_lat).view(B, T, H, self.nope + self.v_dim)
        k_nope, v = kv.split([self.nope, self.v_dim], -1)
        k = torch.cat([k_nope, k_rot.unsqueeze(2).expand(B, T, H, self.rope)], -1)
        if layout.varlen:  # one right-padded row per sequence: causal attention never reaches the padding
            q, k, v = (layout.to_padded_seqs(t) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=q.shape[1] > 1, scale=self.scale).transpose(1, 2)
        if layout.varlen:
            o = layout.from_padded_seqs(o)
        return self.o_proj(o.reshape(B, T, H * self.v_dim))

    def _absorbed(self, q, latent, key_mask, T_new: int) -> torch.Tensor:
        """Decode from the compressed cache: kv_b_proj is folded into the query (K side) and the output (V side)."""
        B, L, _ = latent.shape
        H = self.num_heads
        c_kv, k_rot = latent.split([self.rank, self.rope], -1)
        w = self.kv_b_proj.weight.view(H, self.nope + self.v_dim, self.rank)
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope :]
        q_nope, q_rot = q.split([self.nope, self.rope], -1)
        q_lat = torch.einsum("bthn,hnr->bthr", q_nope, w_uk)
        scores = torch.einsum("bthr,blr->bhtl", q_lat, c_kv) + torch.einsum("bthd,bld->bhtl", q_rot, k_rot)
        scores = scores.float() * self.scale
        past = L - T_new
        allowed = key_mask[:, None, None, :] & (
            torch.arange(L, device=q.device)[None, :] <= past + torch.arange(T_new, device=q.device)[:, None]
        )
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1).to(c_kv.dtype)
        o_lat = torch.einsum("bhtl,blr->bthr", probs, c_kv)
        o = torch.einsum("bthr,hvr->bthv", o_lat, w_uv)
        return self.o_proj(o.reshape(B, T_new, H * self.v_dim))


# ------------------------------------------------------------------------------------------------------- FFN
class KimiMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = _project(x, self.gate_proj, self.up_proj)
        return self.down_proj(F.silu(gate) * up)


class KimiMoEGate(_Fp32ParamsMixin, nn.Module):
    """Router weight [E, D] and the aux-loss-free balancing bias [E] (fp32, not trained by the optimizer)."""

    _fp32_names = ("e_score_correction_bias",)

    def __init__(self, config: KimiLinearConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.e_score_correction_bias = nn.Parameter(
            torch.zeros(config.num_experts, dtype=torch.float32), requires_grad=False
        )


class KimiStackedExperts(nn.Module):
    """All routed experts of a layer stacked for grouped compute: w1/w3 [E, I, D] (gate/up), w2 [E, D, I] (down).

    On disk these are `experts.{e}.w1.weight` etc. (see state_dict_adapter)."""

    def __init__(self, config: KimiLinearConfig) -> None:
        super().__init__()
        E, I, D = config.num_experts, config.moe_intermediate_size, config.hidden_size
        self.num_experts = E
        self.w1 = nn.Parameter(torch.empty(E, I, D))
        self.w3 = nn.Parameter(torch.empty(E, I, D))
        self.w2 = nn.Parameter(torch.empty(E, D, I))


class _AttachAuxLoss(torch.autograd.Function):
    """Identity on y whose backward also sends d(loss)/d(aux) = 1 into `aux` (Megatron's MoEAuxLossAutoScaler).

    The aux loss then trains the router however the caller builds its loss (our forward, or TRL's fused LM head,
    which never sees the model's own loss)."""

    @staticmethod
    def forward(ctx, y, aux):
        ctx.save_for_backward(aux)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):
        (aux,) = ctx.saved_tensors
        return grad, torch.ones_like(aux)


def sequence_aux_loss(logits: torch.Tensor, topk_idx: torch.Tensor, groups: torch.Tensor, activation: str,
                      top_k: int, num_groups: int | None = None) -> torch.Tensor:
    """DeepSeek-V3 sequence-wise balance loss, mean over sequences: Σ_i f_i P_i with
    f_i = E/(k·T_s) · #tokens of s routed to i,  P_i = mean_t s'_{t,i}  (s' = scores normalised per token).
    With `num_groups` given (the layout knows it) nothing here syncs with the host."""
    N, E = logits.shape
    scores = torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, -1)
    probs = scores / (scores.sum(-1, keepdim=True) + 1e-20)
    G = int(groups.max()) + 1 if num_groups is None else num_groups
    tokens = torch.zeros(G, device=logits.device).index_add(0, groups, torch.ones(N, device=logits.device))
    tokens = tokens.clamp(min=1)[:, None]
    sel = torch.zeros(N, E, device=logits.device).scatter_(1, topk_idx, 1.0)
    f = torch.zeros(G, E, device=logits.device).index_add(0, groups, sel) * (E / top_k) / tokens
    P = torch.zeros(G, E, device=logits.device).index_add(0, groups, probs) / tokens
    return (f * P).sum(-1).mean()


class KimiSparseMoeBlock(nn.Module):
    def __init__(self, config: KimiLinearConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.top_k = config.num_experts_per_token
        # Cast routed-expert inputs and weights to the autocast dtype on CUDA (fp32 master weights then take the
        # grouped MoE path). On by default (the recipes' graph step needs it); MIXLAB_MOE_AUTOCAST=0 turns it off.
        # It acts only under CUDA autocast: on CPU or without autocast nothing is cast (`routed_experts`).
        self.autocast_experts = env_flag("MIXLAB_MOE_AUTOCAST", True)
        self.gate = KimiMoEGate(config)
        self.experts = KimiStackedExperts(config)
        self.shared_experts = (
            KimiMLP(config.hidden_size, config.moe_intermediate_size * config.num_shared_experts)
            if config.num_shared_experts
            else None
        )

    def routed_experts(self, flat: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The weighted sum of each token's routed experts (expert parallelism overrides only this)."""
        w1, w3, w2 = self.experts.w1, self.experts.w3, self.experts.w2
        if self.autocast_experts and flat.is_cuda and torch.is_autocast_enabled("cuda"):
            # Autocast does not reach the grouped GEMMs: cast input and weights as it casts a Linear's, so fp32 master
            # weights under bf16 autocast (how recipes train on a GPU) take the grouped fast path instead of the fp32
            # per-expert reference. (On CPU the reference runs either way, in fp32.)
            dt = torch.get_autocast_dtype("cuda")
            flat, w1, w3, w2 = (t.to(dt) for t in (flat, w1, w3, w2))
        return moe_experts(flat, w1, w3, w2, idx, weight)

    def forward(self, x: torch.Tensor, layout: SeqLayout):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        cfg = self.config
        with torch.autocast(device_type=x.device.type, enabled=False):  # router in fp32, as the HF gate
            logits = F.linear(flat.float(), self.gate.weight.float())
        idx, weight = moe_route(
            logits, self.gate.e_score_correction_bias, self.top_k, renormalize=cfg.moe_renormalize,
            scaling=cfg.routed_scaling_factor, weights_use_bias=cfg.router_weights_use_bias,
            activation=cfg.moe_router_activation_func,
        )
        y = self.routed_experts(flat, idx, weight)
        if self.shared_experts is not None:
            y = y + self.shared_experts(flat)
        E = self.experts.num_experts
        if layout.count_mask is None:
            counts = expert_counts(idx.detach(), E)  # device-side: no host sync
        else:  # tokens outside the mask (right padding kept dense) go to a spare bin that is dropped
            counts = expert_counts(torch.where(layout.count_mask[:, None], idx.detach(), E), E + 1)[:E]
        aux = None
        if self.training and cfg.seq_aux_loss_coef > 0 and torch.is_grad_enabled():
            if layout.count_mask is not None:
                raise MixlabError("count_mask (padding kept dense) cannot be combined with seq_aux_loss_coef > 0")
            aux = sequence_aux_loss(logits, idx, layout.group_ids(x.device), cfg.moe_router_activation_func,
                                    self.top_k, num_groups=layout.num_seqs)
            n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
            y = _AttachAuxLoss.apply(y, aux * (cfg.seq_aux_loss_coef / n_moe))
        return y.view(shape), counts, aux


# ------------------------------------------------------------------------------------------------------- blocks
class KimiDecoderLayer(nn.Module):
    def __init__(self, config: KimiLinearConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.is_kda = config.is_kda_layer(layer_idx)
        self.is_moe = config.is_moe_layer(layer_idx)
        self.self_attn = KimiDeltaAttention(config, layer_idx) if self.is_kda else KimiMLAAttention(config, layer_idx)
        if self.is_moe:
            self.block_sparse_moe = KimiSparseMoeBlock(config, layer_idx)
        else:
            self.mlp = KimiMLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = KimiRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = KimiRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, h: torch.Tensor, layout: SeqLayout):
        h = h + self.self_attn(self.input_layernorm(h), layout)
        x = self.post_attention_layernorm(h)
        if self.is_moe:
            y, counts, aux = self.block_sparse_moe(x, layout)
        else:
            y, counts, aux = self.mlp(x), None, None
        return h + y, counts, aux


class KimiLinearPreTrainedModel(PreTrainedModel):
    config_class = KimiLinearConfig
    config: KimiLinearConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    main_input_name = "input_ids"
    _no_split_modules = ["KimiDecoderLayer"]
    _supports_sdpa = True
    _is_stateful = True
    _keep_in_fp32_modules = list(FP32_PARAM_NAMES)
    _keep_in_fp32_modules_strict = list(FP32_PARAM_NAMES)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.Conv1d):
            bound = 1.0 / math.sqrt(module.weight.shape[1] * module.weight.shape[2])  # nn.Conv1d default
            module.weight.uniform_(-bound, bound)
        elif isinstance(module, (KimiRMSNorm, KimiGatedNormWeight)):
            module.weight.fill_(1.0)
        elif isinstance(module, KimiDeltaAttention):
            # fla's KDA init: A = U(1, 16), dt ~ LogUniform[1e-3, 1e-1], dt_bias = softplus⁻¹(dt).
            module.A_log.copy_(torch.empty_like(module.A_log).uniform_(1.0, 16.0).log())
            dt = torch.exp(torch.empty_like(module.dt_bias).uniform_(math.log(1e-3), math.log(1e-1))).clamp(min=1e-4)
            module.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        elif isinstance(module, KimiMoEGate):
            module.weight.normal_(0.0, std)
            module.e_score_correction_bias.zero_()
        elif isinstance(module, KimiStackedExperts):
            for w in (module.w1, module.w2, module.w3):
                w.normal_(0.0, std)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model builds its own KimiLinearCache


class KimiLinearModel(KimiLinearPreTrainedModel):
    def __init__(self, config: KimiLinearConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(KimiDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = KimiRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        # Expert-load accounting: int64 [n_moe, E] device tensors, counts since the last reset (logging) and since
        # the last bias update. One in-place add per forward (no host sync, no per-layer Python state that
        # torch.compile would specialise on); None until the first forward.
        self._moe_layer_ids = [i for i in range(config.num_hidden_layers) if config.is_moe_layer(i)]
        self._load_buf: torch.Tensor | None = None
        self._bias_buf: torch.Tensor | None = None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: KimiLinearCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cu_seqlens: torch.Tensor | None = None,
        cache: KimiLinearCache | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        count_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> "KimiModelOutput":
        """`count_mask` [B, T] bool: the tokens the expert-load statistics count. The CUDA-graph training step
        (recipes/graph_step.py) keeps right-padded rows dense [B, T] instead of packing them (every layer is causal,
        so padding after a row's last real token never reaches a real one, and its labels are -100) and passes the
        padding mask here, so padding is computed but never counted."""
        if (input_ids is None) == (inputs_embeds is None):
            raise MixlabError("pass exactly one of input_ids or inputs_embeds")
        cache = cache if cache is not None else past_key_values
        if cache is not None and not isinstance(cache, KimiLinearCache):
            if hasattr(cache, "get_seq_length") and cache.get_seq_length() == 0:
                cache = None  # an empty foreign cache (e.g. a DynamicCache made by a caller): use ours
                use_cache = True
            else:
                raise MixlabError(f"past_key_values must be a KimiLinearCache, got {type(cache).__name__}")
        cache_optional = use_cache is None and cache is None
        if use_cache is None:
            use_cache = bool(self.config.use_cache) and not self.training
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        B, T, _ = inputs_embeds.shape
        if cache is None and use_cache:
            cache = KimiLinearCache(self.config, B)
        layout = build_layout(B, T, inputs_embeds.device, attention_mask, position_ids, cu_seqlens, cache,
                              cache_optional=cache_optional)
        cache = layout.cache
        if count_mask is not None:
            if layout.varlen or count_mask.shape != (B, T):
                raise MixlabError(f"count_mask must be [{B}, {T}] for a dense batch (no padding mask, no packing)")
            layout.count_mask = count_mask.reshape(-1).bool()

        h = layout.pack(inputs_embeds)
        all_hidden = [] if output_hidden_states else None
        aux_losses = []
        layer_counts = []
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        for layer in self.layers:
            if all_hidden is not None:
                all_hidden.append(layout.unpack(h))
            if checkpointing:
                ckpt = getattr(self, "_gradient_checkpointing_func", None) or _default_checkpoint
                h, counts, aux = ckpt(layer.__call__, h, layout)
            else:
                h, counts, aux = layer(h, layout)
            if counts is not None:
                layer_counts.append(counts)
            if aux is not None:
                aux_losses.append(aux)
        if layer_counts:
            self._record_load(torch.stack(layer_counts))
        h = self.norm(h)
        h = layout.unpack(h)
        if all_hidden is not None:
            all_hidden.append(h)
        if cache is not None:
            cache.end_forward(T)
        return KimiModelOutput(
            last_hidden_state=h, **{_CACHE_FIELD: cache if use_cache else None},
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            aux_loss=torch.stack(aux_losses).mean() if aux_losses else None,
        )

    # ----------------------------------------------------------------------------------------------- MoE load
    @torch.no_grad()
    def _record_load(self, counts: torch.Tensor) -> None:
        """counts: int64 [n_moe, E], every MoE layer of one forward, in layer order."""
        if self._load_buf is None or self._load_buf.device != counts.device:
            self._load_buf = torch.zeros_like(counts)
        self._load_buf.add_(counts)
        if self.training:
            if self._bias_buf is None or self._bias_buf.device != counts.device:
                self._bias_buf = torch.zeros_like(counts)
            self._bias_buf.add_(counts)

    def _as_dict(self, buf: torch.Tensor | None) -> dict[int, torch.Tensor]:
        return {} if buf is None else dict(zip(self._moe_layer_ids, buf.unbind(0)))

    @property
    def _load_counts(self) -> dict[int, torch.Tensor]:
        """layer index -> int64 counts per expert since the last reset ({} before any forward)."""
        return self._as_dict(self._load_buf)

    def moe_blocks(self) -> dict[int, KimiSparseMoeBlock]:
        return {layer.layer_idx: layer.block_sparse_moe for layer in self.layers if layer.is_moe}

    def expert_load(self, reset: bool = False) -> dict[int, torch.Tensor]:
        """Per MoE layer: fraction of routed token-slots each expert received since the last reset (sums to 1)."""
        loads = {}
        if self._load_buf is not None:
            c = self._load_buf.double().cpu()  # one transfer for all layers
            if bool(c.any()):  # all zero: nothing routed since the last reset
                loads = dict(zip(self._moe_layer_ids, (c / c.sum(-1, keepdim=True).clamp(min=1)).float().unbind(0)))
        if reset:
            self.reset_expert_load()
        return loads

    def reset_expert_load(self) -> None:
        if self._load_buf is not None:
            self._load_buf.zero_()  # in place: a captured CUDA-graph step keeps adding into this very tensor

    @torch.no_grad()
    def update_router_bias(self, rate: float | None = None) -> dict[int, float]:
        """Aux-loss-free balancing (DeepSeek-V3): bias_i += rate · sign(mean load − load_i), from the loads of the
        training forwards since the previous call. No-op in eval mode or with rate 0 (the default, frozen).
        Returns the max |load/mean − 1| per layer before the update (an imbalance measure)."""
        rate = self.config.router_bias_update_rate if rate is None else rate
        counts = {}
        if self._bias_buf is not None and bool(self._bias_buf.any()):
            counts = {i: c.float() for i, c in self._as_dict(self._bias_buf).items()}  # copies
        if self._bias_buf is not None:
            self._bias_buf.zero_()  # in place, as reset_expert_load
        if not self.training or rate <= 0:
            return {}
        blocks = self.moe_blocks()
        if torch.distributed.is_available() and torch.distributed.is_initialized() and counts:
            # Every rank must apply the same update: balance on the global load (as DeepSeek-V3 does).
            keys = sorted(counts)
            stacked = torch.stack([counts[i] for i in keys]).to(blocks[keys[0]].gate.e_score_correction_bias.device)
            torch.distributed.all_reduce(stacked)
            counts = dict(zip(keys, stacked))
        imbalance = {}
        for i, c in counts.items():
            bias = blocks[i].gate.e_score_correction_bias
            c = c.to(bias.device)
            mean = c.mean()
            bias.add_(rate * torch.sign(mean - c))
            imbalance[i] = float((c / mean.clamp(min=1e-9) - 1).abs().max())
        return imbalance


def _default_checkpoint(fn, *args):
    from torch.utils.checkpoint import checkpoint

    return checkpoint(fn, *args, use_reentrant=False)


class KimiLinearForCausalLM(KimiLinearPreTrainedModel, GenerationMixin):
    _tied_weights_keys: list[str] = []

    def __init__(self, config: KimiLinearConfig) -> None:
        super().__init__(config)
        self.model = KimiLinearModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        if getattr(self.config, "_attn_implementation", None) is None:
            self.config._attn_implementation = "sdpa"

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def new_cache(self, batch_size: int | None = None) -> KimiLinearCache:
        return KimiLinearCache(self.config, batch_size)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: KimiLinearCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        cu_seqlens: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: KimiLinearCache | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        count_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache,
            cu_seqlens=cu_seqlens, output_hidden_states=output_hidden_states, count_mask=count_mask,
        )
        h = out.last_hidden_state
        if isinstance(logits_to_keep, int):
            h_keep = h[:, -logits_to_keep:] if logits_to_keep > 0 else h
        else:
            h_keep = h[:, logits_to_keep]
        logits = self.lm_head(h_keep)
        loss = None
        if labels is not None:
            if logits_to_keep:
                logits_all = self.lm_head(h)
            else:
                logits_all = logits
            loss = causal_lm_loss(logits_all, labels, num_items_in_batch)
            if out.aux_loss is not None:
                # The gradient of the aux loss is already attached inside the MoE blocks (_AttachAuxLoss);
                # add its value here for reporting only, so it is not counted twice.
                loss = loss + (self.config.seq_aux_loss_coef * out.aux_loss).detach()
        return KimiCausalLMOutput(
            loss=loss, logits=logits, **{_CACHE_FIELD: _output_cache(out)}, hidden_states=out.hidden_states,
            aux_loss=out.aux_loss,
        )

    # ----------------------------------------------------------------------------------------------- MoE hooks
    def expert_load(self, reset: bool = False) -> dict[int, torch.Tensor]:
        return self.model.expert_load(reset)

    def reset_expert_load(self) -> None:
        self.model.reset_expert_load()

    def expert_load_rows(self, reset: bool = False) -> list[tuple[int, int, float, float]]:
        """(layer, expert, load fraction, router bias) rows for `Store.log_expert_load`."""
        blocks = self.model.moe_blocks()
        rows = []
        for layer, load in self.expert_load(reset).items():
            bias = blocks[layer].gate.e_score_correction_bias.detach().float().cpu()
            rows.extend((layer, e, float(load[e]), float(bias[e])) for e in range(load.numel()))
        return rows

    def update_router_bias(self, rate: float | None = None) -> dict[int, float]:
        return self.model.update_router_bias(rate)

    # ----------------------------------------------------------------------------------------------- checkpoints
    def save_pretrained(self, save_directory, *args, **kwargs):  # noqa: D102 - documented in checkpoint.py
        from .checkpoint import save_official  # checkpoint.py imports this module: a top-level import is a cycle

        return save_official(self, save_directory, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):  # noqa: D102
        from .checkpoint import load_official  # checkpoint.py imports this module: a top-level import is a cycle

        return load_official(cls, pretrained_model_name_or_path, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also accepts official per-expert names, even a partial set (Trainer resumes shard by shard with
        strict=False): expert tensors are copied into their slice of the stacked parameter."""
        from torch.nn.modules.module import _IncompatibleKeys

        if not is_official(state_dict, self.config):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        if strict:
            provided = {k: tuple(v.shape) for k, v in state_dict.items()}
            diff_inventory(official_shapes(self.state_dict()), provided, "load_state_dict")
        own = self.state_dict(keep_vars=True)
        rest, unexpected, loaded = {}, [], set()
        with torch.no_grad():
            for key, value in state_dict.items():
                target = stacked_target(key)
                if target is None:
                    rest[key] = value
                    continue
                name, e = target
                if name not in own or e >= own[name].shape[0] or own[name].shape[1:] != value.shape:
                    unexpected.append(key)
                    continue
                own[name].data[e].copy_(value)
                loaded.add(name)
        result = super().load_state_dict(rest, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if k not in loaded]
        return _IncompatibleKeys(missing, list(result.unexpected_keys) + unexpected)


@dataclass
class KimiCausalLMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus `aux_loss` (the mean sequence-level balance loss, when enabled)."""

    aux_loss: torch.Tensor | None = None


@dataclass
class KimiModelOutput(BaseModelOutputWithPast):
    aux_loss: torch.Tensor | None = None


# The output field holding the cache is `cache` in recent transformers 5.x and `past_key_values` before.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _output_cache(out) -> KimiLinearCache | None:
    return getattr(out, _CACHE_FIELD)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Shifted next-token cross-entropy in fp32, ignoring -100; mean over target tokens (or / num_items)."""
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].to(logits.device).reshape(-1)
    if num_items_in_batch is None:
        return F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
    return total / torch.as_tensor(num_items_in_batch, device=total.device).clamp(min=1)


def _register_auto_classes() -> None:
    """Make `AutoConfig` / `AutoModel` / `AutoModelForCausalLM` know `kimi_linear` (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    try:
        AutoConfig.register("kimi_linear", KimiLinearConfig, exist_ok=True)
    except TypeError:  # older signature without exist_ok
        AutoConfig.register("kimi_linear", KimiLinearConfig)
    for auto, cls in ((AutoModel, KimiLinearModel), (AutoModelForCausalLM, KimiLinearForCausalLM)):
        try:
            auto.register(KimiLinearConfig, cls, exist_ok=True)
        except TypeError:
            auto.register(KimiLinearConfig, cls)
        except ValueError:  # already registered (module re-import)
            pass


_register_auto_classes()
