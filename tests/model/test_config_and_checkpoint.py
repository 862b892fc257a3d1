"""Config validation, the official tensor inventory, and official-format checkpoint I/O."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mixlab.errors import MixlabError

# The official Kimi-Linear-48B-A3B-Instruct config.json (reference §1), verbatim keys and values.
OFFICIAL_CONFIG = {
    "architectures": ["KimiLinearForCausalLM"],
    "auto_map": {"AutoConfig": "configuration_kimi.KimiLinearConfig",
                 "AutoModel": "modeling_kimi.KimiLinearModel",
                 "AutoModelForCausalLM": "modeling_kimi.KimiLinearForCausalLM"},
    "model_type": "kimi_linear", "dtype": "bfloat16", "transformers_version": "4.57.0",
    "vocab_size": 163840, "hidden_size": 2304, "num_hidden_layers": 27, "num_attention_heads": 32,
    "num_key_value_heads": 32, "head_dim": 72, "intermediate_size": 9216, "hidden_act": "silu",
    "rms_norm_eps": 1e-05, "initializer_range": 0.02, "tie_word_embeddings": False,
    "bos_token_id": 163584, "eos_token_id": 163586, "pad_token_id": 163839, "use_cache": True,
    "model_max_length": 1048576, "rope_theta": 10000.0, "rope_scaling": None,
    "q_lora_rank": None, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "mla_use_nope": True,
    "linear_attn_config": {"kda_layers": [1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19, 21, 22, 23, 25, 26],
                           "full_attn_layers": [4, 8, 12, 16, 20, 24, 27], "head_dim": 128, "num_heads": 32,
                           "short_conv_kernel_size": 4},
    "num_experts": 256, "num_experts_per_token": 8, "num_shared_experts": 1, "moe_intermediate_size": 1024,
    "moe_layer_freq": 1, "first_k_dense_replace": 1, "moe_router_activation_func": "sigmoid",
    "moe_renormalize": True, "routed_scaling_factor": 2.446, "use_grouped_topk": True, "num_expert_group": 1,
    "topk_group": 1, "num_nextn_predict_layers": 0,
}


def official_inventory() -> dict[str, tuple[int, ...]]:
    """Derived from the reference's §2 tables, independently of mixlab.model."""
    D, V, H, K, Hm, R, nope, rope, vd, E, I, dense = 2304, 163840, 32, 128, 32, 512, 128, 64, 128, 256, 1024, 9216
    P = H * K
    kda_layers = {n - 1 for n in OFFICIAL_CONFIG["linear_attn_config"]["kda_layers"]}
    inv = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,), "lm_head.weight": (V, D)}
    for i in range(27):
        p = f"model.layers.{i}."
        inv[p + "input_layernorm.weight"] = (D,)
        inv[p + "post_attention_layernorm.weight"] = (D,)
        a = p + "self_attn."
        if i in kda_layers:
            for x in "qkv":
                inv[a + f"{x}_proj.weight"] = (P, D)
                inv[a + f"{x}_conv1d.weight"] = (P, 1, 4)
            inv.update({a + "f_a_proj.weight": (K, D), a + "f_b_proj.weight": (P, K), a + "dt_bias": (P,),
                        a + "A_log": (1, 1, H, 1), a + "b_proj.weight": (H, D), a + "g_a_proj.weight": (K, D),
                        a + "g_b_proj.weight": (P, K), a + "o_norm.weight": (K,), a + "o_proj.weight": (D, P)})
        else:
            inv.update({a + "q_proj.weight": (Hm * (nope + rope), D), a + "kv_a_proj_with_mqa.weight": (R + rope, D),
                        a + "kv_a_layernorm.weight": (R,), a + "kv_b_proj.weight": (Hm * (nope + vd), R),
                        a + "o_proj.weight": (D, Hm * vd)})
        if i == 0:
            inv.update({p + "mlp.gate_proj.weight": (dense, D), p + "mlp.up_proj.weight": (dense, D),
                        p + "mlp.down_proj.weight": (D, dense)})
        else:
            m = p + "block_sparse_moe."
            inv.update({m + "gate.weight": (E, D), m + "gate.e_score_correction_bias": (E,),
                        m + "shared_experts.gate_proj.weight": (I, D), m + "shared_experts.up_proj.weight": (I, D),
                        m + "shared_experts.down_proj.weight": (D, I)})
            for e in range(E):
                inv.update({m + f"experts.{e}.w1.weight": (I, D), m + f"experts.{e}.w3.weight": (I, D),
                            m + f"experts.{e}.w2.weight": (D, I)})
    return inv


