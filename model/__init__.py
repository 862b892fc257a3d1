"""mixlab.model: the Kimi Linear hybrid (KDA + MLA + MoE) as a trainable transformers model.

    from mixlab.model import KimiLinearConfig, KimiLinearForCausalLM, get_preset, PRESETS, load_tokenizer, load_model
    from mixlab.model import load_model_and_tokenizer    # the one loader: model + tokenizer on the resolved device

Names are resolved lazily so that `mixlab --help` (which imports `mixlab.model.cli`) does not pay for torch and
transformers. Importing `mixlab.model.modeling` — which every name below does — registers `kimi_linear` with
transformers' AutoConfig / AutoModel / AutoModelForCausalLM, so `AutoModelForCausalLM.from_pretrained(folder)` works
on a folder mixlab saved (no remote code needed).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "KimiLinearCache": "cache",
    "KimiLinearConfig": "config",
    "load_model": "loading",
    "load_model_and_tokenizer": "loading",
    "KimiLinearForCausalLM": "modeling",
    "KimiLinearModel": "modeling",
    "KimiLinearPreTrainedModel": "modeling",
    "PRESETS": "presets",
    "get_preset": "presets",
    "load_tokenizer": "tokenizer",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    importlib.import_module(f"{__name__}.modeling")  # registers the Auto classes
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = sorted(_EXPORTS)
