"""Where the host time of an eager MoE forward+backward goes (1b-a150m shape, bf16, one GPU).

At 1b-a150m the eager MoE block is bound by the CPU issuing its launches, not by the GPU (bench_moe.py's `host`
rows against its `graph` rows). This prints the CPU microseconds to issue each piece — an allocation, one torch op,
one `torch._grouped_mm`, one Triton launch, the routing sort, the autograd Function, and each whole variant beside
the dense GEMM of the same FLOPs — all in the same run, plus a cProfile of the fused variant's Python. No sync inside
a timed loop: the GPU queue absorbs the work (the loops are short enough not to fill it).

Usage: python bench/bench_moe_host.py [--out bench/results/moe_host.json]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.profiler import ProfilerActivity, profile, record_function

from mixlab.kernels import moe_experts, moe_experts_grouped
from mixlab.kernels.moe import moe_experts_fused
from mixlab.kernels.moe_triton import gather_sum, route_sort, swiglu_weighted_fwd

sys.path.insert(0, str(Path(__file__).parent))
from bench_moe import SHAPES, dense_same_flops, fwd_bwd, host_ms, inputs  # noqa: E402  (same shapes, inputs, peer)


@triton.jit
def _noop(X, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(X + offs, tl.load(X + offs, mask=offs < n), mask=offs < n)


def host_us(fn, n: int = 40) -> float:
    return host_ms(fn, n) * 1e3


def timeline(prof, max_depth: int = 2) -> list[str]:
    """The last `moe_step` of a profile as CPU events in start order, every thread (the backward runs on autograd's
    device thread), nested at most `max_depth` deep: "start_us +duration_us name". The gaps are Python."""
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
    last = max((e for e in events if e.name == "moe_step"), key=lambda e: e.time_range.start)
    t0, t1 = last.time_range.start, last.time_range.end

    def depth(e):
        d = 0
        while e.cpu_parent is not None and e.cpu_parent is not last:
            e, d = e.cpu_parent, d + 1
        return d

    inside = sorted((e for e in events if t0 <= e.time_range.start and e.time_range.end <= t1 and e is not last
                     and depth(e) <= max_depth), key=lambda e: e.time_range.start)
    return [f"{e.time_range.start - t0:8.1f} +{e.time_range.end - e.time_range.start:7.1f} "
            f"{'  ' * depth(e)}{e.name[:70]}" for e in inside]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results/moe_host.json")
    args = parser.parse_args()
    dims = SHAPES["1b-a150m"]
    x, w1, w3, w2, idx, w = inputs(**dims)
    dy = torch.randn(x.shape, device="cuda").bfloat16()
    N, k = idx.shape
    E, I, D = w1.shape
    M = N * k
    order, inv, token_of, w_s, offs = route_sort(idx, w, E)
    xs = x.index_select(0, token_of)
    h = torch.empty(M, 2 * I, dtype=x.dtype, device="cuda")
    buf = torch.zeros(1024, device="cuda")

    class _Identity(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.view_as(t)

        @staticmethod
        def backward(ctx, g):
            return g

    pieces = {
        "torch.empty": lambda: torch.empty(M, dtype=torch.int64, device="cuda"),
        "index_select": lambda: x.index_select(0, token_of),
        "grouped_mm": lambda: torch._grouped_mm(xs, w1.transpose(-2, -1), offs=offs),
        "triton_noop_launch": lambda: _noop[(1,)](buf, 1024, BLOCK=1024),
        "swiglu_weighted_fwd": lambda: swiglu_weighted_fwd(h[:, :I], h[:, I:], w_s),
        "gather_sum": lambda: gather_sum(inv.view(N, k), x.dtype, xs),
        "route_sort": lambda: route_sort(idx, w, E),
        "autograd_fn_apply": lambda: _Identity.apply(buf),
        "detach_requires_grad_x5": lambda: [t.detach().requires_grad_(True) for t in (x, w1, w3, w2, w)],
    }
    variants = {
        "dense_same_flops": lambda: dense_same_flops(x, w1, w3, w2, idx, w, dy),
        "fn_cat": lambda: fwd_bwd(lambda *a: moe_experts_fused(*a, cat_w13=True), x, w1, w3, w2, idx, w, dy),
        "fn_nocat": lambda: fwd_bwd(lambda *a: moe_experts_fused(*a, cat_w13=False), x, w1, w3, w2, idx, w, dy),
        "fused_grouped": lambda: fwd_bwd(lambda *a: moe_experts_grouped(*a, fused=True), x, w1, w3, w2, idx, w, dy),
        "dispatch": lambda: fwd_bwd(moe_experts, x, w1, w3, w2, idx, w, dy),
        "fn_cat_forward_only": lambda: moe_experts_fused(x, w1, w3, w2, idx, w, cat_w13=True),
    }
    step = variants["fn_cat"]
    leaves = [t.detach().requires_grad_(True) for t in (x, w1, w3, w2, w)]
    y_fn = moe_experts_fused(*leaves[:4], idx, leaves[4], cat_w13=True)
    xd = x.detach().repeat_interleave(k, 0).requires_grad_(True)
    dl = [t[0].detach().requires_grad_(True) for t in (w1, w3, w2)]
    y_dense = F.linear(F.silu(F.linear(xd, dl[0])) * F.linear(xd, dl[1]), dl[2])
    dy_dense = dy.repeat_interleave(k, 0)
    ident = torch.zeros(8, device="cuda", requires_grad=True)
    y_ident = _Identity.apply(ident)
    halves = {  # the forward with autograd recording, and the backward alone (retain_graph: the same graph again)
        "fn_cat_forward_recorded": lambda: moe_experts_fused(*leaves[:4], idx, leaves[4], cat_w13=True),
        "fn_cat_backward_only": lambda: torch.autograd.grad(y_fn, leaves, dy, retain_graph=True),
        "dense_forward_recorded": lambda: F.linear(F.silu(F.linear(xd, dl[0])) * F.linear(xd, dl[1]), dl[2]),
        "dense_backward_only": lambda: torch.autograd.grad(y_dense, [xd, *dl], dy_dense, retain_graph=True),
        "autograd_grad_one_python_node": lambda: torch.autograd.grad(y_ident, [ident], ident, retain_graph=True),
    }
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "pieces_us": {n: host_us(f) for n, f in pieces.items()},
              "variants_us": {n: host_us(f, n=20) for n, f in variants.items()},
              "halves_us": {n: host_us(f, n=20) for n, f in halves.items()}}
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as tprof:
        for _ in range(10):
            with record_function("moe_step"):
                step()
        torch.cuda.synchronize()
    result["timeline_fn_cat"] = timeline(tprof)
    result["profiler_fn_cat_cpu"] = tprof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30,
                                                                max_name_column_width=60)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as tprof:
        for _ in range(10):
            variants["dense_same_flops"]()
        torch.cuda.synchronize()
    result["profiler_dense_cpu"] = tprof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20,
                                                               max_name_column_width=60)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(50):
        step()
    prof.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
    result["cprofile_fn_cat_tottime_top25"] = text.getvalue()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{result['device']}  torch {result['torch']}  triton {result['triton']}: host µs per call")
    for group in ("pieces_us", "variants_us", "halves_us"):
        for name, us in result[group].items():
            print(f"  {name:>26}: {us:8.1f}")
    print(result["cprofile_fn_cat_tottime_top25"])
    print(result["profiler_fn_cat_cpu"])
    print("timeline of one fn_cat fwd+bwd (µs from its start, duration, name):")
    print("\n".join(result["timeline_fn_cat"][:160]))
    print(result["profiler_dense_cpu"])


if __name__ == "__main__":
    main()
