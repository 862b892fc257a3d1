"""Training throughput of the demo model under TRL's SFTTrainer, beside a plain decoder peer, in one run.

Measures tokens/s (real tokens, padding excluded) for:
- `kimi-demo unpacked`: KimiLinearForCausalLM, `demo` preset, padded batches (what `make demo` uses on CPU);
- `kimi-demo packed`: the same with TRL's BFD padding-free packing (one flattened row per batch);
- `llama peer unpacked`: a transformers LlamaForCausalLM of about the same parameter count.
Prints ratios against the peer and writes bench/results/recipes.json with the device name.

    python bench/bench_recipes.py [--steps 8] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mixlab.device import describe_device


def _measure(model, tokenizer, dataset, *, packing: bool, steps: int, batch: int) -> dict:
    import trl
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_step_end(self, args, state, control, **kw):
            self.marks.append(time.perf_counter())

    timer = Timer()
    args = trl.SFTConfig(
        output_dir=tempfile.mkdtemp(), max_steps=steps + 2, per_device_train_batch_size=batch, max_length=128,
        packing=packing, loss_type="nll", assistant_only_loss=True, use_cpu=True, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True, learning_rate=1e-3,
    )
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=[timer])
    trainer.train()
    tokens = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e]
    elapsed = timer.marks[-1] - timer.marks[1]  # skip two warm-up steps
    n_tokens = tokens[-1] - tokens[1]
    return {"tokens_per_s": n_tokens / elapsed, "s_per_step": elapsed / (len(timer.marks) - 2),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    opts = parser.parse_args()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mixlab.mixtures import load_dataset
    from mixlab.model import KimiLinearForCausalLM, get_preset, load_tokenizer

    tokenizer = load_tokenizer("mixlab-bpe")
    dataset = load_dataset("demo-balanced", kind="sft").select_columns(["messages"])
    results = {}
    torch.manual_seed(0)
    for name, packing in (("kimi-demo unpacked", False), ("kimi-demo packed", True)):
        results[name] = _measure(KimiLinearForCausalLM(get_preset("demo")), tokenizer, dataset, packing=packing,
                                 steps=opts.steps, batch=opts.batch)
    peer = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512,
                                        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
    results["llama peer unpacked"] = _measure(peer, tokenizer, dataset, packing=False, steps=opts.steps,
                                              batch=opts.batch)
    base = results["llama peer unpacked"]["tokens_per_s"]
    for name, r in results.items():
        r["ratio_vs_peer"] = r["tokens_per_s"] / base
        print(f"{name:<22} {r['params_m']:.2f}M params  {r['tokens_per_s']:8.0f} tok/s  {r['s_per_step']:.3f} s/step"
              f"  x{r['ratio_vs_peer']:.2f} vs peer")
    out = Path(__file__).parent / "results" / "recipes.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": describe_device(), "batch": opts.batch, "steps": opts.steps, "results": results},
                              indent=2))
    print(f"device: {describe_device()}  -> {out}")


if __name__ == "__main__":
    main()
