"""GRPO rollouts through mixlab's generation engine (continuous batching, paged hybrid cache, CUDA graphs).

`engine_grpo_trainer()` is TRL's `GRPOTrainer` whose transformers generation step (`_generate_single_turn`) runs on
`mixlab.evals.engine.Engine` when the policy is a Kimi Linear model. The engine works on the policy's own parameters
(no copy, no reload): the optimizer updates them in place between steps and the next rollout (and every captured
CUDA graph) sees the new weights. Completions follow TRL's contract: token ids, with the end-of-sequence token kept
when the sequence stopped on it. Anything the engine does not implement (vLLM, images, top-k / min-p / repetition
penalty, non-Kimi models, more than one process) falls back to TRL's own path.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import trl  # a lazy module: GRPOTrainer loads when engine_grpo_trainer() is first called

from mixlab.evals.backends.base import GenerationConfig

if TYPE_CHECKING:
    from mixlab.evals.engine import Engine


class EngineRollouts:
    """Mixin placed before `trl.GRPOTrainer` in the MRO (see `engine_grpo_trainer`)."""

    _mixlab_engine: "Engine | None" = None

    def _engine_supported(self, images) -> bool:
        model = self.accelerator.unwrap_model(self.model_wrapped)
        return (
            getattr(model.config, "model_type", None) == "kimi_linear"
            and not self.use_vllm
            and self.accelerator.num_processes == 1  # sharded (FSDP/DeepSpeed) weights: TRL's path gathers them
            and not images
            and not self.top_k  # None or 0: no top-k filter
            and not self.min_p
            and (self.repetition_penalty or 1.0) == 1.0
        )

    def _rollout_engine(self, rows: int, context: int) -> "Engine":
        engine = self._mixlab_engine
        if engine is None or engine.max_batch < rows or engine.max_context < context:
            # Imported here, not at the top: recipes.trainers imports this module, and recipe validation must not
            # pay for torch (the engine's import) before a GRPO trainer is actually built.
            from mixlab.evals.engine import Engine
            from mixlab.model.cache import PagedHybridCache  # lazy for the same reason: it imports torch

            model = self.accelerator.unwrap_model(self.model_wrapped)
            self._mixlab_engine = None  # free the old cache before allocating the new one
            # Budget for exactly this many rows at twice this context: the trainer needs the rest of the memory.

            dtype = next(model.parameters()).dtype
            blocks = rows * (-(-2 * context // 16))
            budget = (PagedHybridCache.bytes_per_slot(model.config, dtype) * (rows + 1)
                      + PagedHybridCache.bytes_per_block(model.config, 16, dtype) * (blocks + 1))
            engine = Engine(model, eos_ids=set(self.eos_token_ids), max_batch=rows, cache_bytes=budget,
                            max_context=2 * context)
            self._mixlab_engine = engine
        return engine

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if not self._engine_supported(images):
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        model = self.accelerator.unwrap_model(self.model_wrapped)
        context = max(len(p) for p in prompt_ids) + self.max_completion_length
        engine = self._rollout_engine(len(prompt_ids), context)
        # A new seed stream per step and process: rows of one step differ (per-row streams), steps differ too.
        seed = int(self.args.seed) * 1_000_003 + int(self.state.global_step) * 131 + self.accelerator.process_index
        cfg = GenerationConfig(max_new_tokens=self.max_completion_length, temperature=self.temperature or 0.0,
                               top_p=self.top_p if self.top_p is not None else 1.0, seed=seed)
        was_training = model.training
        model.eval()  # prefill must not count expert load for the router-bias update or build aux losses
        try:
            reqs = [engine.submit(ids, cfg, seed_key=i) for i, ids in enumerate(prompt_ids)]
            engine.run_until(lambda: all(r.done for r in reqs))
        finally:
            model.train(was_training)
        completion_ids = []
        for r in reqs:
            seq = r.seqs[0]
            completion_ids.append(seq.generated + ([seq.eos_token] if seq.eos_token is not None else []))
        return completion_ids, None


@functools.cache
def engine_grpo_trainer() -> type:
    """The `GRPOTrainer` subclass with engine rollouts (built on first use, so importing this module stays cheap)."""
    return type("EngineGRPOTrainer", (EngineRollouts, trl.GRPOTrainer), {"__module__": __name__})
