"""transformers `model.generate` as the correctness and speed peer of the torch backend.

Same chat templating, left padding, end-of-turn ids and stop-string truncation as `TorchBackend`, so greedy outputs
must match token for token. Sampling uses torch's global RNG (seeded per batch), so sampled text differs from the
torch backend's per-row seeded draws.
"""

from __future__ import annotations

from typing import Any, Sequence

from mixlab.errors import MixlabError
from mixlab.evals.backends.base import Backend, Generation, GenerationConfig, Messages, truncate_at_stop, validate_prompts
from mixlab.evals.backends.torch_backend import encode_chat, eos_token_ids
from mixlab.model.loading import load_model_and_tokenizer


class HFBackend(Backend):
    name = "hf"

    def __init__(
        self,
        model_or_path: Any,
        tokenizer: Any = None,
        *,
        device: str | None = None,
        dtype: Any = None,
        batch_size: int = 16,
    ):
        loaded = load_model_and_tokenizer(model_or_path, tokenizer, device=device, dtype=dtype, seed=0)
        self.model, self.tokenizer, self.model_desc = loaded.model.eval(), loaded.tokenizer, loaded.description
        if self.tokenizer.pad_token_id is None:
            raise MixlabError("tokenizer has no pad token; left-padded batching needs one")
        self.batch_size = batch_size
        self.eos_ids = sorted(eos_token_ids(self.model, self.tokenizer))

    def describe(self) -> dict[str, Any]:
        import transformers

        return {
            "backend": self.name,
            "model": self.model_desc,
            "device": str(next(self.model.parameters()).device),
            "batch_size": self.batch_size,
            "transformers": transformers.__version__,
        }

    def generate_detailed(self, prompts: Sequence[Messages], cfg: GenerationConfig) -> list[Generation]:
        import torch

        validate_prompts(prompts)
        encoded = [encode_chat(self.tokenizer, conv) for conv in prompts]
        order = sorted(range(len(prompts)), key=lambda p: -len(encoded[p]))
        results: dict[int, Generation] = {}
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        for batch_no, start in enumerate(range(0, len(order), self.batch_size)):
            chunk = order[start : start + self.batch_size]
            width = max(len(encoded[p]) for p in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for i, p in enumerate(chunk):
                ids = encoded[p]
                input_ids[i, width - len(ids) :] = torch.tensor(ids)
                attention_mask[i, width - len(ids) :] = 1
            kwargs: dict[str, Any] = dict(
                max_new_tokens=cfg.max_new_tokens,
                eos_token_id=self.eos_ids,
                pad_token_id=pad,
                num_return_sequences=cfg.n,
            )
            if cfg.greedy:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            else:
                kwargs.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
                torch.manual_seed(cfg.seed + batch_no)
            if cfg.stop:
                kwargs.update(stop_strings=list(cfg.stop), tokenizer=self.tokenizer)
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **kwargs
                )
            new_tokens = out[:, width:].tolist()
            for i, p in enumerate(chunk):
                texts, counts, reasons = [], [], []
                for j in range(cfg.n):
                    ids = new_tokens[i * cfg.n + j]
                    # Cut at the first end-of-turn token; what follows is padding.
                    n_out, ended = len(ids), False
                    for k, tok in enumerate(ids):
                        if tok in self.eos_ids:
                            n_out, ended = k, True
                            break
                    text = self.tokenizer.decode(ids[:n_out], skip_special_tokens=True)
                    text, stopped = truncate_at_stop(text, cfg.stop)
                    texts.append(text)
                    counts.append(n_out)
                    reasons.append("stop" if ended or stopped else "length")
                results[p] = Generation(texts, len(encoded[p]), counts, reasons)
        return [results[p] for p in range(len(prompts))]