def test_48b_on_meta_matches_official_inventory():
    from mixlab.model import KimiLinearConfig, KimiLinearForCausalLM
    from mixlab.model.state_dict_adapter import official_shapes

    config = KimiLinearConfig(**OFFICIAL_CONFIG)  # the official config.json, unchanged
    with torch.device("meta"):
        model = KimiLinearForCausalLM(config)
    assert model.num_parameters() == 49_122_681_728
    exported = official_shapes(model.state_dict())
    want = official_inventory()
    assert len(want) == 20_493 and len(exported) == 20_493
    assert exported == want
    assert sum(math.prod(s) for s in exported.values()) == 49_122_681_728


def test_preset_48b_equals_official_config():
    from mixlab.model import KimiLinearConfig, get_preset

    preset, official = get_preset("48b-a3b").to_dict(), KimiLinearConfig(**OFFICIAL_CONFIG).to_dict()
    for key, value in OFFICIAL_CONFIG.items():
        if key not in ("auto_map", "transformers_version", "dtype", "rope_scaling", "head_dim"):
            assert preset[key] == official[key] == value, key


@pytest.mark.parametrize("patch, field", [
    ({"linear_attn_config": {"kda_layers": [1, 2, 3], "swa_layers": [4]}}, "linear_attn_config.swa_layers"),
    ({"linear_attn_config": {"kda_layers": [1, 2, 3, 4], "full_attn_layers": [4]}}, "layer 4 is listed in both"),
    ({"linear_attn_config": {"kda_layers": [1, 2], "full_attn_layers": [4]}}, "layers [3]"),
    ({"linear_attn_config": {"kda_layers": [0, 1, 2], "full_attn_layers": [4]}}, "1-based"),
    ({"linear_attn_config": {"kda_layers": [1, 2, 3], "full_attn_layers": [4, 5]}}, "outside 1..4"),
    ({"linear_attn_config": {"kda_layers": [1, 2, 3], "full_attn_layers": [4], "num_head": 2}}, "num_heads"),
    ({"num_experts_per_token": 9}, "num_experts_per_token"),
    ({"hidden_size": 0}, "hidden_size"),
    ({"q_lora_rank": 64}, "q_lora_rank"),
    ({"num_expert_group": 2}, "num_expert_group"),
    ({"pad_token_id": 5000}, "pad_token_id"),
])
def test_bad_configs_give_one_line_errors(patch, field):
    from mixlab.model import get_preset

    base = {"num_hidden_layers": 4}
    if "linear_attn_config" in patch:
        lac = {"head_dim": 32, "num_heads": 2, "short_conv_kernel_size": 4, **patch["linear_attn_config"]}
        patch = {**patch, "linear_attn_config": lac}
    with pytest.raises(MixlabError) as exc:
        get_preset("tiny", **{**base, **patch})
    msg = str(exc.value)
    assert "\n" not in msg and field in msg, msg


def _write_official_folder(folder, model, shard_bytes):
    """Write a checkpoint as the HF hub has it, without mixlab's writer: per-expert names, sharded + index."""
    from safetensors.torch import save_file

    sd = {}
    for name, t in model.state_dict().items():
        if name.endswith(("experts.w1", "experts.w2", "experts.w3")):
            for e in range(t.shape[0]):
                sd[f"{name[:-3]}.{e}.{name[-2:]}.weight"] = t[e].clone()
        else:
            sd[name] = t.clone()
    shards, cur, size = [], {}, 0
    for k in sorted(sd):
        if cur and size + sd[k].numel() * 4 > shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = sd[k]
        size += sd[k].numel() * 4
    shards.append(cur)
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg = {**model.config.to_dict(), "auto_map": OFFICIAL_CONFIG["auto_map"]}
    (folder / "config.json").write_text(json.dumps(cfg))
    return sd, len(shards)


