"""Size presets: rungs of a scaling ladder, all with Kimi Linear's shape (KDA:MLA 3:1, NoPE MLA, sigmoid-routed
MoE with a shared expert, dense first layer). Presets trained here use the mixlab-bpe tokenizer's vocabulary
(1024 tokens, [PAD] = 1023); `48b-a3b` is the official config exactly.

| preset     | use                 | layers (KDA+MLA) | d    | experts (top-k + shared) |
|------------|---------------------|------------------|------|--------------------------|
| tiny       | CPU unit tests      | 4 (3+1)          | 64   | 4 (2 + 1)                |
| demo       | CPU demo runs       | 4 (3+1)          | 128  | 4 (2 + 1)                |
| small      | CPU / small GPU     | 8 (6+2)          | 512  | 8 (2 + 1)                |
| 1b-a150m   | one GPU             | 16 (12+4)        | 1024 | 48 (3 + 1)               |
| 48b-a3b    | the official model  | 27 (20+7)        | 2304 | 256 (8 + 1)              |

Parameter counts come from `mixlab model info PRESET` (computed on the meta device).
"""

from __future__ import annotations

from typing import Any

from mixlab.errors import MixlabError
from mixlab.yamlio import did_you_mean

from .config import KimiLinearConfig

MIXLAB_VOCAB = 1024  # model/tokenizers/mixlab-bpe
MIXLAB_SPECIAL = {"bos_token_id": 1016, "eos_token_id": 1018, "pad_token_id": 1023}  # [BOS], <|im_end|>, [PAD]


def _hybrid_layers(n_layers: int, period: int = 4) -> dict[str, list[int]]:
    """1-based lists: every `period`-th layer and the last one are MLA, the rest KDA (the 48B pattern)."""
    mla = [i for i in range(1, n_layers + 1) if i % period == 0 or i == n_layers]
    return {"kda_layers": [i for i in range(1, n_layers + 1) if i not in mla], "full_attn_layers": mla}


def _ladder(*, layers: int, d: int, kda_heads: int, kda_dim: int, mla_heads: int, kv_rank: int, nope: int,
            rope: int, v: int, experts: int, top_k: int, moe_inter: int, dense_inter: int,
            **extra: Any) -> dict[str, Any]:
    return dict(
        vocab_size=MIXLAB_VOCAB, **MIXLAB_SPECIAL, hidden_size=d, num_hidden_layers=layers,
        num_attention_heads=mla_heads, num_key_value_heads=mla_heads, intermediate_size=dense_inter,
        kv_lora_rank=kv_rank, qk_nope_head_dim=nope, qk_rope_head_dim=rope, v_head_dim=v, mla_use_nope=True,
        q_lora_rank=None, linear_attn_config={**_hybrid_layers(layers), "head_dim": kda_dim, "num_heads": kda_heads,
                                              "short_conv_kernel_size": 4},
        num_experts=experts, num_experts_per_token=top_k, num_shared_experts=1, moe_intermediate_size=moe_inter,
        moe_layer_freq=1, first_k_dense_replace=1, moe_router_activation_func="sigmoid", moe_renormalize=True,
        routed_scaling_factor=2.446, model_max_length=4096, tie_word_embeddings=False, rms_norm_eps=1e-5,
        initializer_range=0.02, **extra,
    )


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": _ladder(layers=4, d=64, kda_heads=2, kda_dim=32, mla_heads=2, kv_rank=32, nope=16, rope=8, v=16,
                    experts=4, top_k=2, moe_inter=64, dense_inter=128),
    "demo": _ladder(layers=4, d=128, kda_heads=4, kda_dim=32, mla_heads=4, kv_rank=64, nope=32, rope=16, v=32,
                    experts=4, top_k=2, moe_inter=64, dense_inter=256),
    "small": _ladder(layers=8, d=512, kda_heads=8, kda_dim=64, mla_heads=8, kv_rank=128, nope=64, rope=32, v=64,
                     experts=8, top_k=2, moe_inter=256, dense_inter=1536),
    "1b-a150m": _ladder(layers=16, d=1024, kda_heads=8, kda_dim=128, mla_heads=8, kv_rank=256, nope=128, rope=64,
                        v=128, experts=48, top_k=3, moe_inter=384, dense_inter=4096),
    "48b-a3b": {},  # KimiLinearConfig's defaults ARE the official 48B-A3B config.json
}


def get_preset(name: str, **overrides: Any) -> KimiLinearConfig:
    """A fresh `KimiLinearConfig` for a preset name; keyword overrides replace single keys."""
    if name not in PRESETS:
        hint = did_you_mean(name, PRESETS)
        raise MixlabError(f"unknown model preset {name!r}{hint}; choose one of {', '.join(PRESETS)}")
    kwargs = {**PRESETS[name], **overrides}
    config = KimiLinearConfig(**kwargs)
    config.architectures = ["KimiLinearForCausalLM"]
    config.mixlab_preset = name
    return config
