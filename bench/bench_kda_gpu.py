"""GPU benchmark (CUDA only): torch-reference chunk_kda vs fla's Triton chunk_kda vs SDPA, forward+backward;
with --issue, mixlab's own Triton KDA vs fla vs the torch reference at the issue's shape (H=32, K=V=128, 16k tokens).

Shape of the `1b-a150m` preset's KDA layers (H=8, K=V=128) at B=4, T=2048, bf16 inputs. Writes
bench/results/kda_gpu.json with the GPU name. fla rows are skipped when fla-core is not installed.

    python bench/bench_kda_gpu.py [--T 2048] [--B 4]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from mixlab.kernels import chunk_kda_torch, fla_available


def cuda_time(fn, reps=10) -> float:
    if not torch.cuda.is_available():  # CPU smoke runs (--device cpu): wall-clock
        import time

        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[len(times) // 2]
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _limit_autotune(n: int) -> None:
    """Keep at most n configs per `triton.autotune` defined from now on (num_warps=4 first): caps fla's first-use
    autotuning (~170 s at H=32 otherwise) to fit a short device call. Must run before fla is imported."""
    import triton

    orig = triton.autotune

    def limited(configs, *a, **kw):
        ranked = sorted(configs, key=lambda c: (c.num_warps != 4, c.num_stages))
        return orig(ranked[:n], *a, **kw)

    triton.autotune = limited


def kernel_breakdown(step, top: int = 12) -> dict[str, float]:
    """GPU time per kernel name (ms, one call of `step`), the `top` largest plus the total: where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    times: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            times[e.name[:60]] = times.get(e.name[:60], 0.0) + e.device_time_total / 1e3
    ranked = dict(sorted(times.items(), key=lambda kv: -kv[1])[:top])
    return {"total_ms": round(sum(times.values()), 3), **{n: round(t, 3) for n, t in ranked.items()}}


def _rel(a, b) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def issue_compare(args) -> None:
    """The issue's KDA target: H=32, K=V=128, 16k tokens per batch at T=2k / 8k, forward and forward+backward:
    mixlab's Triton `chunk_kda_triton` vs fla's `chunk_kda` vs the torch chunked reference, bf16 q/k/v/β, fp32 g,
    both with the in-op q/k L2 norm. Also mixlab vs the torch reference (outputs and gradients) at each shape."""
    import time

    if args.fla_configs:
        _limit_autotune(args.fla_configs)
    from mixlab.kernels.kda_triton import chunk_kda_triton

    t_start = time.time()
    H, K, dev = args.issue_H, args.issue_K, args.device
    name = torch.cuda.get_device_name() if dev == "cuda" else dev
    out = {"device": name, "torch": torch.__version__, "H": H, "K": K, "tokens": args.tokens,
           "fla_autotune_configs_per_kernel": args.fla_configs or "all", "shapes": {}}
    for T in args.Ts:
        if time.time() - t_start > args.budget:
            print(f"budget of {args.budget} s spent: skipping T={T}")
            break
        B = max(1, args.tokens // T)
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, T, H, K, device=dev, dtype=torch.bfloat16) for _ in range(3))
        g = (-torch.rand(B, T, H, K, device=dev) * 0.2 - 0.01)
        beta = torch.rand(B, T, H, device=dev, dtype=torch.bfloat16)
        leaves = [t.requires_grad_(True) for t in (q, k, v, g, beta)]
        do = torch.randn(B, T, H, K, device=dev, dtype=torch.bfloat16)
        ops = {
            "mixlab_triton": lambda: chunk_kda_triton(*leaves, use_qk_l2norm=True)[0],
            "torch_chunk_c64": lambda: chunk_kda_torch(*leaves, use_qk_l2norm=True, chunk_size=64)[0],
        }
        if fla_available() and dev == "cuda":
            from fla.ops.kda import chunk_kda as fla_chunk_kda

            ops["fla"] = lambda: fla_chunk_kda(*leaves, use_qk_l2norm_in_kernel=True)[0]
        row, grads = {}, {}
        for op, fn in ops.items():
            t0 = time.time()
            try:
                o = fn()
                o.backward(do)
                grads[op] = [o.detach()] + [t.grad.clone() for t in leaves]
                for t in leaves:
                    t.grad = None

                def step(fn=fn):
                    fn().backward(do)
                    for t in leaves:
                        t.grad = None
                with torch.no_grad():
                    fwd = cuda_time(fn, reps=args.reps)
                row[op] = {"fwd_ms": fwd, "fwd_bwd_ms": cuda_time(step, reps=args.reps),
                           "first_call_s": round(time.time() - t0, 1)}
                if args.profile and dev == "cuda" and op != "torch_chunk_c64":
                    row[op]["kernels_fwd_bwd"] = kernel_breakdown(step)
            except Exception as e:  # report and go on: one device call must bring back every number it can
                row[op] = {"error": repr(e)[:300]}
            print(T, op, row[op], flush=True)
        for peer in ("torch_chunk_c64", "fla"):
            if "mixlab_triton" in grads and peer in grads:
                row[f"rel_err_vs_{peer}"] = {n: _rel(a, b) for n, a, b in zip(
                    ("o", "dq", "dk", "dv", "dg", "dbeta"), grads["mixlab_triton"], grads[peer])}
                print(T, "mixlab vs", peer, row[f"rel_err_vs_{peer}"], flush=True)
        if "fla" in grads and "torch_chunk_c64" in grads:  # fla's own bf16 error: the yardstick for mixlab's
            row["rel_err_fla_vs_torch_chunk_c64"] = {n: _rel(a, b) for n, a, b in zip(
                ("o", "dq", "dk", "dv", "dg", "dbeta"), grads["fla"], grads["torch_chunk_c64"])}
            print(T, "fla vs torch_chunk_c64", row["rel_err_fla_vs_torch_chunk_c64"], flush=True)
        if "fla" in row and "fwd_bwd_ms" in row.get("fla", {}) and "fwd_bwd_ms" in row["mixlab_triton"]:
            row["fla_over_mixlab_fwd_bwd"] = row["fla"]["fwd_bwd_ms"] / row["mixlab_triton"]["fwd_bwd_ms"]
            row["fla_over_mixlab_fwd"] = row["fla"]["fwd_ms"] / row["mixlab_triton"]["fwd_ms"]
            print(f"T={T} fla/mixlab: fwd+bwd {row['fla_over_mixlab_fwd_bwd']:.2f}x, "
                  f"fwd {row['fla_over_mixlab_fwd']:.2f}x", flush=True)
        out["shapes"][f"B{B}_T{T}"] = row
        del grads
        if dev == "cuda":
            torch.cuda.empty_cache()
        path = Path(args.out)  # after every shape: a run cut short still leaves its numbers
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=1))


