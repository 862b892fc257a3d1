"""Hostile checkpoints: truncated or corrupt safetensors, a shard named in the index but missing, a config/weights
mismatch. Loading and `mixlab model info FOLDER` both answer with one line naming the file, exit code 2."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from mixlab import cli
from mixlab.errors import MixlabError
from mixlab.model import KimiLinearForCausalLM, get_preset

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One tiny checkpoint saved single-file and one saved in shards (with an index)."""
    torch.manual_seed(0)
    model = KimiLinearForCausalLM(get_preset("tiny"))
    root = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(root / "single")
    model.save_pretrained(root / "sharded", max_shard_size="20KB")
    assert (root / "sharded" / INDEX).is_file()
    return root


@pytest.fixture
def ckpt(saved, tmp_path):
    def copy(kind: str):
        shutil.copytree(saved / kind, tmp_path / kind)
        return tmp_path / kind
    return copy


def _info(monkeypatch, capsys, folder) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["mixlab", "model", "info", str(folder)])
    with pytest.raises(SystemExit) as info:
        cli.main()
    out = capsys.readouterr()
    assert out.out == ""
    return info.value.code, out.err


def _refused(folder, monkeypatch, capsys) -> str:
    """The same one-line message from `from_pretrained` and from `mixlab model info`."""
    with pytest.raises(MixlabError) as err:
        KimiLinearForCausalLM.from_pretrained(folder)
    code, stderr = _info(monkeypatch, capsys, folder)
    assert (code, stderr) == (2, f"error: {err.value}\n")
    return str(err.value)


def test_intact_checkpoints_pass(saved, monkeypatch, capsys):
    for kind in ("single", "sharded"):
        monkeypatch.setattr(sys, "argv", ["mixlab", "model", "info", str(saved / kind), "--json"])
        cli.main()
        facts = json.loads(capsys.readouterr().out)
        assert facts["weights"]["tensors"] == facts["tensor_count"]
        assert len(facts["weights"]["shards"]) == (1 if kind == "single" else len(set(
            json.loads((saved / kind / INDEX).read_text())["weight_map"].values())))


def test_truncated_file(ckpt, monkeypatch, capsys):
    folder = ckpt("single")
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    assert _refused(folder, monkeypatch, capsys) == (
        f"{f}: not a valid safetensors file (Error while deserializing header: incomplete metadata, "
        "file not fully covered)")


def test_garbage_header(ckpt, monkeypatch, capsys):
    folder = ckpt("single")
    f = folder / "model.safetensors"
    f.write_bytes(b"\xff" * 64 + f.read_bytes()[64:])
    assert _refused(folder, monkeypatch, capsys).startswith(f"{f}: not a valid safetensors file (")


def test_empty_shard(ckpt, monkeypatch, capsys):
    folder = ckpt("sharded")
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.write_bytes(b"")
    assert _refused(folder, monkeypatch, capsys) == (
        f"{shard}: not a valid safetensors file (Error while deserializing header: header too small)")


def test_shard_missing(ckpt, monkeypatch, capsys):
    folder = ckpt("sharded")
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    shard.unlink()
    assert _refused(folder, monkeypatch, capsys) == (
        f"{folder / INDEX}: shard {shard.name} listed in weight_map does not exist")


def test_index_points_outside_the_folder(ckpt, monkeypatch, capsys):
    folder = ckpt("sharded")
    index = json.loads((folder / INDEX).read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = "../../etc/passwd"
    (folder / INDEX).write_text(json.dumps(index))
    assert _refused(folder, monkeypatch, capsys) == (
        f"{folder / INDEX}: shard '../../etc/passwd' in weight_map is not a file name inside {folder}")


def test_index_not_json(ckpt, monkeypatch, capsys):
    folder = ckpt("sharded")
    (folder / INDEX).write_text("{not json")
    assert _refused(folder, monkeypatch, capsys).startswith(f"{folder / INDEX}: not a safetensors index")


def test_config_weights_mismatch_names_the_shard(ckpt, monkeypatch, capsys):
    folder = ckpt("single")
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] += 8  # embeddings and LM head no longer match the weights
    (folder / "config.json").write_text(json.dumps(config))
    message = _refused(folder, monkeypatch, capsys)
    assert message.startswith(f"{folder / 'model.safetensors'} vs {folder / 'config.json'}: checkpoint does not "
                              "match the config; 2 mis-shaped: ")
    assert "lm_head.weight" in message and "model.embed_tokens.weight" in message


def test_config_weights_mismatch_across_shards_names_the_folder(ckpt, monkeypatch, capsys):
    folder = ckpt("sharded")
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] -= 1
    for key in ("kda_layers", "full_attn_layers"):  # keep the layer map valid for one layer fewer
        config["linear_attn_config"][key] = [n for n in config["linear_attn_config"][key]
                                             if n <= config["num_hidden_layers"]]
    (folder / "config.json").write_text(json.dumps(config))
    message = _refused(folder, monkeypatch, capsys)
    assert message.startswith(f"{folder} vs {folder / 'config.json'}: checkpoint does not match the config; ")
    assert "unexpected: model.layers." in message


def test_folder_without_weights(tmp_path, saved, monkeypatch, capsys):
    shutil.copy(saved / "single" / "config.json", tmp_path / "config.json")
    assert _info(monkeypatch, capsys, tmp_path) == (
        2, f"error: {tmp_path}: no model.safetensors or {INDEX} (pass FOLDER/config.json for the config alone)\n")
