"""GPU checks and timings, run on a lent H100/H200 (never on CI).

Part A — KDA kernels at real shapes: mixlab's pure-torch `chunk_kda_torch` against fla-core's Triton `chunk_kda`
(the peer), both checked against the fp32 naive recurrence on a short sequence; outputs and gradients compared;
forward+backward time and the torch/fla ratio printed.

Part B — the full hybrid model at the `1b-a150m` preset, bf16, forward + backward on one GPU: loss finite, every
parameter of every layer type receives a finite non-zero gradient, tokens/s and peak memory for the torch and the
triton kernel backends, and the two backends' losses compared.

Usage: python bench/bench_gpu.py [--out bench/results/gpu.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mixlab.kernels import chunk_kda_torch, fla_available, kda_gate, l2norm, naive_recurrent_kda, set_backend


def _time(fn, warmup=2, iters=5) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e3


def _kda_inputs(B, T, H, K, V, seed=0, dtype=torch.bfloat16):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, T, H, K, device="cuda", generator=gen).to(dtype)
    k = torch.randn(B, T, H, K, device="cuda", generator=gen).to(dtype)
    v = torch.randn(B, T, H, V, device="cuda", generator=gen).to(dtype)
    f = torch.randn(B, T, H * K, device="cuda", generator=gen)
    A_log = torch.log(torch.empty(1, 1, H, 1, device="cuda").uniform_(1, 16, generator=gen))
    dt_bias = torch.randn(H * K, device="cuda", generator=gen) * 0.5 - 4
    g = kda_gate(f, A_log, dt_bias)  # realistic log decays, fp32
    beta = torch.rand(B, T, H, device="cuda", generator=gen).to(dtype)
    return q, k, v, g, beta


def _fla_chunk(q, k, v, g, beta):
    from fla.ops.kda import chunk_kda as fla_chunk_kda

    return fla_chunk_kda(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)[0]


def _torch_chunk(q, k, v, g, beta):
    return chunk_kda_torch(q, k, v, g, beta, use_qk_l2norm=True)[0]


def _fwd_bwd(fn, inputs):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    out.float().square().mean().backward()
    return out.detach().float(), [t.grad.detach().float() for t in leaves]


def part_a(results: dict) -> None:
    # Correctness on a short sequence against the fp32 token loop.
    q, k, v, g, beta = (t.float() for t in _kda_inputs(1, 256, 4, 128, 128, seed=1))
    ref = naive_recurrent_kda(l2norm(q), l2norm(k), v, g, beta)[0]
    ours = _torch_chunk(q, k, v, g, beta)
    rec = {"naive_vs_torch_fp32_max_abs": (ours - ref).abs().max().item()}
    if fla_available():
        theirs = _fla_chunk(q, k, v, g, beta)
        rec["naive_vs_fla_fp32_max_abs"] = (theirs - ref).abs().max().item()
    results["kda_correctness_T256"] = rec
    print("KDA correctness (fp32, T=256):", rec)

    rows = []
    # One shape: fla autotunes per new shape, which costs minutes of GPU time per shape.
    for B, T, H in [(1, 4096, 16)]:
        inputs = _kda_inputs(B, T, H, 128, 128)
        row = {"B": B, "T": T, "H": H, "K": 128, "V": 128, "dtype": "bf16"}
        o_t, g_t = _fwd_bwd(_torch_chunk, inputs)
        row["torch_fwd_bwd_ms"] = _time(lambda: _fwd_bwd(_torch_chunk, inputs))
        if fla_available():
            o_f, g_f = _fwd_bwd(_fla_chunk, inputs)
            row["fla_fwd_bwd_ms"] = _time(lambda: _fwd_bwd(_fla_chunk, inputs))
            row["torch_over_fla_time"] = row["torch_fwd_bwd_ms"] / row["fla_fwd_bwd_ms"]
            row["out_rel_err"] = ((o_t - o_f).norm() / o_f.norm()).item()
            row["grad_rel_err"] = {
                name: ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
                for name, a, b in zip(("q", "k", "v", "g", "beta"), g_t, g_f)
            }
        rows.append(row)
        print("KDA fwd+bwd:", json.dumps(row))
        torch.cuda.empty_cache()
    results["kda_speed"] = rows


def _model_step(model, input_ids):
    out = model(input_ids=input_ids, labels=input_ids)
    out.loss.backward()
    return out.loss.detach().float().item()


def part_b(results: dict) -> None:
    from mixlab.model import get_preset, load_model

    cfg = get_preset("1b-a150m")
    B, T = 4, 2048
    torch.manual_seed(0)
    model = load_model("1b-a150m", dtype=torch.bfloat16, device="cuda", seed=0)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, cfg.vocab_size, (B, T), device="cuda")
    backends = ["torch"] + (["triton"] if fla_available() else [])
    rec = {"params": n_params, "batch": B, "seq_len": T, "dtype": "bf16", "gpu": torch.cuda.get_device_name()}
    losses = {}
    for backend in backends:
        set_backend(backend)
        model.zero_grad(set_to_none=True)
        torch.cuda.reset_peak_memory_stats()
        losses[backend] = _model_step(model, ids)
        grads_ok = {
            name: bool(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0)
            for name, p in model.named_parameters()
            if p.requires_grad
        }
        bad = sorted(n for n, ok in grads_ok.items() if not ok)
        kinds = {
            "kda": any("A_log" in n for n in grads_ok),
            "mla": any("kv_a_proj_with_mqa" in n for n in grads_ok),
            "moe": any("experts" in n for n in grads_ok),
        }

        def step():
            model.zero_grad(set_to_none=True)
            _model_step(model, ids)

        ms = _time(step, warmup=1, iters=3)
        rec[backend] = {
            "loss": losses[backend],
            "params_without_finite_nonzero_grad": bad[:20],
            "n_params_without_grad": len(bad),
            "layer_kinds_present": kinds,
            "fwd_bwd_ms": ms,
            "tokens_per_s": B * T / (ms / 1e3),
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        }
        print(f"model 1b-a150m [{backend}]:", json.dumps(rec[backend]))
    if len(losses) == 2:
        rec["loss_abs_diff_torch_vs_triton"] = abs(losses["torch"] - losses["triton"])
        rec["triton_speedup"] = rec["torch"]["fwd_bwd_ms"] / rec["triton"]["fwd_bwd_ms"]
    set_backend("torch")
    results["model_1b_a150m"] = rec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results/gpu.json")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "bench_gpu needs a CUDA GPU"
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "fla_available": fla_available()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for part in (part_b, part_a):
        try:
            part(results)
        except Exception as exc:  # keep the other part's numbers
            import traceback

            traceback.print_exc()
            results[part.__name__ + "_error"] = repr(exc)
        Path(args.out).write_text(json.dumps(results, indent=2))  # partial results survive a timeout
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
