"""Model facts computed from a config on the meta device (no memory, no weights): layer map, total and active
parameter counts, exported tensor count. Used by `mixlab model info`."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from mixlab.errors import MixlabError
from mixlab.yamlio import did_you_mean

from .checkpoint import INDEX_NAME, WEIGHTS_NAME, validate_checkpoint
from .config import KimiLinearConfig
from .modeling import KimiLinearForCausalLM
from .presets import PRESETS, get_preset
from .state_dict_adapter import official_shapes


def resolve_config(preset_or_path: str | os.PathLike) -> tuple[KimiLinearConfig, str]:
    name = str(preset_or_path)
    path = Path(name)
    if name in PRESETS and not path.exists():
        return get_preset(name), f"preset {name}"
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        import json

        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise MixlabError(f"{path}: not valid JSON ({exc})") from None
        try:
            return KimiLinearConfig(**data), str(path)
        except MixlabError as exc:
            raise MixlabError(f"{path}: {exc}") from None
    hint = did_you_mean(name, PRESETS)
    raise MixlabError(f"{name}: neither a model preset ({', '.join(PRESETS)}) nor a config.json / folder{hint}")


def model_info(config: KimiLinearConfig) -> dict[str, Any]:
    with torch.device("meta"):
        model = KimiLinearForCausalLM(config)
    shapes = official_shapes(model.state_dict())
    total = sum(math.prod(s) for s in shapes.values())
    per_expert = 3 * config.moe_intermediate_size * config.hidden_size if config.is_moe else 0
    layers = []
    inactive = 0
    for i, (attn, ffn) in enumerate(config.layer_kinds()):
        layer_params = sum(p.numel() for p in model.model.layers[i].parameters())
        if ffn == "moe":
            inactive += (config.num_experts - config.num_experts_per_token) * per_expert
        layers.append({"layer": i, "number": i + 1, "attention": attn, "ffn": ffn, "params": layer_params})
    embed = config.vocab_size * config.hidden_size
    active = total - inactive
    return {
        "model_type": config.model_type,
        "preset": getattr(config, "mixlab_preset", None),
        "num_layers": config.num_hidden_layers,
        "kda_layers": sum(1 for a, _ in config.layer_kinds() if a == "kda"),
        "mla_layers": sum(1 for a, _ in config.layer_kinds() if a == "mla"),
        "moe_layers": sum(1 for _, f in config.layer_kinds() if f == "moe"),
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "num_experts": config.num_experts,
        "experts_per_token": config.num_experts_per_token if config.is_moe else None,
        "shared_experts": config.num_shared_experts if config.is_moe else None,
        "total_params": total,
        "active_params": active,
        "active_params_excluding_embeddings": active - embed - (0 if config.tie_word_embeddings else embed),
        "tensor_count": len(shapes),
        "layers": layers,
        "kv_cache_bytes_per_token_bf16": 2 * (config.kv_lora_rank + config.qk_rope_head_dim)
        * sum(1 for a, _ in config.layer_kinds() if a == "mla"),
        "kda_state_bytes_per_sequence_fp32": 4 * config.kda_num_heads * config.kda_head_dim**2
        * sum(1 for a, _ in config.layer_kinds() if a == "kda"),
    }


def checkpoint_weights(preset_or_path: str | os.PathLike, config: KimiLinearConfig) -> dict[str, Any] | None:
    """For a checkpoint folder: every shard's header and every tensor's name and shape checked against the config
    (no tensor data read). None for a preset or a bare config.json; a folder without weights is an error."""
    folder = Path(preset_or_path)
    if not folder.is_dir():
        return None
    if not ((folder / WEIGHTS_NAME).is_file() or (folder / INDEX_NAME).is_file()):
        raise MixlabError(f"{folder}: no {WEIGHTS_NAME} or {INDEX_NAME} (pass FOLDER/config.json for the config "
                          "alone)")
    return validate_checkpoint(folder, config)