# Launch variants timed by --sweep (mixlab only): one change each against the defaults in kda_triton.LAUNCH.
SWEEP = [
    {},
    {"qk_norm_16bit": False},  # fp32 q and k after the L2 norm (waves 4-7): what the 16-bit copies save
    {"_scores_off_fwd_kernel": {"num_warps": 4}, "_scores_off_bwd_kernel": {"num_warps": 8}},  # the wave-7 defaults
    {"_scores_off_fwd_kernel": {"num_warps": 1}},
    {"scores_off_bk": {"fwd": 64, "bwd": 128}},
    {"scores_off_bk": {"fwd": 32, "bwd": 64}},
    {"scores_bh": 4, "_scores_diag_fwd_kernel": {"num_warps": 2}, "_scores_diag_bwd_kernel": {"num_warps": 2}},
    {"_solve_fwd_kernel": {"num_warps": 4, "num_stages": 1}},
    {"store": "fp32"},  # fp32 intermediates for bf16 inputs: what the 16-bit storage saves (and costs in error)
    # last: at 4 warps / 1 stage with 32-wide V blocks the state kernels hit an illegal memory access on an H100
    # (wave 7; not seen with 64-wide blocks, the default since), which ends the process's CUDA context
    {"_state_fwd_kernel": {"num_warps": 4, "num_stages": 1}, "_state_bwd_kernel": {"num_warps": 4, "num_stages": 1}},
]


