"""GPU benchmark (CUDA only): torch-reference chunk_kda vs fla's Triton chunk_kda vs SDPA, forward+backward.

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--T", type=int, default=2048)
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--K", type=int, default=128)
    args = ap.parse_args()
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
