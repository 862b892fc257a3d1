"""Causal depthwise short convolution + SiLU, forward + backward, bf16, one GPU: mixlab's fused Triton kernels
(`short_conv_triton`: one launch forward, one backward) against fla-core's `causal_conv1d` (Triton backend: a
forward, then in the backward a recomputed pre-activation and the gradient kernel) and the torch reference
(`short_conv` with the fused kernel off), in the same run, at the 1b-a150m KDA projection shape (D = 1024 channels,
kernel 4) for 8k and 16k tokens. Every variant is first checked against an fp32 reference on the same inputs.

`--sweep` first times mixlab's backward launch options (`short_conv_triton._BWD_*`) and keeps the fastest correct one
for the comparison; the default options are timed beside it.

Usage: python bench/bench_short_conv.py [--out bench/results/short_conv.json] [--sweep]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
from triton.testing import do_bench

from mixlab.kernels import short_conv as short_conv_module
from mixlab.kernels import short_conv_triton as sct
from mixlab.kernels.short_conv import short_conv

D, W = 1024, 4
BWD_KNOBS = ("_BWD_BLOCK_R", "_BWD_BLOCK_D", "_BWD_WARPS", "_BWD_PROGRAMS_PER_SM")


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


def _time(fn, x, w, dy) -> float:
    return do_bench(lambda: _fwd_bwd(fn, x, w, dy), return_mode="median", warmup=25, rep=200)


def _sweep(x, w, dy, want) -> list[dict]:
    rows = []
    default = {k: getattr(sct, k) for k in BWD_KNOBS}
    for br, bd, warps, pps in itertools.product((8, 16, 32), (64, 128), (4, 8), (4, 16)):
        for k, v in zip(BWD_KNOBS, (br, bd, warps, pps)):
            setattr(sct, k, v)
        try:
            errs = _rel_errors(_fwd_bwd(_mixlab, x, w, dy), want)
            ok = max(errs.values()) < 2e-2
            rows.append({"config": [br, bd, warps, pps], "ok": ok, "ms": _time(_mixlab, x, w, dy) if ok else None})
        except Exception as exc:  # a config that fails to compile (shared memory, registers) is skipped
            rows.append({"config": [br, bd, warps, pps], "error": repr(exc)[:200]})
    for k, v in default.items():
        setattr(sct, k, v)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results/short_conv.json")
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fla = _fla()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "fla": fla is not None,
              "default_bwd": {k: getattr(sct, k) for k in BWD_KNOBS}, "rows": []}
    for tokens in (8192, 16384):
        x, w, dy = _inputs(tokens)
        want = _fwd_bwd(_reference, x.float(), w.float(), dy.float())
        row = {"tokens": tokens}
        if args.sweep and tokens == 8192:
            row["sweep"] = _sweep(x, w, dy, want)
            good = [r for r in row["sweep"] if r.get("ms")]
            best = min(good, key=lambda r: r["ms"])["config"] if good else None
            row["sweep_best"] = best
        variants = {"mixlab": _mixlab, "reference": _reference}
        if fla is not None:
            variants["fla"] = fla
        for name, fn in variants.items():
            row[f"{name}_rel_err"] = _rel_errors(_fwd_bwd(fn, x, w, dy), want)
            row[f"{name}_ms"] = _time(fn, x, w, dy)
        for name in ("reference", "fla"):
            if f"{name}_ms" in row:
                row[f"{name}_over_mixlab"] = row[f"{name}_ms"] / row["mixlab_ms"]
        result["rows"].append(row)
        out.write_text(json.dumps(result, indent=2))
        print(json.dumps({k: v for k, v in row.items() if k != "sweep"}), flush=True)
    print(f"\n{result['device']}  short conv (D={D}, W={W}) + SiLU fwd+bwd bf16, ms (median)")
    for r in result["rows"]:
        cells = "  ".join(f"{n} {r[f'{n}_ms']:.3f}" for n in ("mixlab", "fla", "reference") if f"{n}_ms" in r)
        ratios = "  ".join(f"{n}/mixlab {r[f'{n}_over_mixlab']:.2f}" for n in ("fla", "reference")
                           if f"{n}_over_mixlab" in r)
        print(f"{r['tokens']:>6} tokens: {cells}   {ratios}")
        if r.get("sweep"):
            ranked = sorted((s for s in r["sweep"] if s.get("ms")), key=lambda s: s["ms"])[:8]
            print("  backward launch sweep (BLOCK_R, BLOCK_D, warps, programs/SM): "
                  + ", ".join(f"{s['config']} {s['ms']:.3f}" for s in ranked))


if __name__ == "__main__":
    main()
