"""The engine's MoE decode experts (decode_moe_triton.experts_triton) at the 1b-a150m shape: a sweep of the expert
kernels' launch table (EXPERT_LAUNCH) against the gather reference, in the same run, each timed as a CUDA graph
replay (as the engine runs it; `bench_moe.graph_ms`). Prints ms per call, the weight bandwidth it reaches and each
candidate's largest deviation from the current default.

    python3 -P bench/bench_decode_moe.py --rows 64 --out bench/results/decode_moe.json   # on a GPU
    python3 -P bench/bench_decode_moe.py --aot     # on CPU: shared memory, registers and spills for sm_90 (ptxas)
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

from mixlab.kernels import decode_moe_triton as dm
from mixlab.kernels.decode_moe import moe_experts_gather

sys.path.insert(0, str(Path(__file__).parent))
from bench_moe import graph_ms  # noqa: E402  (CUDA-graph replay timing, as the engine replays the step)

# 1b-a150m: d 1024, 48 routed experts top-3 + 1 shared, expert width 384
D, I, E, TOP_K, IS = 1024, 384, 48, 3, 384

# Candidates: weight tiles x warps x pipeline stages. The weight tiles stream through Triton's software pipeliner
# (async copies, `num_stages` deep) once the JIT knows the row strides are multiples of 16; --aot compiles them with
# those hints (ALIGNED) and reports shared memory, registers and spills for sm_90.
UP = [dict(BI=bi, BD=bd, num_warps=w, num_stages=s)
      for (bi, bd), w, s in itertools.product(((32, 64), (64, 64), (32, 128), (64, 128)), (4, 8), (2, 3, 4))
      if (bi, bd, s) != (64, 128, 4)]  # spills
DOWN = [dict(BI=bi, BD=bd, num_warps=w, num_stages=s)
        for (bi, bd), w, s in itertools.product(((64, 32), (128, 32), (64, 64), (128, 64)), (4, 8), (2, 3, 4))]
# The integer arguments that are multiples of 16 at this shape and 64 rows (the JIT specialises them so).
ALIGNED = ("sx", "N", "NK", "E", "D", "I", "IS")


def aot_report() -> dict:
    """Resources of every candidate compiled for sm_90 (no GPU needed), bf16 weights."""
    from mixlab.kernels.kda_triton_aot import compile_kernel, resources

    dt = "*bf16"
    sig_up = dict(X=dt, sx="i32", W1=dt, W3=dt, LISTS="*i32", COUNTS="*i32", H=dt, WS1=dt, WS3=dt, HS=dt, N="i32",
                  NK="i32", E="i32", D="i32", I="i32", IS="i32")
    sig_down = dict(H=dt, W2=dt, LISTS="*i32", COUNTS="*i32", Y=dt, HS=dt, WS2=dt, YS=dt, N="i32", NK="i32",
                    E="i32", D="i32", I="i32", IS="i32")
    out = {}
    for kind, fn, sig, extra, cands in (("up", dm._up_kernel, sig_up, dict(K=TOP_K), UP),
                                        ("down", dm._down_kernel, sig_down, {}, DOWN)):
        for c in cands:
            tiles = dict(BI=c["BI"], BD=c["BD"])
            opts = dict(num_warps=c["num_warps"], num_stages=c["num_stages"])
            r = resources(compile_kernel(fn, sig, dict(BT_=dm.BT, LOWP=True, **extra, **tiles), 90, opts, ALIGNED))
            out[f"{kind} {json.dumps(c)}"] = r
            print(f"{kind:<5} {c} {r}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="64", help="comma-separated decode batch sizes")
    parser.add_argument("--out", default="bench/results/decode_moe.json")
    parser.add_argument("--aot", action="store_true", help="CPU: compile the candidates for sm_90 and report")
    parser.add_argument("--budget-s", type=float, default=120.0, help="stop the sweep after this long")
    args = parser.parse_args()
    if args.aot:
        report = aot_report()
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
        return
    t_start = time.time()
    dev, dt = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    w1, w3 = (torch.randn(E, I, D, device=dev, dtype=dt, generator=g) * D ** -0.5 for _ in range(2))
    w2 = torch.randn(E, D, I, device=dev, dtype=dt, generator=g) * I ** -0.5
    shared = tuple(torch.randn(*s, device=dev, dtype=dt, generator=g) * s[1] ** -0.5
                   for s in ((IS, D), (IS, D), (D, IS)))
    default = {k: dict(v) for k, v in dm.EXPERT_LAUNCH.items()}
    result = {"gpu": torch.cuda.get_device_name(0), "default": default, "rows": {}}
    for N in (int(r) for r in args.rows.split(",")):
        x = torch.randn(N, D, device=dev, dtype=dt, generator=g)
        idx = torch.stack([torch.randperm(E, device=dev, generator=g)[:TOP_K] for _ in range(N)])
        weight = torch.rand(N, TOP_K, device=dev, generator=g)
        hit = int(idx.unique().numel())
        weight_bytes = (hit * 3 * I * D + 3 * IS * D) * 2  # each chosen expert + the shared expert, bf16

        def fused():
            return dm.experts_triton(x, w1, w3, w2, idx, weight, shared)

        def reference():
            gate, up, down = shared
            y = moe_experts_gather(x, w1, w3, w2, idx, weight)
            return y + torch.nn.functional.linear(torch.nn.functional.silu(x @ gate.T) * (x @ up.T), down)

        want = fused().float()
        ref_ms = graph_ms(reference)
        row = {"hit_experts": hit, "weight_MB": weight_bytes / 1e6, "reference_ms": ref_ms, "up": [], "down": []}
        base_ms = graph_ms(fused)
        row["default_ms"] = base_ms
        print(f"N={N}: {hit} experts hit, {weight_bytes / 1e6:.1f} MB of weights; reference {ref_ms:.3f} ms, "
              f"default {base_ms:.3f} ms ({weight_bytes / base_ms / 1e9:.2f} TB/s)", flush=True)
        # One kernel's table entry at a time, the other at its default; then the best pair together.
        for kind, cands in (("up", UP), ("down", DOWN)):
            for c in cands:
                if time.time() - t_start > args.budget_s:
                    print(f"budget spent: {kind} sweep cut short", flush=True)
                    break
                dm.EXPERT_LAUNCH = {**default, kind: c}
                try:
                    max_dev = (fused().float() - want).abs().max().item()
                    ms = graph_ms(fused)
                except Exception as e:  # a candidate over the shared memory fails at launch: record, go on
                    row[kind].append({"config": c, "error": f"{type(e).__name__}: {str(e)[:120]}"})
                    continue
                row[kind].append({"config": c, "ms": ms, "max_abs_dev": max_dev})
            ok = [r for r in row[kind] if "ms" in r]
            if ok:
                best = min(ok, key=lambda r: r["ms"])
                row[f"best_{kind}"] = best
                print(f"  best {kind}: {best['config']} {best['ms']:.3f} ms (default {base_ms:.3f}), "
                      f"max dev {best['max_abs_dev']:.2e}", flush=True)
        if "best_up" in row and "best_down" in row:
            dm.EXPERT_LAUNCH = {"up": row["best_up"]["config"], "down": row["best_down"]["config"]}
            row["best_pair_ms"] = graph_ms(fused)
            row["best_pair_max_abs_dev"] = (fused().float() - want).abs().max().item()
            print(f"  best pair: {row['best_pair_ms']:.3f} ms = {base_ms / row['best_pair_ms']:.2f}x the default, "
                  f"{ref_ms / row['best_pair_ms']:.2f}x the reference, "
                  f"{weight_bytes / row['best_pair_ms'] / 1e9:.2f} TB/s", flush=True)
        dm.EXPERT_LAUNCH = default
        result["rows"][N] = row
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
