"""Load a model and its chat tokenizer for local generation (torch and hf backends, `mixlab serve`, local judge).

`model_or_path` may be
- a model object (a `PreTrainedModel`), used as is (then pass `tokenizer=`);
- a mixlab preset name (`tiny`, `small`, ...): a fresh random init, useful for plumbing tests and demos;
- a checkpoint folder: a Kimi Linear checkpoint loads through `mixlab.model.load_model`, any other causal LM
  (e.g. a judge model) through `transformers.AutoModelForCausalLM`.
The tokenizer comes from the folder when it has one, else mixlab's default chat tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mixlab.errors import MixlabError


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MixlabError(f"device {device!r} requested but CUDA is not available")
    return device


def _folder_has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def load_tokenizer_for(model_or_path: Any, tokenizer: Any = None):
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        return tokenizer
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        if Path(tokenizer).is_dir():
            return AutoTokenizer.from_pretrained(str(tokenizer))
        from mixlab.model import load_tokenizer

        return load_tokenizer(str(tokenizer))
    if isinstance(model_or_path, (str, Path)) and Path(model_or_path).is_dir() and _folder_has_tokenizer(
        Path(model_or_path)
    ):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(model_or_path))
    try:
        from mixlab.model import load_tokenizer
    except ImportError as exc:
        raise MixlabError(f"no tokenizer given and mixlab.model.load_tokenizer is unavailable: {exc}") from exc
    return load_tokenizer()


def load_model_for(model_or_path: Any, *, device: str | None = None, dtype: Any = None):
    """Returns (model, description string), in eval mode. A path or preset is loaded on `device` (auto: CUDA if
    available) in `dtype` (auto: bf16 on GPU, fp32 on CPU)."""
    import torch

    if not isinstance(model_or_path, (str, Path)):
        # A live model object stays where the caller put it unless a device is named.
        if device is not None:
            model_or_path = model_or_path.to(resolve_device(device))
        model_or_path.eval()
        return model_or_path, type(model_or_path).__name__
    device = resolve_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    path = Path(model_or_path)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise MixlabError(f"checkpoint folder {path} has no config.json")
        model_type = json.loads(config_file.read_text()).get("model_type")
        if model_type == "kimi_linear":
            from mixlab.model import load_model

            model = load_model(str(path), dtype=dtype, device=device)
        else:  # any other causal LM, e.g. a judge model
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        desc = str(path)
    else:
        try:
            from mixlab.model import PRESETS, load_model
        except ImportError as exc:
            raise MixlabError(f"cannot load {model_or_path!r}: mixlab.model unavailable ({exc})") from exc
        if str(model_or_path) not in PRESETS:
            import difflib

            close = difflib.get_close_matches(str(model_or_path), list(PRESETS), n=1)
            hint = f" (did you mean preset {close[0]!r}?)" if close else ""
            raise MixlabError(
                f"checkpoint {model_or_path!r} is neither a folder nor a preset{hint}; presets: {sorted(PRESETS)}"
            )
        torch.manual_seed(0)  # a preset is a random init: make it the same one every time
        model = load_model(str(model_or_path), dtype=dtype, device=device)
        desc = f"preset:{model_or_path}"
    model = model.to(device)
    model.eval()
    return model, desc
