"""How far two equally valid trainings drift apart in bf16: the yardstick for the loss-agreement deviations.

`bench_loss_agreement.py` compares the reference and the fast path of `1b-a150m` on a GPU; on the learnable chain the
fast path's loss curve ran ~8 steps behind the reference's through the fast descent (largest |Δ| 0.97). This script
asks, on CPU and without any of mixlab's GPU kernels, how large such a drift is when nothing but rounding differs:
the same model, init, data and optimizer trained (a) on the reference path in bf16, (b) in fp32, and (c) in bf16
with the MoE experts computed by a different but exact formulation (`moe_experts_fused`'s torch form: sorted grouped
GEMMs instead of the per-expert loop; equal to the loop within 2e-6 in fp32). (a)-(b) is what bf16 rounding does,
(a)-(c) what reordering the same sums does in bf16.

    python -P bench/bench_bf16_drift.py [--preset small] [--steps 250] [--batch 2] [--seq 512] \
        [--out bench/results/bf16_drift_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mixlab.kernels import moe as moe_kernels
from mixlab.model import get_preset, modeling

sys.path.insert(0, str(Path(__file__).parent))
from bench_loss_agreement import deviation, markov_batches, train  # noqa: E402  (the same data, loop and measure)


def _sorted_grouped_moe(x, w1, w3, w2, topk_idx, topk_weight):
    return moe_kernels.moe_experts_fused(x, w1, w3, w2, topk_idx, topk_weight, fused=False)


def train_cpu(preset: str, data: torch.Tensor, lr: float, dtype: torch.dtype, swap_moe: bool
              ) -> tuple[list[float], float]:
    """The reference path on CPU; swap_moe: its MoE experts through `_sorted_grouped_moe` instead of the loop."""
    original = modeling.moe_experts
    if swap_moe:  # the MoE block calls the name modeling imported
        modeling.moe_experts = _sorted_grouped_moe
    try:
        return train("torch", data, lr, dtype, preset=preset, device="cpu")
    finally:
        modeling.moe_experts = original


def summary(a: list[float], b: list[float]) -> dict:
    d = deviation(a, b)
    worst = max(range(len(d)), key=d.__getitem__)
    return {"max_abs_dev": d[worst], "max_abs_dev_step": worst, "mean_abs_dev_last20": sum(d[-20:]) / len(d[-20:])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", default="bench/results/bf16_drift_cpu.json")
    args = parser.parse_args()
    data = markov_batches(args.steps, args.batch, args.seq, get_preset(args.preset).vocab_size)
    runs = {}
    for name, dtype, swap in (("bf16", torch.bfloat16, False), ("fp32", torch.float32, False),
                              ("bf16_sorted_moe", torch.bfloat16, True)):
        runs[name], secs = train_cpu(args.preset, data, args.lr, dtype, swap)
        print(f"{name:<16} {secs:7.1f} s  loss {runs[name][0]:.3f} -> {runs[name][-1]:.3f}", flush=True)
    res = {"preset": args.preset, "steps": args.steps, "batch": args.batch, "seq": args.seq, "lr": args.lr,
           "torch_threads": torch.get_num_threads(),
           "bf16_vs_fp32": summary(runs["bf16"], runs["fp32"]),
           "bf16_vs_bf16_sorted_moe": summary(runs["bf16"], runs["bf16_sorted_moe"]),
           "losses": runs}
    print(json.dumps({k: v for k, v in res.items() if k != "losses"}))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
