"""`load_model(preset_or_path)`: a fresh preset init, or an official-format checkpoint folder."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mixlab.errors import MixlabError

from .checkpoint import _resolve_dtype
from .modeling import KimiLinearForCausalLM
from .presets import PRESETS, get_preset


def load_model(preset_or_path: str | os.PathLike, dtype: torch.dtype | str | None = None,
               device: torch.device | str | None = None, seed: int | None = None) -> KimiLinearForCausalLM:
    """A preset name gives a freshly initialised model (seeded when `seed` is given); a folder loads its weights.

    A folder's tokenizer (if it has one) is attached as `model.mixlab_tokenizer` and saved with the model.
    """
    name = str(preset_or_path)
    if name in PRESETS and not Path(name).is_dir():
        config = get_preset(name)
        if seed is not None:
            torch.manual_seed(seed)
        model = KimiLinearForCausalLM(config)
        model = model.to(device=device or "cpu", dtype=_resolve_dtype(dtype, config))
        return model
    path = Path(name)
    if not path.exists():
        import difflib

        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" (did you mean preset {close[0]!r}?)" if close else ""
        raise MixlabError(f"{name}: neither a model preset ({', '.join(PRESETS)}) nor an existing folder{hint}")
    model = KimiLinearForCausalLM.from_pretrained(path, dtype=dtype, device=device)
    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
        try:
            from .tokenizer import load_tokenizer

            model.mixlab_tokenizer = load_tokenizer(path)
        except Exception:  # official checkpoints ship a remote-code tokenizer; loading it is the caller's choice
            pass
    return model
