"""GPU kernels per engine decode step, projected on CPU: default (torch references) vs MIXLAB_FUSED_DECODE=1.

Without a GPU, the CUDA path's decisions are forced on CPU tensors (the dispatcher's fast path and every
`use_fused` return True, so mixlab's Triton kernels run in the interpreter) and one decode step of the
`1b-a150m` layer structure (16 layers: 12 KDA + 4 MLA, 48 experts top-3 + 1 shared; widths narrowed, which does
not change the op sequence) is run under a torch dispatch mode. A kernel launch is a Triton launch or a dispatched
torch op that is not a view/allocation. The method reproduces the ~1,000 kernels a step the H100 profile showed for
the default path. The MoE form is the one the engine picks on CUDA for the row count (gather below 16 rows, dense
from 16) or "fused". Writes bench/results/decode-launches-cpu.json.

Run: `.venv/bin/python -P bench/bench_decode_launches.py [--rows 64,4,1]`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (by mixlab.kernels)

RESULTS = Path(__file__).resolve().parent / "results" / "decode-launches-cpu.json"
VIEWS = {"view", "_unsafe_view", "t", "unsqueeze", "squeeze", "split", "split_with_sizes", "slice", "expand",
         "permute", "detach", "alias", "as_strided", "select", "transpose", "reshape", "unbind", "lift_fresh",
         "empty", "empty_like", "new_empty", "set_", "empty_strided", "_reshape_alias"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="64,4,1")
    parser.add_argument("--blocks", type=int, default=16, help="gathered MLA blocks (16 tokens each)")
    args = parser.parse_args()

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from triton.runtime import interpreter

    from mixlab.evals.engine import decode
    from mixlab.kernels import dispatch
    from mixlab.model import load_model
    from mixlab.model.cache import PagedHybridCache
    from mixlab.model.presets import get_preset

    counts = {"inside": 0, "triton": collections.Counter(), "torch": collections.Counter()}
    run = interpreter.InterpretedFunction.run

    def counted_run(self, *a, **k):
        counts["triton"][self.fn.__name__] += 1
        counts["inside"] += 1
        try:
            return run(self, *a, **k)
        finally:
            counts["inside"] -= 1

    interpreter.InterpretedFunction.run = counted_run

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.__name__.split(".")[0]
            if not counts["inside"] and name not in VIEWS:
                counts["torch"][name] += 1
            return func(*args, **(kwargs or {}))

    dispatch.fast_path = lambda *t: True  # the decisions a CUDA tensor gets
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("mixlab.kernels") and hasattr(mod, "use_fused"):
            mod.use_fused = lambda *t: True

    narrow = dict(hidden_size=64, intermediate_size=96, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16,
                  v_head_dim=16, moe_intermediate_size=32,
                  linear_attn_config={**get_preset("1b-a150m").linear_attn_config, "head_dim": 16})
    torch.manual_seed(0)
    model = load_model("1b-a150m", dtype=torch.float32, device="cpu", overrides=narrow).eval()
    cfg = model.config
    nb = args.blocks
    out = {"preset": "1b-a150m (layer structure; narrowed widths)", "gathered_blocks": nb, "rows": {}}
    for B in (int(r) for r in args.rows.split(",")):
        cache = PagedHybridCache(cfg, num_slots=B, num_blocks=B * nb, block_size=16, device="cpu",
                                 dtype=torch.float32)
        plain = "gather" if B * cfg.num_experts_per_token < cfg.num_experts else "dense"
        tokens, slots = torch.randint(0, 1000, (B,)), torch.arange(B)
        positions, table = torch.full((B,), nb * 16 - 20), torch.arange(B * nb).view(B, nb)
        rows = {}
        for name, fused, moe, proj in (("default (torch references)", "0", plain, "0"),
                                       ("fused attention only", "1", plain, "0"),
                                       ("fused attention + MoE", "1", "fused", "0"),
                                       ("MIXLAB_FUSED_DECODE=1 (all)", "1", "fused", "1")):
            os.environ["MIXLAB_FUSED_DECODE"], os.environ["MIXLAB_FUSED_DECODE_PROJ"] = fused, proj
            counts["triton"].clear()
            counts["torch"].clear()
            with torch.no_grad(), Count():
                decode.decode_step(model, cache, tokens, slots, positions, table, moe=moe)
            t, o = sum(counts["triton"].values()), sum(counts["torch"].values())
            rows[name] = {"kernels": t + o, "triton_launches": t, "torch_ops": o, "moe_form": moe,
                          "top_torch_ops": dict(counts["torch"].most_common(8))}
            print(f"rows {B:3d}  {name:30s} moe={moe:6s} {t + o:5d} kernels ({t} Triton + {o} torch ops)",
                  flush=True)
        out["rows"][B] = rows
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
