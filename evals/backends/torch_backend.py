"""mixlab's own generation: the continuous-batching engine for Kimi Linear models, a plain decode loop otherwise.

Kimi Linear checkpoints (the hybrid KDA + MLA model) go through `mixlab.evals.engine.Engine` by default: requests
join and leave one running batch, prefill runs the chunked forward, decode runs over a paged cache (KDA slot per
sequence, MLA latent blocks), as CUDA graphs on GPU. Any other transformers causal LM (e.g. a judge model), or
`engine=False`, uses the decode loop below: small enough to read, per-row seeded sampling (a row's sample does not
depend on which other prompts share its batch), and it drops finished rows from the batch when the cache supports
it, so long-tail answers do not keep short ones' compute alive.

Loop, per batch: left-pad the chat-templated prompts, prefill once (only the last position's logits), then one token
per step for every unfinished row. A row finishes on an end-of-turn token, on a stop string, or at
`max_new_tokens`. Position ids follow the attention mask (as transformers' `generate` does), so left padding
changes nothing. Both paths draw sampled tokens from the same per-row uniform streams (`engine/sampling.py`).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Sequence

from mixlab.errors import MixlabError
from mixlab.evals.backends.base import Backend, Generation, GenerationConfig, Messages, truncate_at_stop, validate_prompts
from mixlab.evals.engine import Engine
from mixlab.evals.engine.sampling import row_uniforms
from mixlab.model.loading import load_model_and_tokenizer


def encode_chat(tokenizer, conversation: Messages) -> list[int]:
    """Token ids of the chat-templated conversation plus the assistant generation prompt."""
    text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def eos_token_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if source is None:
            continue
        ids.update(source if isinstance(source, (list, tuple, set)) else [source])
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if end_of_turn is not None:
        ids.add(end_of_turn)
    if not ids:
        raise MixlabError("tokenizer has no eos token: generation could never stop before max_new_tokens")
    return ids


def sample_next(logits, cfg: GenerationConfig, uniforms=None):
    """Next token per row from fp32 logits [B, V]: argmax when greedy, else temperature + top-p sampling by
    inverse CDF with one pre-drawn uniform in (0, 1] per row (`uniforms` [B]), so that each row's draws come from
    its own seeded stream whatever batch it shares, with a single vectorised op per step."""
    import torch

    if cfg.greedy:
        return logits.argmax(dim=-1)
    logits = logits / cfg.temperature
    if cfg.top_p < 1.0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the top token always survives).
        drop = probs.cumsum(dim=-1) - probs > cfg.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, sorted_idx, sorted_logits)
    cdf = logits.softmax(dim=-1).cumsum(dim=-1)
    # Scale by the total so rounding can never push the draw past the last token; a zero-probability token has
    # the same cdf as its predecessor and so is never the first index reaching the draw (uniforms are > 0).
    target = (uniforms.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


class TorchBackend(Backend):
    name = "torch"

    def __init__(
        self,
        model_or_path: Any,
        tokenizer: Any = None,
        *,
        device: str | None = None,
        dtype: Any = None,
        batch_size: int = 16,
        compact: bool = True,
        progress: bool = False,
        engine: bool | None = None,
        cache_bytes: int | None = None,
        cuda_graphs: bool | None = None,
        max_context: int | None = None,
    ):
        """`engine`: use the continuous-batching engine (default: yes for Kimi Linear models); `batch_size` is then
        the most sequences decoding at once, `cache_bytes` the engine's cache budget (default: see engine.py)."""
        loaded = load_model_and_tokenizer(model_or_path, tokenizer, device=device, dtype=dtype, seed=0)
        self.model, self.tokenizer, self.model_desc = loaded.model.eval(), loaded.tokenizer, loaded.description
        if self.tokenizer.pad_token_id is None:
            raise MixlabError("tokenizer has no pad token; left-padded batching needs one")
        if batch_size < 1:
            raise MixlabError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.compact = compact
        self.progress = progress
        self.eos_ids = eos_token_ids(self.model, self.tokenizer)
        params = inspect.signature(self.model.forward).parameters
        self._takes_position_ids = "position_ids" in params
        self._takes_logits_to_keep = "logits_to_keep" in params
        # transformers >= 5.2x renamed `past_key_values` to `cache` on its own models; mixlab's keeps the old name.
        self._cache_kwarg = "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"
        is_kimi = getattr(self.model.config, "model_type", None) == "kimi_linear"
        if engine and not is_kimi:
            raise MixlabError(f"the generation engine serves Kimi Linear models, not {type(self.model).__name__}")
        self.use_engine = is_kimi if engine is None else bool(engine)
        self._engine_opts = {"cache_bytes": cache_bytes, "cuda_graphs": cuda_graphs, "max_context": max_context}
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        """The engine, built on first use (it allocates its whole cache budget up front)."""
        if self._engine is None:
            self._engine = Engine(self.model, eos_ids=self.eos_ids, max_batch=self.batch_size,
                                  decode_text=functools.partial(self.tokenizer.decode, skip_special_tokens=True),
                                  **self._engine_opts)
        return self._engine

    @property
    def device(self):
        return next(self.model.parameters()).device

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.model_desc,
            "device": str(self.device),
            "dtype": str(next(self.model.parameters()).dtype),
            "batch_size": self.batch_size,
            "engine": self.use_engine,
        }

    # -- public -------------------------------------------------------------------------------------------------

    def generate_detailed(self, prompts: Sequence[Messages], cfg: GenerationConfig) -> list[Generation]:
        validate_prompts(prompts)
        encoded = [encode_chat(self.tokenizer, conv) for conv in prompts]
        if self.use_engine:
            return self._generate_engine(encoded, cfg)
        # One row per (prompt, sample); longest first so batches pad little.
        rows = [(p, j) for p in range(len(prompts)) for j in range(cfg.n)]
        rows.sort(key=lambda r: -len(encoded[r[0]]))
        texts: dict[tuple[int, int], tuple[str, int, str]] = {}
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            results = self._generate_batch([encoded[p] for p, _ in chunk], [(p, j) for p, j in chunk], cfg)
            for key, result in zip(chunk, results):
                texts[key] = result
        out = []
        for p in range(len(prompts)):
            samples = [texts[(p, j)] for j in range(cfg.n)]
            out.append(
                Generation(
                    texts=[s[0] for s in samples],
                    prompt_tokens=len(encoded[p]),
                    output_tokens=[s[1] for s in samples],
                    finish_reasons=[s[2] for s in samples],
                )
            )
        return out

    def _generate_engine(self, encoded: list[list[int]], cfg: GenerationConfig) -> list[Generation]:
        if cfg.n > self.engine.max_batch:  # all n samples of a prompt decode together: make room for them
            self._engine = None
            self._engine = Engine(self.model, eos_ids=self.eos_ids, max_batch=cfg.n,
                                  decode_text=functools.partial(self.tokenizer.decode, skip_special_tokens=True),
                                  **self._engine_opts)
        outputs = self.engine.generate(encoded, cfg)
        out = []
        for ids, samples in zip(encoded, outputs):
            texts, reasons = [], []
            for tokens, reason in samples:
                text, stopped = truncate_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), cfg.stop)
                texts.append(text)
                reasons.append("stop" if reason == "stop" or stopped else "length")
            out.append(Generation(texts=texts, prompt_tokens=len(ids), output_tokens=[len(t) for t, _ in samples],
                                  finish_reasons=reasons))
        return out

    # -- the decode loop ------------------------------------------------------------------------------------------

    def _forward(self, input_ids, attention_mask, cache, *, first: bool):
        import torch

        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": True}
        if self._takes_position_ids:
            position_ids = attention_mask.long().cumsum(-1) - 1
            position_ids = position_ids.masked_fill(attention_mask == 0, 1)
            kwargs["position_ids"] = position_ids[:, -input_ids.shape[1] :]
        if self._takes_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        if cache is not None:
            kwargs[self._cache_kwarg] = cache
        elif first and hasattr(self.model, "new_cache"):
            kwargs[self._cache_kwarg] = self.model.new_cache(input_ids.shape[0])
        with torch.inference_mode():
            out = self.model(**kwargs)
        new_cache = getattr(out, "past_key_values", None)
        if new_cache is None:
            new_cache = getattr(out, "cache", None)
        if new_cache is None:
            raise MixlabError(f"{type(self.model).__name__}.forward returned no cache with use_cache=True")
        return out.logits[:, -1, :].float(), new_cache

    def _generate_batch(self, prompt_ids: list[list[int]], keys: list[tuple[int, int]], cfg: GenerationConfig):
        import torch

        device = self.device
        pad = self.tokenizer.pad_token_id
        batch = len(prompt_ids)
        width = max(len(ids) for ids in prompt_ids)
        input_ids = torch.full((batch, width), pad, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        for i, ids in enumerate(prompt_ids):
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, width - len(ids) :] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)

        uniforms = None if cfg.greedy else row_uniforms(keys, cfg.seed, cfg.max_new_tokens).to(device)
        pad_tensor = torch.tensor(pad, device=device)

        max_stop_chars = max((len(s) for s in cfg.stop), default=0)
        generated: list[list[int]] = [[] for _ in range(batch)]
        finish: list[str | None] = [None] * batch
        active = list(range(batch))  # original row index of each row still in the batch
        active_index = torch.arange(batch, device=device)

        logits, cache = self._forward(input_ids, attention_mask, None, first=True)
        for step in range(cfg.max_new_tokens):
            draws = None if uniforms is None else uniforms[active_index, step]
            next_tokens = sample_next(logits, cfg, draws)
            tokens = next_tokens.tolist()  # the one host sync per step
            for pos, row in enumerate(active):
                if finish[row] is not None:
                    continue
                if tokens[pos] in self.eos_ids:
                    finish[row] = "stop"
                    continue
                generated[row].append(tokens[pos])
                if max_stop_chars and self._hit_stop(generated[row], cfg.stop, max_stop_chars):
                    finish[row] = "stop"
            if step == cfg.max_new_tokens - 1:
                break
            keep = [pos for pos, row in enumerate(active) if finish[row] is None]
            if not keep:
                break
            if len(keep) < len(active) and self.compact:
                cache, compacted = self._select_rows(cache, keep)
                if compacted:
                    index = torch.tensor(keep, device=device)
                    next_tokens, attention_mask = next_tokens[index], attention_mask[index]
                    active = [active[pos] for pos in keep]
                    active_index = active_index[index]
            # Finished rows still in the batch are fed padding (as transformers' generate does); their output
            # is already fixed.
            finished = torch.tensor([finish[row] is not None for row in active], device=device)
            feed = torch.where(finished, pad_tensor, next_tokens)
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=1)
            logits, cache = self._forward(feed[:, None], attention_mask, cache, first=False)

        results = []
        for row in range(batch):
            text = self.tokenizer.decode(generated[row], skip_special_tokens=True)
            text, stopped = truncate_at_stop(text, cfg.stop)
            reason = "stop" if (finish[row] == "stop" or stopped) else "length"
            results.append((text, len(generated[row]), reason))
        return results

    def _hit_stop(self, ids: list[int], stop: Sequence[str], max_stop_chars: int) -> bool:
        # A token decodes to at least one byte and a character to at most four, so this tail covers any stop
        # string that ends at the newest token.
        tail = self.tokenizer.decode(ids[-(4 * max_stop_chars + 4) :], skip_special_tokens=True)
        return any(s and s in tail for s in stop)

    def _select_rows(self, cache, keep: list[int]):
        """Drop finished rows from the cache. Returns (cache, whether it was compacted)."""
        select = getattr(cache, "batch_select_indices", None)
        if select is None:
            self.compact = False
            return cache, False
        import torch

        try:
            select(torch.tensor(keep, device=self.device))
        except (NotImplementedError, AttributeError, TypeError):
            self.compact = False  # this cache cannot shrink: keep finished rows (fed padding) instead
            return cache, False
        return cache, True