def sweep(args) -> None:
    """mixlab's fwd and fwd+bwd at one shape under each launch variant of SWEEP (what to change next)."""
    import time

    from mixlab.kernels import kda_triton
    from mixlab.kernels.kda_triton import chunk_kda_triton

    H, K, T = args.issue_H, args.issue_K, args.sweep_T
    B = max(1, args.tokens // T)
    torch.manual_seed(0)
    dev = args.device
    q, k, v = (torch.randn(B, T, H, K, device=dev, dtype=torch.bfloat16) for _ in range(3))
    g = -torch.rand(B, T, H, K, device=dev) * 0.2 - 0.01
    beta = torch.rand(B, T, H, device=dev, dtype=torch.bfloat16)
    leaves = [t.requires_grad_(True) for t in (q, k, v, g, beta)]
    do = torch.randn_like(v)
    default_launch = {n: dict(o) for n, o in kda_triton.LAUNCH.items()}
    default_store = kda_triton._store_dtype
    defaults = {name: getattr(kda_triton, name.upper())  # module constants a variant sets
                for name in ("scores_bh", "scores_off_bk", "state_bv", "solve_bd", "qk_norm_16bit")}
    out = {"device": torch.cuda.get_device_name() if dev == "cuda" else dev, "T": T, "B": B, "H": H, "K": K,
           "defaults": default_launch, "variants": []}
    t_start = time.time()
    for variant in SWEEP:
        if time.time() - t_start > args.budget:
            break
        kda_triton.LAUNCH.clear()
        kda_triton.LAUNCH.update({n: dict(o) for n, o in default_launch.items()})
        for const, value in defaults.items():
            setattr(kda_triton, const.upper(), variant.get(const, value))
        kda_triton._store_dtype = default_store if "store" not in variant else (lambda v: torch.float32)
        for name, opts in variant.items():
            if name not in defaults and name != "store":
                kda_triton.LAUNCH[name] = opts
        fn = lambda: chunk_kda_triton(*leaves, use_qk_l2norm=True)[0]  # noqa: E731

        def step():
            fn().backward(do)
            for t in leaves:
                t.grad = None
        try:
            step()
            with torch.no_grad():
                fwd = cuda_time(fn, reps=args.reps)
            row = {"variant": variant, "fwd_ms": fwd, "fwd_bwd_ms": cuda_time(step, reps=args.reps)}
            if args.profile and dev == "cuda":
                row["kernels_fwd_bwd"] = kernel_breakdown(step)
        except Exception as e:  # an invalid variant (e.g. out of shared memory) must not end the sweep
            row = {"variant": variant, "error": repr(e)[:300]}
        print("sweep", json.dumps(row), flush=True)
        out["variants"].append(row)
        Path(args.out).write_text(json.dumps(out, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--issue", action="store_true", help="mixlab Triton vs fla vs torch at H=32, K=V=128")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--Ts", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--fla-configs", type=int, default=0, help="cap fla's autotune configs per kernel (0: all)")
    ap.add_argument("--issue-H", type=int, default=32)
    ap.add_argument("--issue-K", type=int, default=128)
    ap.add_argument("--profile", action="store_true", help="also record GPU time per kernel (torch.profiler)")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of --issue in the Triton interpreter")
    ap.add_argument("--budget", type=float, default=1e9, help="seconds after which no new shape is started")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "kda_issue_gpu.json"))
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--T", type=int, default=2048)
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--K", type=int, default=128)
    ap.add_argument("--sweep-T", type=int, default=0, help="time mixlab's launch variants at this T (see SWEEP)")
    args = ap.parse_args()
    if args.sweep_T:
        return sweep(args)
    if args.issue:
        return issue_compare(args)
    B, T, H, K = args.B, args.T, args.H, args.K
    dev = "cuda"
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, T, H, K, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = (-torch.rand(B, T, H, K, device=dev) * 0.1).requires_grad_(True)
    beta = torch.rand(B, T, H, device=dev, dtype=torch.bfloat16).requires_grad_(True)
    inputs = (q, k, v, g, beta)

    def run(fn):
        def step():
            fn().float().sum().backward()
            for t in inputs:
                t.grad = None
        return step

    ops = {
        "sdpa": lambda: F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                       is_causal=True),
    }
    for c in (32, 64):
        ops[f"torch_chunk_kda_c{c}"] = lambda c=c: chunk_kda_torch(*inputs, use_qk_l2norm=True, chunk_size=c)[0]
    if fla_available():
        from fla.ops.kda import chunk_kda as fla_chunk_kda

        ops["fla_chunk_kda"] = lambda: fla_chunk_kda(*inputs, use_qk_l2norm_in_kernel=True)[0]
    res = {}
    for name, fn in ops.items():
        with torch.no_grad():
            fwd = cuda_time(fn)
        res[name] = {"fwd_ms": fwd, "fwd_bwd_ms": cuda_time(run(fn))}
    base = res["sdpa"]["fwd_bwd_ms"]
    name = torch.cuda.get_device_name()
    print(f"{name}: B={B} T={T} H={H} K=V={K}, bf16 inputs, median of 10")
    print(f"{'op':<22}{'fwd ms':>9}{'fwd+bwd ms':>12}{'x sdpa':>9}")
    for n, r in res.items():
        print(f"{n:<22}{r['fwd_ms']:>9.2f}{r['fwd_bwd_ms']:>12.2f}{r['fwd_bwd_ms'] / base:>9.2f}")
    out = Path(__file__).parent / "results" / "kda_gpu.json"
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"device": name, "torch": torch.__version__, "shape": vars(args), "results": res},
                              indent=2))
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
