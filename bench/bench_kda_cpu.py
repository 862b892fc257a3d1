"""CPU benchmark: chunked KDA (pure torch) vs torch SDPA (causal softmax attention) vs the naive token loop.

At the size of the CPU demo (DESIGN.md: B=32, T=96, width 128 split into H heads of K = V = 128/H), timing
forward and forward+backward of
- the core ops (inputs already projected): SDPA vs `chunk_kda` at several chunk sizes vs `naive_recurrent_kda`;
- whole token mixers: a KDA layer as in Kimi Linear (q/k/v projections, three short convs, forget gate, beta,
  chunk_kda with in-kernel L2 norm, gated RMSNorm, o_proj) vs a multi-head softmax-attention layer (qkv projection,
  SDPA, o_proj) of the same width;
- chunk_kda with strongly decaying gates (about −20 per token: the exact sub-block path).
Peers are measured in the same run, interleaved; medians of repeated runs. Prints ratios to SDPA and writes
bench/results/kda_cpu.json.

    .venv/bin/python bench/bench_kda_cpu.py [--reps 9] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mixlab.kernels import chunk_kda, gated_rms_norm, kda_gate, naive_recurrent_kda, short_conv


def make(B, T, H, K, requires_grad, seed=0, g_scale=0.5):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, H, K, generator=gen)
    g = -torch.rand(B, T, H, K, generator=gen) * g_scale
    beta = torch.rand(B, T, H, generator=gen)
    return [t.requires_grad_(requires_grad) for t in (q, k, v, g, beta)]


class KDAMixer(nn.Module):
    """The KDA token mixer of Kimi Linear (reference §3), built from mixlab.kernels ops."""

    def __init__(self, d: int, H: int, K: int, chunk_size: int, conv: int = 4):
        super().__init__()
        self.H, self.K, self.chunk_size = H, K, chunk_size
        P = H * K
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, P, bias=False) for _ in range(3))
        self.convs = nn.ParameterList([nn.Parameter(torch.randn(P, 1, conv) * 0.3) for _ in range(3)])
        self.f_a, self.f_b = nn.Linear(d, K, bias=False), nn.Linear(K, P, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1, 16)))
        dt = torch.exp(torch.empty(P).uniform_(torch.log(torch.tensor(1e-3)), torch.log(torch.tensor(1e-1))))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.b_proj = nn.Linear(d, H, bias=False)
        self.g_a, self.g_b = nn.Linear(d, K, bias=False), nn.Linear(K, P, bias=False)
        self.o_norm = nn.Parameter(torch.ones(K))
        self.o_proj = nn.Linear(P, d, bias=False)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = (short_conv(p(x), w)[0] for p, w in zip((self.q_proj, self.k_proj, self.v_proj), self.convs))
        q, k, v = (t.view(B, T, self.H, self.K) for t in (q, k, v))
        g = kda_gate(self.f_b(self.f_a(x)), self.A_log, self.dt_bias)
        beta = torch.sigmoid(self.b_proj(x).float())
        o, _ = chunk_kda(q, k, v, g, beta, use_qk_l2norm=True, chunk_size=self.chunk_size)
        gate = self.g_b(self.g_a(x)).view(B, T, self.H, self.K)
        o = gated_rms_norm(o, self.o_norm, gate, 1e-5)
        return self.o_proj(o.reshape(B, T, -1))


class MHAMixer(nn.Module):
    def __init__(self, d: int, H: int):
        super().__init__()
        self.H = H
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x):
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.H, d // self.H).permute(2, 0, 3, 1, 4)
        return self.o_proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, d))


CLOCK = time.perf_counter  # --clock process: CPU time of this process (robust on a shared machine, 1 thread)


def timed(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return statistics.median(times)


def op_pair(op, inputs_fwd, inputs_bwd):
    def f():
        with torch.no_grad():
            op(inputs_fwd)

    def fb():
        op(inputs_bwd).sum().backward()
        for t in inputs_bwd:
            t.grad = None

    return f, fb


def core_ops(B, T, H, K, chunk_sizes, g_scale=0.5, naive=True):
    fwd_in, bwd_in = make(B, T, H, K, False, g_scale=g_scale), make(B, T, H, K, True, g_scale=g_scale)

    def sdpa(inputs):
        q, k, v = (t.transpose(1, 2) for t in inputs[:3])  # [B, H, T, K]
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    ops = {"sdpa": sdpa}
    for c in chunk_sizes:
        ops[f"chunk_kda_c{c}"] = lambda inputs, c=c: chunk_kda(*inputs, use_qk_l2norm=True, chunk_size=c)[0]
    if naive:
        ops["naive_kda"] = lambda inputs: naive_recurrent_kda(*inputs, use_qk_l2norm=True)[0]
    return {name: op_pair(op, fwd_in, bwd_in) for name, op in ops.items()}


def mixers(B, T, d, H, chunk_size):
    torch.manual_seed(0)
    x_f, x_b = torch.randn(B, T, d), torch.randn(B, T, d, requires_grad=True)
    out = {}
    for name, mod in (("mha_layer", MHAMixer(d, H)), ("kda_layer", KDAMixer(d, H, d // H, chunk_size))):
        out[name] = op_pair(lambda inputs, m=mod: m(inputs[0]), [x_f], [x_b])
    return out


def measure(runners, reps):
    fwd = {n: 1e3 * timed(f, reps) for n, (f, _) in runners.items()}
    fb = {n: 1e3 * timed(b, reps) for n, (_, b) in runners.items()}
    return fwd, fb


def table(title, fwd, fb, base):
    print(f"\n{title}")
    print(f"{'op':<18}{'fwd ms':>9}{'x ' + base:>12}{'fwd+bwd ms':>12}{'x ' + base:>12}")
    for n in fwd:
        print(f"{n:<18}{fwd[n]:>9.2f}{fwd[n] / fwd[base]:>12.2f}{fb[n]:>12.2f}{fb[n] / fb[base]:>12.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--quick", action="store_true", help="one shape, fewer reps, no naive loop")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler op table of chunk_kda fwd+bwd")
    ap.add_argument("--clock", choices=("wall", "process"), default="wall",
                    help="'process' times CPU time of this process: use with --threads 1 on a busy machine")
    args = ap.parse_args()
    global CLOCK
    if args.clock == "process":
        if args.threads != 1:
            ap.error("--clock process needs --threads 1 (CPU time sums over threads)")
        CLOCK = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        _, fb = core_ops(32, 96, 4, 32, [32], naive=False)["chunk_kda_c32"]
        fb()
        with torch.profiler.profile() as prof:
            for _ in range(5):
                fb()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
    B, T, d = 32, 96, 128
    reps = 3 if args.quick else args.reps
    shapes = [(4, 32)] if args.quick else [(4, 32), (2, 64)]
    chunk_sizes = [16, 32, 64]
    results = {"core": [], "layer": [], "strong_decay": []}
    header = f"B={B} T={T} width={d}, median of {reps}, threads={torch.get_num_threads()}, {args.clock} clock"
    for H, K in shapes:
        fwd, fb = measure(core_ops(B, T, H, K, chunk_sizes, naive=not args.quick), reps)
        table(f"core ops, H={H} K=V={K}; {header}", fwd, fb, "sdpa")
        best = min((n for n in fb if n.startswith("chunk")), key=fb.get)
        row = {"H": H, "K": K, "fwd_ms": fwd, "fwd_bwd_ms": fb, "best_chunk": best,
               "fwd_bwd_ratio_vs_sdpa": {n: fb[n] / fb["sdpa"] for n in fb},
               "fwd_ratio_vs_sdpa": {n: fwd[n] / fwd["sdpa"] for n in fwd}}
        if "naive_kda" in fb:
            row["naive_over_best_chunk_fwd_bwd"] = fb["naive_kda"] / fb[best]
            print(f"best chunk: {best}; naive loop / best chunk (fwd+bwd) = {row['naive_over_best_chunk_fwd_bwd']:.1f}x")
        results["core"].append(row)

        fwd, fb = measure(mixers(B, T, d, H, int(best.removeprefix("chunk_kda_c"))), reps)
        table(f"token-mixer layers, H={H}, {best}", fwd, fb, "mha_layer")
        results["layer"].append({"H": H, "K": K, "chunk": best, "fwd_ms": fwd, "fwd_bwd_ms": fb,
                                 "fwd_bwd_ratio_kda_over_mha": fb["kda_layer"] / fb["mha_layer"],
                                 "fwd_ratio_kda_over_mha": fwd["kda_layer"] / fwd["mha_layer"]})
    H, K = shapes[0]
    fwd, fb = measure(core_ops(B, T, H, K, [32], g_scale=40.0, naive=False), reps)
    table(f"core ops with g in [-40, 0] per token (exact sub-block path), H={H} K={K}", fwd, fb, "sdpa")
    results["strong_decay"].append({"H": H, "K": K, "fwd_ms": fwd, "fwd_bwd_ms": fb})

    report = {
        "device": f"cpu: {platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "shape": {"B": B, "T": T, "width": d},
        "note": "wall-clock medians; core ops take projected inputs; chunk_kda includes the in-kernel q/k L2 norm",
        "results": results,
    }
    out = Path(__file__).parent / "results" / "kda_cpu.json"
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
