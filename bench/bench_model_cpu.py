"""CPU training-step throughput of the hybrid model vs a plain Llama decoder of the same width (the peer).

Both models: 4 layers, d=128, vocab 1024, fp32, AdamW; batch 32 x 96 tokens (the CPU demo's shape). The hybrid is
the `demo` preset (3 KDA + 1 MLA, 4 experts top-2 + shared); the peer is transformers' LlamaForCausalLM with a
dense SwiGLU MLP sized to the hybrid's *active* FFN width. Steps are interleaved (hybrid, peer, hybrid, ...) so
machine load hits both alike; the median step time is reported, and the ratio hybrid / peer.

Usage: python bench/bench_model_cpu.py [--steps 6] [--threads 1] [--out bench/results/model_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mixlab.device import cpu_name


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=96)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "model_cpu.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import LlamaConfig, LlamaForCausalLM

    from mixlab.model import load_model

    torch.manual_seed(0)
    hybrid = load_model("demo", seed=0).train()
    cfg = hybrid.config
    active_ffn = cfg.moe_intermediate_size * (cfg.num_experts_per_token + cfg.num_shared_experts)
    peer = LlamaForCausalLM(LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=active_ffn,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=args.seqlen, tie_word_embeddings=False,
    )).train()
    models = {"hybrid": hybrid, "llama_peer": peer}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in models.items()}
    ids = torch.randint(0, cfg.vocab_size - 8, (args.batch, args.seqlen))
    times: dict[str, list[float]] = {k: [] for k in models}
    for step in range(args.steps + 1):
        for name, model in models.items():
            t0 = time.perf_counter()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opts[name].step()
            opts[name].zero_grad()
            if step:  # step 0 is warm-up
                times[name].append(time.perf_counter() - t0)
    tokens = args.batch * args.seqlen
    result = {
        "device": f"cpu: {cpu_name()} ({args.threads} threads)",
        "torch": torch.__version__,
        "shape": [args.batch, args.seqlen],
        "params": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
        "median_step_s": {k: statistics.median(v) for k, v in times.items()},
        "tokens_per_s": {k: tokens / statistics.median(v) for k, v in times.items()},
    }
    result["hybrid_over_peer_step_time"] = result["median_step_s"]["hybrid"] / result["median_step_s"]["llama_peer"]
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
