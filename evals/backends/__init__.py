"""Generation backends behind one interface (see `base.py` for the contract).

    backend = get_backend("torch", model_or_path="tiny")          # or a checkpoint folder / a model object
    backend.generate([[{"role": "user", "content": "2+2?"}]], GenerationConfig(max_new_tokens=16))  # -> list[str]

Backends: `torch` (mixlab's generation engine for Kimi Linear models — continuous batching over a paged cache, CUDA
graphs on GPU — and a plain decode loop for other causal LMs), `hf` (transformers `generate`, the peer),
`vllm` (offline vLLM, optional), `openai` (any OpenAI-compatible endpoint). Heavy imports happen on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from mixlab.errors import MixlabError
from mixlab.evals.backends.base import Backend, Generation, GenerationConfig, Messages, truncate_at_stop
from mixlab.yamlio import did_you_mean

__all__ = ["Backend", "Generation", "GenerationConfig", "Messages", "get_backend", "BACKENDS", "truncate_at_stop"]

BACKENDS: dict[str, str] = {
    "torch": "mixlab.evals.backends.torch_backend:TorchBackend",
    "hf": "mixlab.evals.backends.hf_backend:HFBackend",
    "vllm": "mixlab.evals.backends.vllm_backend:VLLMBackend",
    "openai": "mixlab.evals.backends.openai_backend:OpenAIBackend",
}


def get_backend(name: str, model_or_path: Any = None, tokenizer: Any = None, **opts: Any) -> Backend:
    if name not in BACKENDS:
        hint = did_you_mean(name, list(BACKENDS))
        raise MixlabError(f"unknown backend {name!r}{hint}; known: {sorted(BACKENDS)}")
    module_name, cls_name = BACKENDS[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(model_or_path, tokenizer, **opts)
