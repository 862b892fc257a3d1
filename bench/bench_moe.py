"""MoE expert compute, forward + backward, bf16, one GPU: mixlab's fused paths (`moe_experts_fused`: one autograd
Function, weight folded into the SwiGLU, with and without concatenated w1/w3;
`moe_experts_grouped` fused: autograd over grouped GEMMs + Triton SwiGLU/combine) against `torch._grouped_mm` with
torch glue (the peer), the per-expert loop (the reference), and a dense SwiGLU GEMM doing the same active FLOPs
(the floor), in the same run. Each variant is first checked against the reference on the same inputs.

Shapes: `1b-a150m` (8,192 tokens, D 1024, I 384, 48 experts top-3) and the official Kimi Linear shape (16,384
tokens, D 2304, I 1024, 256 experts top-8; the loop is timed with few iterations there: it takes about a second).

`--profile` adds a per-kernel GPU-time table (torch.profiler) of each fused variant at the 1b shape, split into
GEMM and glue; `graph` rows time the same fwd+bwd replayed as one CUDA graph (GPU time without launch overhead),
`host` rows the CPU time to issue one eager fwd+bwd (at 1b-a150m).

Usage: python bench/bench_moe.py [--out bench/results/moe.json] [--shapes 1b-a150m,official] [--profile]
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from mixlab.kernels import moe_experts, moe_experts_grouped, moe_experts_reference, moe_route
from mixlab.kernels.moe import moe_experts_fused

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
    """Forward + backward into fresh leaves' .grad, as a training step does: `backward` (not `autograd.grad`), so
    autograd's AccumulateGrad runs too and copies any strided gradient into a contiguous .grad (wave 9's joint dw1/dw3
    GEMM cost 1.5 ms per 1b-a150m step in copies that `autograd.grad` never made)."""
    leaves = [t.detach().requires_grad_(True) for t in (x, w1, w3, w2, w)]
    y = fn(*leaves[:4], idx, leaves[4])
    y.backward(dy)
    return y, [t.grad for t in leaves]


def dense_same_flops(x, w1, w3, w2, idx, w, dy):
    """SwiGLU over N·k rows with one expert's weights: the same GEMM FLOPs as the routed experts, no routing."""
    N, k = idx.shape
    xs = x.detach().repeat_interleave(k, 0).requires_grad_(True)
    a, b, c = (t[0].detach().requires_grad_(True) for t in (w1, w3, w2))
    y = F.linear(F.silu(F.linear(xs, a)) * F.linear(xs, b), c)
    y.backward(dy.repeat_interleave(k, 0))  # as fwd_bwd: into .grad


