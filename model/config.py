"""`KimiLinearConfig`: the official Kimi-Linear `config.json`, unchanged, plus a few mixlab training switches.

Every key of the official 48B-A3B config is accepted as is (the defaults ARE that config). Validation runs at
construction and raises a one-line `MixlabError` naming the field: unknown layer types, overlapping / missing /
out-of-range 1-based layer numbers, inconsistent or unsupported dims.

mixlab-only keys (saved in config.json; vLLM and the HF remote code ignore them):
- `router_weights_use_bias` (default False): routing weights from the unbiased sigmoid scores, as vLLM does.
  True reproduces the HF remote code, whose in-place `+=` makes the weights include `e_score_correction_bias`.
- `router_bias_update_rate` (default 0.0 = frozen, NeMo's fine-tuning choice): the aux-loss-free balancing step
  `bias += rate * sign(mean_load - load)` applied by `KimiLinearForCausalLM.update_router_bias()`.
- `seq_aux_loss_coef` (default 0.0): DeepSeek-V3's sequence-level balance loss, added to the training loss.
  (Not named `router_aux_loss_coef` on purpose: TRL rewrites that key and applies Mixtral's softmax loss.)
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from mixlab.errors import MixlabError
from mixlab.yamlio import did_you_mean

# The 48B-A3B layer layout (1-based): six repeats of KDA,KDA,KDA,MLA then KDA,KDA,MLA.
_KDA_48B = [1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19, 21, 22, 23, 25, 26]
_MLA_48B = [4, 8, 12, 16, 20, 24, 27]

LAYER_TYPE_KEYS = {"kda_layers": "kda", "full_attn_layers": "mla"}
LINEAR_ATTN_KEYS = ("kda_layers", "full_attn_layers", "head_dim", "num_heads", "short_conv_kernel_size")


def _default_linear_attn_config() -> dict[str, Any]:
    return {
        "kda_layers": list(_KDA_48B),
        "full_attn_layers": list(_MLA_48B),
        "head_dim": 128,
        "num_heads": 32,
        "short_conv_kernel_size": 4,
    }


def _fail(field: str, msg: str) -> MixlabError:
    return MixlabError(f"config field {field}: {msg}")


class KimiLinearConfig(PretrainedConfig):
    model_type = "kimi_linear"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 163840,
        hidden_size: int = 2304,
        num_hidden_layers: int = 27,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        intermediate_size: int = 9216,
        hidden_act: str = "silu",
        rms_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = False,
        bos_token_id: int | None = 163584,
        eos_token_id: int | None = 163586,
        pad_token_id: int | None = 163839,
        use_cache: bool = True,
        model_max_length: int = 1048576,
        rope_theta: float = 10000.0,
        rope_scaling: dict | None = None,
        # MLA
        q_lora_rank: int | None = None,
        kv_lora_rank: int = 512,
        qk_nope_head_dim: int = 128,
        qk_rope_head_dim: int = 64,
        v_head_dim: int = 128,
        mla_use_nope: bool = True,
        # KDA
        linear_attn_config: dict | None = None,
        # MoE
        num_experts: int | None = 256,
        num_experts_per_token: int = 8,
        num_shared_experts: int = 1,
        moe_intermediate_size: int = 1024,
        moe_layer_freq: int = 1,
        first_k_dense_replace: int = 1,
        moe_router_activation_func: str = "sigmoid",
        moe_renormalize: bool = True,
        routed_scaling_factor: float = 2.446,
        use_grouped_topk: bool = True,
        num_expert_group: int = 1,
        topk_group: int = 1,
        num_nextn_predict_layers: int = 0,
        # mixlab training switches
        router_weights_use_bias: bool = False,
        router_bias_update_rate: float = 0.0,
        seq_aux_loss_coef: float = 0.0,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = head_dim if head_dim is not None else hidden_size // max(num_attention_heads, 1)
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.model_max_length = model_max_length
        self.rope_theta = rope_theta
        if rope_scaling is not None:  # unused (NoPE); setting None makes transformers warn about rope_scaling
            self.rope_scaling = rope_scaling
        self.q_lora_rank = q_lora_rank
        self.kv_lora_rank = kv_lora_rank
        self.qk_nope_head_dim = qk_nope_head_dim
        self.qk_rope_head_dim = qk_rope_head_dim
        self.v_head_dim = v_head_dim
        self.mla_use_nope = mla_use_nope
        self.linear_attn_config = (
            _default_linear_attn_config() if linear_attn_config is None else dict(linear_attn_config)
        )
        self.num_experts = num_experts
        self.num_experts_per_token = num_experts_per_token
        self.num_shared_experts = num_shared_experts
        self.moe_intermediate_size = moe_intermediate_size
        self.moe_layer_freq = moe_layer_freq
        self.first_k_dense_replace = first_k_dense_replace
        self.moe_router_activation_func = moe_router_activation_func
        self.moe_renormalize = moe_renormalize
        self.routed_scaling_factor = routed_scaling_factor
        self.use_grouped_topk = use_grouped_topk
        self.num_expert_group = num_expert_group
        self.topk_group = topk_group
        self.num_nextn_predict_layers = num_nextn_predict_layers
        self.router_weights_use_bias = router_weights_use_bias
        self.router_bias_update_rate = router_bias_update_rate
        self.seq_aux_loss_coef = seq_aux_loss_coef
        self.use_cache = use_cache
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate_kimi()

    # ----------------------------------------------------------------------------------------------- layout
    @property
    def kda_layers(self) -> list[int]:
        return list(self.linear_attn_config.get("kda_layers") or [])

    @property
    def full_attn_layers(self) -> list[int]:
        return list(self.linear_attn_config.get("full_attn_layers") or [])

    @property
    def kda_num_heads(self) -> int:
        return int(self.linear_attn_config["num_heads"])

    @property
    def kda_head_dim(self) -> int:
        return int(self.linear_attn_config["head_dim"])

    @property
    def conv_kernel_size(self) -> int:
        return int(self.linear_attn_config.get("short_conv_kernel_size", 4))

    @property
    def is_moe(self) -> bool:
        return self.num_experts is not None

    def is_kda_layer(self, layer_idx: int) -> bool:
        """0-based index in code, 1-based numbers in `linear_attn_config` (as the HF config does)."""
        return (layer_idx + 1) in self.kda_layers

    def is_moe_layer(self, layer_idx: int) -> bool:
        return (
            self.num_experts is not None
            and layer_idx >= self.first_k_dense_replace
            and layer_idx % self.moe_layer_freq == 0
        )

    def layer_kinds(self) -> list[tuple[str, str]]:
        """Per 0-based layer: (attention kind "kda"/"mla", ffn kind "dense"/"moe")."""
        return [
            ("kda" if self.is_kda_layer(i) else "mla", "moe" if self.is_moe_layer(i) else "dense")
            for i in range(self.num_hidden_layers)
        ]

    # ----------------------------------------------------------------------------------------------- checks
    def validate_kimi(self) -> None:
        """Raise a one-line MixlabError naming the first bad field."""
        L = self.num_hidden_layers
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "kv_lora_rank", "qk_nope_head_dim", "v_head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise _fail(name, f"must be a positive integer, got {value!r}")
        if not isinstance(self.qk_rope_head_dim, int) or self.qk_rope_head_dim < 0:
            raise _fail("qk_rope_head_dim", f"must be a non-negative integer, got {self.qk_rope_head_dim!r}")
        if self.hidden_act != "silu":
            raise _fail("hidden_act", f"only 'silu' is supported (Kimi Linear uses SwiGLU), got {self.hidden_act!r}")
        if self.q_lora_rank is not None:
            raise _fail("q_lora_rank", f"must be null (Kimi Linear MLA has no q low-rank path), got {self.q_lora_rank}")
        if not self.mla_use_nope:
            raise _fail("mla_use_nope", "must be true: Kimi Linear's MLA is NoPE (RoPE MLA is not implemented)")
        if self.num_nextn_predict_layers:
            raise _fail("num_nextn_predict_layers", f"multi-token prediction layers are not supported, got "
                        f"{self.num_nextn_predict_layers}")
        if not isinstance(self.rms_norm_eps, (int, float)) or self.rms_norm_eps <= 0:
            raise _fail("rms_norm_eps", f"must be > 0, got {self.rms_norm_eps!r}")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise _fail("pad_token_id", f"{self.pad_token_id} is outside the vocabulary [0, {self.vocab_size})")

        lac = self.linear_attn_config
        if not isinstance(lac, dict):
            raise _fail("linear_attn_config", f"must be a mapping, got {type(lac).__name__}")
        for key in lac:
            if key in LINEAR_ATTN_KEYS:
                continue
            if key.endswith("_layers"):
                kind = key[: -len("_layers")]
                raise _fail(f"linear_attn_config.{key}", f"unknown layer type {kind!r}; known layer lists: "
                            f"{', '.join(LAYER_TYPE_KEYS)}")
            hint = did_you_mean(key, LINEAR_ATTN_KEYS)
            raise _fail(f"linear_attn_config.{key}", f"unknown key{hint}; known: {', '.join(LINEAR_ATTN_KEYS)}")
        for key in ("kda_layers", "full_attn_layers"):
            if lac.get(key) is None:
                raise _fail(f"linear_attn_config.{key}", "is missing (list of 1-based layer numbers)")
        owner: dict[int, str] = {}
        for key in ("kda_layers", "full_attn_layers"):
            layers = lac[key]
            if not isinstance(layers, (list, tuple)):
                raise _fail(f"linear_attn_config.{key}", f"must be a list of 1-based layer numbers, got {layers!r}")
            for n in layers:
                if not isinstance(n, int) or isinstance(n, bool):
                    raise _fail(f"linear_attn_config.{key}", f"layer numbers must be integers, got {n!r}")
                if not 1 <= n <= L:
                    hint = " (layer numbers are 1-based)" if n == 0 else ""
                    raise _fail(f"linear_attn_config.{key}", f"layer {n} is outside 1..{L} "
                                f"(num_hidden_layers={L}){hint}")
                if n in owner:
                    where = "twice in " + key if owner[n] == key else f"in both {owner[n]} and {key}"
                    raise _fail(f"linear_attn_config.{key}", f"layer {n} is listed {where}")
                owner[n] = key
        missing = [n for n in range(1, L + 1) if n not in owner]
        if missing:
            raise _fail("linear_attn_config", f"layers {missing} are in neither kda_layers nor full_attn_layers "
                        f"(each of the {L} layers, 1-based, must be listed exactly once)")
        for key in ("head_dim", "num_heads", "short_conv_kernel_size"):
            value = lac.get(key, 4 if key == "short_conv_kernel_size" else None)
            if self.kda_layers and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise _fail(f"linear_attn_config.{key}", f"must be a positive integer, got {value!r}")

        if self.num_experts is not None:
            E, k = self.num_experts, self.num_experts_per_token
            if not isinstance(E, int) or E <= 0:
                raise _fail("num_experts", f"must be a positive integer or null, got {E!r}")
            if not isinstance(k, int) or not 1 <= k <= E:
                raise _fail("num_experts_per_token", f"must be in 1..num_experts={E}, got {k!r}")
            if not isinstance(self.moe_intermediate_size, int) or self.moe_intermediate_size <= 0:
                raise _fail("moe_intermediate_size", f"must be a positive integer, got {self.moe_intermediate_size!r}")
            if not isinstance(self.num_shared_experts, int) or self.num_shared_experts < 0:
                raise _fail("num_shared_experts", f"must be >= 0, got {self.num_shared_experts!r}")
            if not isinstance(self.moe_layer_freq, int) or self.moe_layer_freq < 1:
                raise _fail("moe_layer_freq", f"must be >= 1, got {self.moe_layer_freq!r}")
            if not isinstance(self.first_k_dense_replace, int) or not 0 <= self.first_k_dense_replace <= L:
                raise _fail("first_k_dense_replace", f"must be in 0..{L}, got {self.first_k_dense_replace!r}")
            if self.moe_router_activation_func not in ("sigmoid", "softmax"):
                raise _fail("moe_router_activation_func",
                            f"must be 'sigmoid' or 'softmax', got {self.moe_router_activation_func!r}")
            if self.num_expert_group != 1 or self.topk_group != 1:
                raise _fail("num_expert_group", f"grouped top-k with more than one group is not supported "
                            f"(num_expert_group={self.num_expert_group}, topk_group={self.topk_group})")
        if self.router_bias_update_rate < 0:
            raise _fail("router_bias_update_rate", f"must be >= 0, got {self.router_bias_update_rate}")
        if self.seq_aux_loss_coef < 0:
            raise _fail("seq_aux_loss_coef", f"must be >= 0, got {self.seq_aux_loss_coef}")
