"""Where packed and unpacked sequences part on a GPU (the `small` model, fp32, sequences of 70, 130 and 33 tokens,
as tests/model/test_gpu.py's packing test): first mixlab's Triton KDA on the packed layout against the torch
reference; then, per configuration, the largest |packed - unpacked| logit per sequence and, per MoE layer, the tokens
routed to other experts; where the logits differ by more than DIAG_TOL (default 1e-2), the same per decoder layer.
A configuration is the KDA backend (torch, triton, fla), then _nojoint (separate projections), _noconv (the
reference short conv), _unfused (mixlab's fused path off). bench/gpu_tests.sh runs it when the packing test fails.

Usage: python bench/diag_packing_gpu.py [triton,torch,triton_nojoint,...]
"""
from __future__ import annotations

import importlib
import os
import sys

import torch

from mixlab.kernels import set_backend, set_fused
from mixlab.model import load_model

jl = importlib.import_module("mixlab.kernels.joint_linear")
modeling = importlib.import_module("mixlab.model.modeling")
sc = importlib.import_module("mixlab.kernels.short_conv")
LENS = [70, 130, 33]


def run(model, seqs):
    """Largest |packed - unpacked| logit per sequence; each decoder layer's outputs and each MoE layer's expert
    choices, unpacked calls first, then the packed one."""
    outs, routes = {}, []
    handles = [layer.register_forward_hook(
        lambda m, a, o, i=i: outs.setdefault(i, []).append((o[0] if isinstance(o, tuple) else o).detach()))
        for i, layer in enumerate(model.model.layers)]

    def recorded_route(*args, **kwargs):
        idx, weight = route(*args, **kwargs)
        routes.append(idx.sort(-1).values)
        return idx, weight

    route = modeling.moe_route
    modeling.moe_route = recorded_route
    try:
        with torch.no_grad():
            ref = [model(s[None]).logits[0] for s in seqs]
            pos = torch.cat([torch.arange(n, device="cuda") for n in LENS])[None]
            packed = model(torch.cat(seqs)[None], position_ids=pos).logits[0].split(LENS)
    finally:
        modeling.moe_route = route
        for h in handles:
            h.remove()
    errs = [float((a - b).abs().max()) for a, b in zip(packed, ref)]
    return errs, outs, routes


def flipped_tokens(routes: list[torch.Tensor]) -> list[list[int]]:
    """Per MoE layer, per sequence: tokens whose set of experts differs between the packed and unpacked calls (a
    routed model is discontinuous there: a tiny numerical difference that flips one choice moves logits a lot)."""
    per_call = len(routes) // (len(LENS) + 1)
    calls = [routes[c * per_call:(c + 1) * per_call] for c in range(len(LENS) + 1)]
    return [[int((p != u).any(-1).sum()) for p, u in zip(calls[-1][j].split(LENS), (c[j] for c in calls[:-1]))]
            for j in range(per_call)]


def kda_direct():
    """mixlab's Triton KDA on the packed LENS layout against the torch reference, at small's head dims."""
    from mixlab.kernels.kda_chunk import chunk_kda_torch
    from mixlab.kernels.kda_triton import chunk_kda_triton

    g = torch.Generator(device="cuda").manual_seed(1)
    T, H, K = sum(LENS), 8, 64
    cu = torch.tensor([0, *torch.tensor(LENS).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = (torch.randn(1, T, H, K, device="cuda", generator=g).to(dtype) for _ in range(3))
        gg = -torch.rand(1, T, H, K, device="cuda", generator=g) * 0.3
        beta = torch.rand(1, T, H, device="cuda", generator=g).to(dtype)
        for varlen in (True, False):
            kw = dict(scale=K**-0.5, use_qk_l2norm=True, cu_seqlens=cu if varlen else None)
            a, _ = chunk_kda_triton(q, k, v, gg, beta, **kw)
            b, _ = chunk_kda_torch(q, k, v, gg, beta, **kw)
            err = (a.float() - b.float()).abs().amax((0, 2, 3))
            per = [float(e.max()) for e in err.split(LENS)]
            print(f"kda direct {dtype} varlen={varlen}: max err per segment {['%.2e' % e for e in per]}", flush=True)


def main():
    try:
        kda_direct()
    except Exception as exc:
        print(f"kda direct: ERROR {exc!r}"[:400], flush=True)
    set_backend("auto")
    model = load_model("small", device="cuda", seed=0).eval()
    g = torch.Generator(device="cuda").manual_seed(0)
    seqs = [torch.randint(0, 1000, (n,), device="cuda", generator=g) for n in LENS]
    configs = sys.argv[1].split(",") if len(sys.argv) > 1 else ["torch", "triton", "triton_nojoint", "triton_noconv",
                                                                  "triton_unfused", "torch_unfused", "fla"]
    for cfg in configs:
        kda = cfg.split("_")[0]
        os.environ["MIXLAB_KDA_BACKEND"] = kda
        set_fused("unfused" not in cfg)
        jl_use = jl.use_fused
        conv_flag = sc.FUSED_SHORT_CONV
        if "nojoint" in cfg:
            jl.use_fused = lambda *t: False
        if "noconv" in cfg:
            sc.FUSED_SHORT_CONV = False
        try:
            errs, outs, routes = run(model, seqs)
            print(f"{cfg:>16}: max |packed - unpacked| per sequence {['%.2e' % e for e in errs]}; tokens with "
                  f"other experts per MoE layer and sequence {flipped_tokens(routes)}", flush=True)
            if max(errs) > float(os.environ.get("DIAG_TOL", "1e-2")):
                for i in sorted(outs):
                    o = outs[i]  # the unpacked calls, then the packed one
                    packed = o[-1][0].split(LENS)
                    le = [float((p - u[0]).abs().max()) for p, u in zip(packed, o[:-1])]
                    kind = type(model.model.layers[i].self_attn).__name__
                    print(f"    layer {i} ({kind}): {['%.2e' % e for e in le]}", flush=True)
        except Exception as exc:
            print(f"{cfg:>16}: ERROR {exc!r}"[:400], flush=True)
        finally:
            jl.use_fused, sc.FUSED_SHORT_CONV = jl_use, conv_flag
    set_fused(True)


if __name__ == "__main__":
    main()
