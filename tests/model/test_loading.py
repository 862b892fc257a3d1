"""The one model + tokenizer loader (recipes, evals backends, serve): presets, checkpoint folders, other causal LMs,
live models; device and dtype defaults from mixlab.device."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mixlab.errors import MixlabError
from mixlab.evals.backends import get_backend
from mixlab.model import KimiLinearForCausalLM, load_model, load_tokenizer
from mixlab.model.loading import load_model_and_tokenizer, preset_config


def test_preset_with_overrides_merges_nested_config():
    config = preset_config("tiny", {"hidden_size": 96, "linear_attn_config": {"num_heads": 3}})
    assert config.hidden_size == 96 and config.linear_attn_config["num_heads"] == 3
    base = preset_config("tiny")
    assert config.linear_attn_config["kda_layers"] == base.linear_attn_config["kda_layers"]  # merged, not replaced
    with pytest.raises(MixlabError, match="did you mean 'hidden_size'"):
        preset_config("tiny", {"hiden_size": 96})
    with pytest.raises(MixlabError, match="did you mean 'tiny'"):
        load_model("tinyy")


def test_preset_is_seeded_and_on_the_resolved_device():
    a = load_model_and_tokenizer("tiny", seed=0, device="cpu")
    b = load_model_and_tokenizer("tiny", seed=0, device="cpu")
    assert a.description == "preset:tiny" and a.tokenizer.name_or_path.endswith("mixlab-bpe")
    assert next(a.model.parameters()).dtype == torch.float32  # auto on CPU
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name
    half = load_model_and_tokenizer("tiny", device="cpu", dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16  # an explicit inference dtype is kept on CPU


def test_checkpoint_folder_round_trip_with_its_tokenizer(tmp_path):
    model = load_model("tiny", seed=1)
    tokenizer = load_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|mark|>"]})
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model_and_tokenizer(tmp_path, device="cpu")
    assert isinstance(loaded.model, KimiLinearForCausalLM) and loaded.description == str(tmp_path)
    assert "<|mark|>" in loaded.tokenizer.get_vocab()  # the folder's own tokenizer, not the default
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(model(input_ids=ids).logits, loaded.model(input_ids=ids).logits)
    # An explicit tokenizer beats the folder's.
    assert "<|mark|>" not in load_model_and_tokenizer(tmp_path, "mixlab-bpe", device="cpu").tokenizer.get_vocab()
    with pytest.raises(MixlabError, match="overrides apply to a fresh preset"):
        load_model(tmp_path, overrides={"hidden_size": 8})


def test_other_causal_lm_folder_loads_through_auto_class(tmp_path):
    config = LlamaConfig(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    load_tokenizer().save_pretrained(tmp_path)
    loaded = load_model_and_tokenizer(tmp_path, device="cpu")
    assert isinstance(loaded.model, LlamaForCausalLM) and next(loaded.model.parameters()).dtype == torch.float32


def test_missing_config_and_live_models(tmp_path):
    with pytest.raises(MixlabError, match="no config.json"):
        load_model(tmp_path)
    model = load_model("tiny", seed=0)
    model.mixlab_tokenizer = load_tokenizer()
    loaded = load_model_and_tokenizer(model)
    assert loaded.model is model and loaded.tokenizer is model.mixlab_tokenizer
    assert loaded.description == "KimiLinearForCausalLM"


def test_eval_backends_load_through_the_same_loader():
    for name in ("torch", "hf"):
        backend = get_backend(name, "tiny", device="cpu")
        reference = load_model_and_tokenizer("tiny", device="cpu", seed=0).model
        assert backend.model_desc == "preset:tiny" and not backend.model.training
        for (key, x), (_, y) in zip(backend.model.state_dict().items(), reference.state_dict().items()):
            assert torch.equal(x, y), (name, key)
