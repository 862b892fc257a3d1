"""MoE expert compute, forward + backward, bf16, one GPU: mixlab's fused grouped path against `torch._grouped_mm`
with torch glue (the peer), the per-expert loop (the reference), and a dense SwiGLU GEMM doing the same active FLOPs
(the floor), in the same run. Each variant is first checked against the reference on the same inputs.

Shapes: `1b-a150m` (8,192 tokens, D 1024, I 384, 48 experts top-3) and the official Kimi Linear shape (16,384
tokens, D 2304, I 1024, 256 experts top-8; the loop is timed with few iterations there: it takes about a second).

Usage: python bench/bench_moe.py [--out bench/results/moe.json]
"""

from __future__ import annotations

import argparse
import json
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from mixlab.kernels import moe_experts_grouped, moe_experts_reference, moe_route

SHAPES = {
    "1b-a150m": dict(N=8192, D=1024, I=384, E=48, k=3),
    "official": dict(N=16384, D=2304, I=1024, E=256, k=8),
}


def inputs(N, D, I, E, k, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(N, D, device="cuda", generator=gen).bfloat16()
    w1 = (torch.randn(E, I, D, device="cuda", generator=gen) * D**-0.5).bfloat16()
    w3 = (torch.randn(E, I, D, device="cuda", generator=gen) * D**-0.5).bfloat16()
    w2 = (torch.randn(E, D, I, device="cuda", generator=gen) * I**-0.5).bfloat16()
    logits = torch.randn(N, E, device="cuda", generator=gen)
    idx, w = moe_route(logits, torch.zeros(E, device="cuda"), k, scaling=2.446)
    return x, w1, w3, w2, idx, w


def fwd_bwd(fn, x, w1, w3, w2, idx, w, dy):
    leaves = [t.detach().requires_grad_(True) for t in (x, w1, w3, w2, w)]
    y = fn(*leaves[:4], idx, leaves[4])
    grads = torch.autograd.grad(y, leaves, dy)
    return y, grads


def dense_same_flops(x, w1, w3, w2, idx, w, dy):
    """SwiGLU over N·k rows with one expert's weights: the same GEMM FLOPs as the routed experts, no routing."""
    N, k = idx.shape
    xs = x.detach().repeat_interleave(k, 0).requires_grad_(True)
    a, b, c = (t[0].detach().requires_grad_(True) for t in (w1, w3, w2))
    y = F.linear(F.silu(F.linear(xs, a)) * F.linear(xs, b), c)
    torch.autograd.grad(y, (xs, a, b, c), dy.repeat_interleave(k, 0))


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results/moe.json")
    parser.add_argument("--shapes", default="1b-a150m,official")
    args = parser.parse_args()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    variants = {
        "fused_grouped": lambda *a: moe_experts_grouped(*a, fused=True),
        "grouped_mm_peer": lambda *a: moe_experts_grouped(*a, fused=False),
        "per_expert_loop": moe_experts_reference,
    }
    for shape in args.shapes.split(","):
        dims = SHAPES[shape]
        try:
            x, w1, w3, w2, idx, w = inputs(**dims)
            dy = torch.randn(x.shape, device="cuda").bfloat16()
            row = {"shape": shape, **dims}
            y_ref, g_ref = fwd_bwd(moe_experts_reference, x, w1, w3, w2, idx, w, dy)
            for name, fn in variants.items():
                y, g = fwd_bwd(fn, x, w1, w3, w2, idx, w, dy)
                row[f"{name}_rel_err"] = {"y": rel(y, y_ref), **{n: rel(a, b) for n, a, b in
                                                                  zip(("x", "w1", "w3", "w2", "w"), g, g_ref)}}
                reps = 3 if name == "per_expert_loop" and shape == "official" else None
                kw = dict(warmup=1, rep=1) if reps else dict(warmup=25, rep=200)
                row[f"{name}_ms"] = do_bench(lambda: fwd_bwd(fn, x, w1, w3, w2, idx, w, dy), return_mode="median",
                                             **kw)
            row["dense_same_flops_ms"] = do_bench(lambda: dense_same_flops(x, w1, w3, w2, idx, w, dy),
                                                  return_mode="median", warmup=25, rep=200)
            row["fused_vs_grouped_mm_speedup"] = row["grouped_mm_peer_ms"] / row["fused_grouped_ms"]
            row["fused_over_dense"] = row["fused_grouped_ms"] / row["dense_same_flops_ms"]
            row["fused_vs_loop_speedup"] = row["per_expert_loop_ms"] / row["fused_grouped_ms"]
            N, D, I, k = dims["N"], dims["D"], dims["I"], dims["k"]
            row["fused_tflops"] = 3 * 2 * N * k * 3 * D * I / (row["fused_grouped_ms"] * 1e-3) / 1e12
        except Exception as exc:
            traceback.print_exc()
            row = {"shape": shape, "error": repr(exc)[:500]}
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
        out.write_text(json.dumps(results, indent=2))
        torch.cuda.empty_cache()
    print(f"\n{results['device']}  MoE experts fwd+bwd bf16 (ms, median)")
    for r in results["rows"]:
        if "error" in r:
            print(r["shape"], "ERROR", r["error"][:100])
            continue
        print(f"{r['shape']:>9}: fused {r['fused_grouped_ms']:.3f}  grouped_mm {r['grouped_mm_peer_ms']:.3f}  "
              f"loop {r['per_expert_loop_ms']:.1f}  dense {r['dense_same_flops_ms']:.3f}  "
              f"(x{r['fused_vs_grouped_mm_speedup']:.2f} vs grouped_mm, {r['fused_over_dense']:.2f}x dense)")


if __name__ == "__main__":
    main()
