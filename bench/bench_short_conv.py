"""Causal depthwise short convolution + SiLU, forward + backward, bf16, one GPU: mixlab's fused Triton kernels
(`short_conv_triton`: one launch forward, two backward) against fla-core's `causal_conv1d` (Triton backend: a
forward, then in the backward a recomputed pre-activation and the gradient kernel) and the torch reference
(`short_conv` with the fused kernel off), in the same run, at the 1b-a150m KDA projection shape (D = 1024 channels,
kernel 4) for 8k and 16k tokens. Every variant is first checked against an fp32 reference on the same inputs.

Two timings per variant: `graph` replays the fwd+bwd as one CUDA graph (GPU time, what the graph training step
pays), `eager` is triton's do_bench of the eager call (at this size mostly the host's launch time).

`--sweep` also times mixlab's variant (graph) for each dx-kernel grid choice (`_DX_PROGRAMS_PER_SM`,
`_DX_BLOCK_R` of short_conv_triton), the first being the shipped one.

Usage: python bench/bench_short_conv.py [--sweep] [--out bench/results/short_conv.json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

from mixlab.kernels import short_conv_triton as sct
from mixlab.kernels.short_conv import short_conv

short_conv_module = importlib.import_module("mixlab.kernels.short_conv")  # the package re-exports the function
sys.path.insert(0, str(Path(__file__).parent))
from bench_moe import graph_ms  # noqa: E402  (fwd+bwd captured once as a CUDA graph, replays timed)

D, W = 1024, 4


def _inputs(tokens: int, seed: int = 0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(tokens // 2048, 2048, D, device="cuda", generator=gen).bfloat16()
    w = (torch.randn(D, 1, W, device="cuda", generator=gen) * 0.5).bfloat16()
    dy = torch.randn(x.shape, device="cuda", generator=gen).bfloat16()
    return x, w, dy


def _fwd_bwd(fn, x, w, dy):
    xl, wl = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
    y = fn(xl, wl)
    return (y, *torch.autograd.grad(y, (xl, wl), dy))


def _mixlab(x, w):
    return sct.short_conv_triton(x, w, None, "silu")


def _reference(x, w):
    before = short_conv_module.FUSED_SHORT_CONV
    short_conv_module.FUSED_SHORT_CONV = False
    try:
        return short_conv(x, w, activation="silu")[0]
    finally:
        short_conv_module.FUSED_SHORT_CONV = before


def _fla():
    try:
        from fla.modules.causal_conv1d import causal_conv1d
    except Exception:
        return None
    return lambda x, w: causal_conv1d(x, w.view(D, W), activation="silu", backend="triton")[0]


def _rel_errors(got, want) -> dict:
    return {n: float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))
            for n, a, b in zip(("y", "dx", "dw"), got, want)}


def _sweep(x, w, dy, want) -> dict:
    """mixlab's fwd+bwd graph ms for each (programs per SM, rows per iteration) of the dx kernel; checked first."""
    shipped = (sct._DX_PROGRAMS_PER_SM, sct._DX_BLOCK_R)
    res = {}
    try:
        for ppsm, block_r in [shipped] + [(p, b) for p in (2, 8, 16, 32) for b in (16, 32, 64)]:
            sct._DX_PROGRAMS_PER_SM, sct._DX_BLOCK_R = ppsm, block_r
            err = max(_rel_errors(_fwd_bwd(_mixlab, x, w, dy), want).values())
            res[f"{ppsm}x{block_r}"] = {"graph_ms": graph_ms(lambda: _fwd_bwd(_mixlab, x, w, dy)), "max_rel_err": err}
    finally:
        sct._DX_PROGRAMS_PER_SM, sct._DX_BLOCK_R = shipped
    best = min(res, key=lambda k: res[k]["graph_ms"])
    print(f"dx grid sweep ({x.shape[0] * x.shape[1]} tokens): best {best} {res[best]['graph_ms']:.4f} ms, shipped "
          f"{shipped[0]}x{shipped[1]} {res[f'{shipped[0]}x{shipped[1]}']['graph_ms']:.4f} ms", flush=True)
    return res


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results/short_conv.json")
    parser.add_argument("--sweep", action="store_true", help="also time the dx kernel's grid choices (graph)")
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    variants = {"mixlab": _mixlab, "reference": _reference}
    fla = _fla()
    if fla is not None:
        variants["fla"] = fla
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "fla": fla is not None, "rows": []}
    for tokens in (8192, 16384):
        x, w, dy = _inputs(tokens)
        want = _fwd_bwd(_reference, x.float(), w.float(), dy.float())
        row = {"tokens": tokens}
        for name, fn in variants.items():
            row[f"{name}_rel_err"] = _rel_errors(_fwd_bwd(fn, x, w, dy), want)
            row[f"{name}_eager_ms"] = do_bench(lambda: _fwd_bwd(fn, x, w, dy), return_mode="median", warmup=25,
                                               rep=200)
            try:  # the eager timing above stands if a capture fails
                row[f"{name}_graph_ms"] = graph_ms(lambda: _fwd_bwd(fn, x, w, dy))
            except Exception as exc:
                row[f"{name}_graph_error"] = repr(exc)[:200]
        if args.sweep:
            row["mixlab_dx_grid_sweep_graph_ms"] = _sweep(x, w, dy, want)
        for name in ("fla", "reference"):
            for how in ("graph", "eager"):
                if f"{name}_{how}_ms" in row and f"mixlab_{how}_ms" in row:
                    row[f"{name}_over_mixlab_{how}"] = row[f"{name}_{how}_ms"] / row[f"mixlab_{how}_ms"]
        result["rows"].append(row)
        out.write_text(json.dumps(result, indent=2))
        print(json.dumps(row), flush=True)
    print(f"\n{result['device']}  short conv (D={D}, W={W}) + SiLU fwd+bwd bf16, ms (median)")
    for r in result["rows"]:
        for how in ("graph", "eager"):
            cells = "  ".join(f"{n} {r[f'{n}_{how}_ms']:.3f}" for n in variants if f"{n}_{how}_ms" in r)
            ratios = "  ".join(f"{n}/mixlab {r[f'{n}_over_mixlab_{how}']:.2f}" for n in ("fla", "reference")
                               if f"{n}_over_mixlab_{how}" in r)
            print(f"{r['tokens']:>6} tokens, {how:>5}: {cells}   {ratios}")


if __name__ == "__main__":
    main()
