"""GRPO rollouts through the engine: TRL's trainer runs real steps on the hybrid with the engine generating."""

from __future__ import annotations

import math

import torch

from mixlab.evals.backends import GenerationConfig
from mixlab.evals.backends.torch_backend import encode_chat
from mixlab.model import load_model, load_tokenizer

from .test_engine import recompute_greedy


def test_engine_grpo_trainer_generates_and_trains(tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig

    from mixlab.recipes.grpo_engine import engine_grpo_trainer

    torch.manual_seed(0)
    model = load_model("tiny", dtype=torch.float32, device="cpu").train()
    tok = load_tokenizer()
    prompts = [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}]} for i in range(8)]
    seen = []

    def reward(completions, completion_ids=None, **_):
        seen.extend(completion_ids or [])
        return [float(len(c[0]["content"]) % 3) for c in completions]

    trainer = engine_grpo_trainer()(
        model=model, reward_funcs=reward, processing_class=tok, train_dataset=Dataset.from_list(prompts),
        args=GRPOConfig(output_dir=str(tmp_path / "grpo"), max_steps=2, num_generations=4, max_completion_length=8,
                        use_cpu=True, bf16=False, report_to=[], logging_steps=1, save_strategy="no",
                        disable_tqdm=True, per_device_train_batch_size=4, learning_rate=1e-2),
    )
    trainer.train()
    engine = trainer._mixlab_engine
    assert engine is not None and engine.stats["decode_rows"] > 0  # rollouts came from the engine
    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logs) == 2 and all(math.isfinite(h["grad_norm"]) and h["completions/mean_length"] > 0 for h in logs)
    assert len({tuple(c) for c in seen}) > 1  # rows of a group sample differently
    # The engine decodes with the trained weights in place (no reload): greedy equals recomputation now.
    model.eval()
    ids = encode_chat(tok, prompts[0]["prompt"])
    got = engine.generate([ids], GenerationConfig(max_new_tokens=8))[0][0]
    assert got == recompute_greedy(model, ids, 8, engine.eos_ids)