def test_official_folder_loads_and_save_roundtrip_is_bit_identical(tmp_path, make_model):
    from transformers import AutoModelForCausalLM

    from mixlab.model import KimiLinearForCausalLM

    src = make_model(seed=3)
    folder = tmp_path / "official"
    folder.mkdir()
    written, n_shards = _write_official_folder(folder, src, shard_bytes=400_000)
    assert n_shards > 1
    loaded = KimiLinearForCausalLM.from_pretrained(folder)
    for name, t in loaded.state_dict().items():
        assert torch.equal(t, src.state_dict()[name]), name
    ids = torch.randint(0, 1000, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, src(ids).logits, rtol=0, atol=0)

    out = tmp_path / "saved"
    loaded.save_pretrained(out, max_shard_size=300_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(written)  # official names only, every tensor
    again = AutoModelForCausalLM.from_pretrained(out)
    assert type(again) is KimiLinearForCausalLM
    for name, t in again.state_dict().items():
        assert t.dtype == src.state_dict()[name].dtype and torch.equal(t, src.state_dict()[name]), name
    assert json.loads((out / "config.json").read_text())["auto_map"] == OFFICIAL_CONFIG["auto_map"]

    # Trainer(resume_from_checkpoint=...) loads shard by shard through model.load_state_dict(strict=False)
    from transformers.trainer_utils import load_sharded_checkpoint

    from mixlab.model import get_preset

    fresh = KimiLinearForCausalLM(get_preset("tiny"))
    load_sharded_checkpoint(fresh, out, strict=False)
    for name, t in fresh.state_dict().items():
        assert torch.equal(t, src.state_dict()[name]), name


def test_single_file_save_in_bf16_keeps_fp32_islands(tmp_path, make_model):
    from safetensors import safe_open

    from mixlab.model import load_model

    from mixlab.model import load_tokenizer

    model = make_model(seed=4).to(torch.bfloat16)
    model.mixlab_tokenizer = load_tokenizer()  # an attached tokenizer is saved with the weights
    fp32 = {n for n, p in model.named_parameters() if p.dtype == torch.float32}
    assert fp32 and all(n.endswith(("A_log", "dt_bias", "e_score_correction_bias")) for n in fp32)
    model.save_pretrained(tmp_path / "ck")
    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as fh:
        dtypes = {k: fh.get_slice(k).get_dtype() for k in fh.keys()}
    assert {k for k, d in dtypes.items() if d == "F32"} == fp32
    again = load_model(tmp_path / "ck", dtype="auto")
    assert (tmp_path / "ck" / "tokenizer.json").is_file() and len(again.mixlab_tokenizer) == 1024
    assert again.lm_head.weight.dtype == torch.bfloat16
    assert again.model.layers[0].self_attn.A_log.dtype == torch.float32
    for name, t in again.state_dict().items():
        assert torch.equal(t, model.state_dict()[name]), name


@pytest.mark.parametrize("damage, words", [
    ("drop", ["1 missing", "experts.3.w2.weight"]),
    ("extra", ["1 unexpected", "model.layers.9.mlp.up_proj.weight"]),
    ("shape", ["1 mis-shaped", "o_norm.weight [31] != expected [32]"]),
])
def test_broken_checkpoints_fail_with_one_line(tmp_path, make_model, damage, words):
    from safetensors.torch import load_file, save_file

    from mixlab.model import KimiLinearForCausalLM

    model = make_model()
    model.save_pretrained(tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    if damage == "drop":
        del sd["model.layers.1.block_sparse_moe.experts.3.w2.weight"]
    elif damage == "extra":
        sd["model.layers.9.mlp.up_proj.weight"] = torch.zeros(2, 2)
    else:
        sd["model.layers.0.self_attn.o_norm.weight"] = torch.ones(31)
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(MixlabError) as exc:
        KimiLinearForCausalLM.from_pretrained(tmp_path)
    msg = str(exc.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_model_info_cli_reports_computed_counts(capsys):
    from mixlab.cli import app

    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["model", "info", "48b-a3b", "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["total_params"] == 49_122_681_728 and facts["tensor_count"] == 20_493
    # active = everything except the 248 unused experts of each of the 26 MoE layers
    assert facts["active_params"] == 49_122_681_728 - 26 * 248 * 3 * 1024 * 2304
    assert [(r["attention"], r["ffn"]) for r in facts["layers"]][:5] == [
        ("kda", "dense"), ("kda", "moe"), ("kda", "moe"), ("mla", "moe"), ("kda", "moe")]
    bad = CliRunner().invoke(app, ["model", "info", "tinny"])
    assert bad.exit_code != 0


def test_model_info_on_a_checkpoint_folder(tmp_path, make_model):
    from typer.testing import CliRunner

    from mixlab.cli import app

    model = make_model()
    model.save_pretrained(tmp_path)
    result = CliRunner().invoke(app, ["model", "info", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"{model.num_parameters():,}" in result.output and "MLA" in result.output
