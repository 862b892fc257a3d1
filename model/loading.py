"""The one model + tokenizer loader: recipes (a stage's start weights), evals backends, `mixlab serve`, local judges.

A source is
- a preset name: a fresh init (seeded when `seed` is given; `overrides` change config fields, nested dicts merge);
- a checkpoint folder: a Kimi Linear checkpoint through `KimiLinearForCausalLM`, any other causal LM (a judge model)
  through transformers' `AutoModelForCausalLM`;
- for `load_model_and_tokenizer` also a live model object, used as is.
The tokenizer is the one named, else the checkpoint folder's own, else mixlab's default (mixlab-bpe).
Device and dtype defaults come from `mixlab.device`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import AutoModelForCausalLM

from mixlab.device import resolve_device, resolve_dtype
from mixlab.errors import MixlabError
from mixlab.yamlio import did_you_mean

from .checkpoint import _resolve_dtype
from .config import KimiLinearConfig
from .modeling import KimiLinearForCausalLM
from .presets import PRESETS, get_preset
from .tokenizer import DEFAULT_TOKENIZER, load_tokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


class LoadedModel(NamedTuple):
    model: Any
    tokenizer: Any
    description: str  # "preset:tiny", the checkpoint folder, or the class of a live model


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def preset_config(preset: str, overrides: dict[str, Any] | None = None) -> KimiLinearConfig:
    """A preset's config with `overrides` applied (unknown keys get the closest field name)."""
    if preset not in PRESETS:
        raise MixlabError(f"{preset!r} is not a model preset{did_you_mean(preset, PRESETS)}; presets: {sorted(PRESETS)}")
    config = get_preset(preset)
    if not overrides:
        return config
    known = config.to_dict()
    unknown = [k for k in overrides if k not in known]
    if unknown:
        raise MixlabError(
            f"model.overrides: {unknown[0]!r} is not a field of the {preset} config{did_you_mean(unknown[0], known)}"
        )
    merged = {
        k: ({**known[k], **v} if isinstance(v, dict) and isinstance(known.get(k), dict) else v)
        for k, v in overrides.items()
    }
    try:
        return get_preset(preset, **merged)
    except (ValueError, TypeError) as exc:
        raise MixlabError(f"model.overrides on preset {preset}: {exc}") from None


def load_model(preset_or_path: str | os.PathLike, dtype: torch.dtype | str | None = None,
               device: torch.device | str | None = None, seed: int | None = None,
               overrides: dict[str, Any] | None = None):
    """A preset gives a fresh init on `device` (default CPU) in `dtype` (default fp32); a folder loads its weights.

    A Kimi Linear folder's tokenizer (if it has a tokenizer.json) is attached as `model.mixlab_tokenizer` and saved
    with the model.
    """
    name = str(preset_or_path)
    path = Path(name)
    if name in PRESETS and not path.is_dir():
        config = preset_config(name, overrides)
        if seed is not None:
            torch.manual_seed(seed)
        model = KimiLinearForCausalLM(config)
        return model.to(device=device or "cpu", dtype=_resolve_dtype(dtype, config))
    if overrides:
        raise MixlabError(f"{name}: model overrides apply to a fresh preset init only")
    if not path.is_dir():
        raise MixlabError(
            f"{name}: neither a model preset ({', '.join(PRESETS)}) nor an existing folder{did_you_mean(name, PRESETS)}"
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise MixlabError(f"checkpoint folder {path} has no config.json")
    if json.loads(config_file.read_text()).get("model_type") != "kimi_linear":  # e.g. a judge model
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=_resolve_dtype(dtype, None))
        return model.to(device or "cpu")
    model = KimiLinearForCausalLM.from_pretrained(path, dtype=dtype, device=device)
    # Official checkpoints ship a remote-code tiktoken tokenizer (no tokenizer.json): loading it is the caller's choice.
    if (path / "tokenizer.json").is_file():
        model.mixlab_tokenizer = load_tokenizer(path)
    return model


def load_tokenizer_for(source: Any, tokenizer: Any = None):
    """`tokenizer` (an object, a shipped name or a folder), else the source folder's or model's own, else the default."""
    if tokenizer is not None:
        return load_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
    if isinstance(source, (str, os.PathLike)):
        return load_tokenizer(source) if has_tokenizer(Path(source)) else load_tokenizer(DEFAULT_TOKENIZER)
    attached = getattr(source, "mixlab_tokenizer", None)
    return attached if attached is not None else load_tokenizer(DEFAULT_TOKENIZER)


def load_model_and_tokenizer(source: Any, tokenizer: Any = None, *, device: str | None = "auto",
                             dtype: torch.dtype | str | None = None, seed: int | None = None,
                             overrides: dict[str, Any] | None = None) -> LoadedModel:
    """The model on `device` (auto: CUDA when available) in `dtype` (auto: bf16 on a GPU, fp32 on CPU) with its
    tokenizer. A live model object stays where the caller put it unless `device` is given explicitly (not auto)."""
    if not isinstance(source, (str, os.PathLike)):
        if device not in (None, "auto"):
            source = source.to(resolve_device(device))
        return LoadedModel(source, load_tokenizer_for(source, tokenizer), type(source).__name__)
    device = resolve_device(device)
    name = str(source)
    model = load_model(name, dtype=resolve_dtype(dtype, device), device=device, seed=seed, overrides=overrides)
    description = f"preset:{name}" if name in PRESETS and not Path(name).is_dir() else name
    return LoadedModel(model.to(device), load_tokenizer_for(source, tokenizer), description)
