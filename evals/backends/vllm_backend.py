"""Offline vLLM (`vllm.LLM`) for GPU hosts and official-size checkpoints. Optional: imported lazily.

vLLM serves `KimiLinearForCausalLM` natively from the official weight names, which is why mixlab checkpoints are
written as full merged weights with those names.
"""

from __future__ import annotations

from typing import Any, Sequence

from mixlab.errors import MixlabError
from mixlab.evals.backends.base import Backend, Generation, GenerationConfig, Messages, truncate_at_stop, validate_prompts


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, model_or_path: Any, tokenizer: Any = None, **llm_kwargs: Any):
        try:
            import vllm
        except ImportError as exc:
            raise MixlabError(
                "backend 'vllm' needs vLLM, which is not installed: `pip install 'mixlab[vllm]'` on a GPU host "
                "(or use --backend torch)"
            ) from exc
        if not isinstance(model_or_path, str):
            raise MixlabError("backend 'vllm' needs a checkpoint folder or hub name, not a model object")
        self._vllm = vllm
        llm_kwargs.setdefault("trust_remote_code", True)
        if tokenizer is not None:
            llm_kwargs["tokenizer"] = str(tokenizer)
        self.model_path = model_or_path
        self.llm = vllm.LLM(model=model_or_path, **llm_kwargs)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_path, "vllm": self._vllm.__version__}

    def generate_detailed(self, prompts: Sequence[Messages], cfg: GenerationConfig) -> list[Generation]:
        validate_prompts(prompts)
        params = self._vllm.SamplingParams(
            n=cfg.n,
            temperature=0.0 if cfg.greedy else cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.max_new_tokens,
            stop=list(cfg.stop) or None,
            seed=cfg.seed,
        )
        outputs = self.llm.chat([list(p) for p in prompts], params, use_tqdm=True)
        gens = []
        for out in outputs:
            texts, counts, reasons = [], [], []
            for c in out.outputs:
                text, _ = truncate_at_stop(c.text, cfg.stop)
                texts.append(text)
                counts.append(len(c.token_ids))
                reasons.append("length" if c.finish_reason == "length" else "stop")
            gens.append(Generation(texts, len(out.prompt_token_ids or []), counts, reasons))
        return gens