def graph_ms(step):
    """step() (a fwd+bwd) captured once as a CUDA graph, replays timed: GPU time without CPU launch overhead."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    return do_bench(g.replay, return_mode="median", warmup=25, rep=200)


def host_ms(step, n: int = 20, rounds: int = 5) -> float:
    """CPU time to issue one step() (ms; median over `rounds` of n calls, synced between rounds only: the GPU queue
    absorbs the work): where it exceeds the GPU time (the graph rows), the eager step is bound by its launches."""
    step()
    torch.cuda.synchronize()
    per = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        per.append((time.perf_counter() - t0) / n * 1e3)
        torch.cuda.synchronize()
    return sorted(per)[len(per) // 2]


def profile(fn, x, w1, w3, w2, idx, w, dy, iters=5):
    """GPU time per kernel (ms per fwd+bwd), summed over `iters` runs; GEMM = cutlass/cublas/gemm kernels."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    for _ in range(3):
        fwd_bwd(fn, x, w1, w3, w2, idx, w, dy)
    torch.cuda.synchronize()
    with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fwd_bwd(fn, x, w1, w3, w2, idx, w, dy)
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            totals[ev.name] = totals.get(ev.name, 0.0) + ev.device_time_total / 1e3 / iters
    is_gemm = lambda n: any(s in n.lower() for s in ("gemm", "cutlass", "sm90", "xmma", "cublas", "grouped"))
    top = sorted(totals.items(), key=lambda kv: -kv[1])
    return {"gemm_ms": sum(v for n, v in totals.items() if is_gemm(n)),
            "other_ms": sum(v for n, v in totals.items() if not is_gemm(n)), "top": top[:20]}


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results/moe.json")
    parser.add_argument("--shapes", default="1b-a150m,official")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--loop-official", action="store_true", help="also time the per-expert loop there (~10 s)")
    args = parser.parse_args()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    variants = {
        # peers first: a run cut by its time limit keeps them
        "fused_grouped": lambda *a: moe_experts_grouped(*a, fused=True),
        "grouped_mm_peer": lambda *a: moe_experts_grouped(*a, fused=False),
        "per_expert_loop": moe_experts_reference,
        "dispatch": moe_experts,  # what the model calls on CUDA
        "fn_cat": lambda *a: moe_experts_fused(*a, fused=True, cat_w13=True),
        "fn_nocat": lambda *a: moe_experts_fused(*a, fused=True, cat_w13=False),
        "fn_cat_torchsort": lambda *a: moe_experts_fused(*a, fused=True, cat_w13=True, triton_sort=False),
    }
    for shape in args.shapes.split(","):
        dims = SHAPES[shape]
        try:
            x, w1, w3, w2, idx, w = inputs(**dims)
            dy = torch.randn(x.shape, device="cuda").bfloat16()
            row = {"shape": shape, **dims}
            y_ref, g_ref = fwd_bwd(moe_experts_reference, x, w1, w3, w2, idx, w, dy)
            row["dense_same_flops_ms"] = do_bench(lambda: dense_same_flops(x, w1, w3, w2, idx, w, dy),
                                                  return_mode="median", warmup=25, rep=150)
            for name, fn in variants.items():
                if name == "per_expert_loop" and shape == "official" and not args.loop_official:
                    continue  # ~1.4 s per call; measured before: 1,427 ms on an H100
                y, g = fwd_bwd(fn, x, w1, w3, w2, idx, w, dy)
                row[f"{name}_rel_err"] = {"y": rel(y, y_ref), **{n: rel(a, b) for n, a, b in
                                                                  zip(("x", "w1", "w3", "w2", "w"), g, g_ref)}}
                reps = 3 if name == "per_expert_loop" and shape == "official" else None
                kw = dict(warmup=1, rep=1) if reps else dict(warmup=25, rep=150)
                row[f"{name}_ms"] = do_bench(lambda: fwd_bwd(fn, x, w1, w3, w2, idx, w, dy), return_mode="median",
                                             **kw)
                out.write_text(json.dumps({**results, "partial_row": row}, indent=2))  # survives a timeout
            try:  # graph rows are extra information: a failed capture must not lose the timings above
                if shape != "1b-a150m":
                    raise RuntimeError("graph rows only at the 1b shape (memory and time)")
                for name in ("fn_cat", "fused_grouped"):
                    row[f"{name}_graph_ms"] = graph_ms(lambda: fwd_bwd(variants[name], x, w1, w3, w2, idx, w, dy))
                row["dense_graph_ms"] = graph_ms(lambda: dense_same_flops(x, w1, w3, w2, idx, w, dy))
                for name in ("fn_cat", "fused_grouped", "dispatch"):
                    row[f"{name}_host_ms"] = host_ms(lambda: fwd_bwd(variants[name], x, w1, w3, w2, idx, w, dy))
                row["dense_host_ms"] = host_ms(lambda: dense_same_flops(x, w1, w3, w2, idx, w, dy))
            except Exception as exc:
                if shape == "1b-a150m":
                    traceback.print_exc()
                row["graph_error"] = repr(exc)[:300]
            best = min((n for n in variants if n.startswith(("fn_", "fused_")) and f"{n}_ms" in row),
                       key=lambda n: row[f"{n}_ms"])
            row["best"] = best
            row["best_vs_grouped_mm_speedup"] = row["grouped_mm_peer_ms"] / row[f"{best}_ms"]
            row["best_over_dense"] = row[f"{best}_ms"] / row["dense_same_flops_ms"]
            row["dispatch_over_dense"] = row["dispatch_ms"] / row["dense_same_flops_ms"]
            row["dispatch_vs_grouped_mm_speedup"] = row["grouped_mm_peer_ms"] / row["dispatch_ms"]
            row["fused_vs_grouped_mm_speedup"] = row["grouped_mm_peer_ms"] / row["fused_grouped_ms"]
            row["fused_over_dense"] = row["fused_grouped_ms"] / row["dense_same_flops_ms"]
            if "per_expert_loop_ms" in row:
                row["best_vs_loop_speedup"] = row["per_expert_loop_ms"] / row[f"{best}_ms"]
            N, D, I, k = dims["N"], dims["D"], dims["I"], dims["k"]
            row["best_tflops"] = 3 * 2 * N * k * 3 * D * I / (row[f"{best}_ms"] * 1e-3) / 1e12
            if args.profile and shape == "1b-a150m":
                row["profile"] = {}
                for n in ("fn_cat", "fused_grouped"):
                    try:
                        row["profile"][n] = profile(variants[n], x, w1, w3, w2, idx, w, dy)
                    except Exception:  # the timings above still count
                        traceback.print_exc()
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
        print(f"{r['shape']:>9}: " + "  ".join(f"{n[:-3]} {v:.3f}" for n, v in r.items()
                                                 if n.endswith("_ms") and not n.endswith("graph_ms")))
        print(f"{'':>9}  best={r['best']}: x{r['best_vs_grouped_mm_speedup']:.2f} vs grouped_mm, "
              f"{r['best_over_dense']:.2f}x dense; dispatch x{r['dispatch_vs_grouped_mm_speedup']:.2f} vs grouped_mm,"
              f" {r['dispatch_over_dense']:.2f}x dense")
        if "dense_graph_ms" in r:
            print(f"{'':>9}  as CUDA graphs: fn_cat {r['fn_cat_graph_ms']:.3f}  fused_grouped "
                  f"{r['fused_grouped_graph_ms']:.3f}  dense {r['dense_graph_ms']:.3f}")
        for name, prof in r.get("profile", {}).items():
            print(f"  profile {name}: GEMM {prof['gemm_ms']:.3f} ms, other {prof['other_ms']:.3f} ms per fwd+bwd")
            for kname, ms in prof["top"]:
                print(f"    {ms:8.4f}  {kname[:110]}")


if __name__ == "__main__":
    main()
