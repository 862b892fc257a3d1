"""The `1b-a150m` training step (forward + backward, bf16, one GPU) on mixlab's fast path against the off-the-shelf
composition, in the same run.

Modes (same model weights, same batch):
- peer        : fla-core KDA + `torch._grouped_mm` MoE + SDPA, eager, torch elementwise ops (mixlab's fused Triton
                kernels off) — the composition issue 11 measures against.
- fast        : mixlab's fast path, eager: the peer plus fused Triton RMSNorm / gated norm / KDA gate / SwiGLU /
                the fused MoE Function, and no host sync in the step.
- fast_graph  : `fast` with the whole forward + backward captured once as a CUDA graph and replayed
                (`mixlab.kernels.step_graph.CapturedStep`; possible because the step has static shapes and no host
                syncs); removes the launch gaps.
- recipe_graph : what a recipe's SFT stage on a GPU runs (recipes/graph_step.py): fp32 master weights under bf16
                autocast, the static-buffer step replayed as one CUDA graph. recipe_eager: the same step, eager.
                (Its own fp32 copy of the model; the other modes share one bf16 copy.) Gradients are set to None
                before each step, as the Trainer does after each optimizer step, so each step is an optimizer step's
                first micro-step (StaticBatchStep's assign graph). recipe_graph_accum: no reset, so every step adds
                into the gradients: a later micro-step of gradient accumulation, and what every step cost until
                wave 12.
- fast_graph_grouped, recipe_graph_grouped : the graph modes with the MoE on `moe_experts_grouped` (MIXLAB_MOE_IMPL=
                grouped), the one they took before the default became "auto" (the fused MoE Function).
- fast_nosc, fast_nosc_graph : the same without the fused short convolution (not in the default list; the
                first H100 numbers in BENCHMARKS.md were taken before that kernel existed, i.e. in this configuration).
- fast_sep, fast_sep_graph : the same with separate projection GEMMs (`joint_linear` off), as before wave 10 (the
                peer has them too: `set_fused(False)` turns joint_linear off).
- <mode>_mixkda, <mode>_flakda : any mode with KDA on mixlab's own Triton kernels (MIXLAB_KDA_BACKEND=triton) or
                on fla-core's (=fla) instead of what `auto` picks (mixlab's since wave 12, fla-core's before). The
                peer always runs fla-core's KDA; the other modes run MIXLAB_KDA_BACKEND as set.

Per mode and batch: tokens/s (median of timed steps), ratio to the peer, MFU (6 · active non-embedding params · tok/s
plus causal MLA attention FLOPs, over the 780 TFLOP/s measured bf16 peak; KDA's own FLOPs are not counted), GPU busy %
(union of kernel intervals from a profiled step over the unprofiled median step time), peak memory, loss; the graph
modes also keep their 30 kernels with the most GPU time per step (`top_kernels_ms_per_step`).

Usage: python bench/bench_step.py [--tokens 8192,16384] [--seq 2048] [--modes peer,fast,fast_graph,recipe_graph]
                                  [--fla-configs N] [--out bench/results/step.json]
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import json
import os
import pstats
import statistics
import time
import traceback
from pathlib import Path

import torch

from mixlab.kernels import dispatch, set_backend, set_fused
from mixlab.kernels.step_graph import CapturedStep
from mixlab.model import get_preset, load_model
from mixlab.model.info import model_info
from mixlab.recipes.graph_step import model_step

# the module (the package attribute of that name is the function)
short_conv_module = importlib.import_module("mixlab.kernels.short_conv")
joint_linear_module = importlib.import_module("mixlab.kernels.joint_linear")
PEAK_TFLOPS = 780.0  # measured bf16 matmul peak on an H100 (issue 11)


def flops_per_token(cfg, T: int) -> float:
    info = model_info(cfg)
    dense = 6.0 * (info["active_params"] - cfg.vocab_size * cfg.hidden_size)  # input embedding is a lookup
    mla = info["mla_layers"]
    # causal SDPA: QK^T and PV, average key length T/2, fwd 2 FLOPs per MAC, bwd 2x fwd
    attn = 3 * 2 * (T / 2) * cfg.num_attention_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim)
    return dense + mla * attn


def _events_busy(prof, steps: int) -> float | None:
    """GPU time per step in ms: the union of kernel/memcpy/memset intervals of the profiled region / steps."""
    spans = []
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA and evt.time_range.elapsed_us() > 0:
            spans.append((evt.time_range.start, evt.time_range.end))
    if not spans:
        return None
    spans.sort()
    total, cur_s, cur_e = 0.0, *spans[0]
    for s, e in spans[1:]:
        if s > cur_e:
            total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    total += cur_e - cur_s
    return total / 1e3 / steps


def _top_kernels(prof, steps: int, n: int = 30) -> list[tuple[str, float, float]]:
    """(kernel name, GPU ms per step, launches per step) of the n kernels with the most GPU time: where the graph
    modes' time goes (their launch gaps are gone, so this is the whole step)."""
    totals: dict[str, list[float]] = {}
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA and evt.time_range.elapsed_us() > 0:
            t = totals.setdefault(evt.name, [0.0, 0.0])
            t[0] += evt.time_range.elapsed_us() / 1e3 / steps
            t[1] += 1 / steps
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:n]
    return [(name[:120], round(ms, 4), round(count, 2)) for name, (ms, count) in ranked]


def _limit_autotune(n: int) -> None:
    """Keep at most n configs per `triton.autotune` defined from now on (num_warps=4 first), before fla imports."""
    import triton

    orig = triton.autotune

    def limited(configs, *a, **kw):
        return orig(sorted(configs, key=lambda c: (c.num_warps != 4, c.num_stages))[:n], *a, **kw)

    triton.autotune = limited


HOST_AREAS = (("fla", "/fla/"), ("triton", "/triton/"), ("mixlab kernels", "/kernels/"), ("mixlab model", "/model/"),
              ("torch (python)", "/torch/"))


def host_profile(step, steps: int = 2) -> dict:
    """Where an eager step's host time goes: cProfile over `steps` steps, own (tottime) ms per step summed by area
    (the file's package; C builtins, e.g. torch ops and the final sync, by name) and the 25 heaviest functions.
    cProfile sees the main thread only: the backward, which autograd runs on its device thread, is one entry."""
    prof = cProfile.Profile()
    torch.cuda.synchronize()
    prof.enable()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()  # GPU time the host did not cover shows up here
    prof.disable()
    stats = pstats.Stats(prof).stats
    areas: dict[str, float] = {}
    rows = []
    for (file, line, func), (_cc, calls, tottime, cumtime, _callers) in stats.items():
        area = next((name for name, part in HOST_AREAS if part in file), "other python")
        if file == "~":  # a C function: {built-in method ...}
            area = ("cuda synchronize" if "synchronize" in func else "backward (autograd's thread)"
                    if "run_backward" in func else "C builtins (torch ops, launches)")
        areas[area] = areas.get(area, 0.0) + tottime * 1e3 / steps
        rows.append((tottime * 1e3 / steps, cumtime * 1e3 / steps, calls / steps, f"{file}:{line}({func})"[-110:]))
    rows.sort(reverse=True)
    return {"host_ms_per_step_by_area": dict(sorted(areas.items(), key=lambda kv: -kv[1])),
            "host_top_functions": [[round(a, 3), round(b, 3), c, name] for a, b, c, name in rows[:25]]}


class Runner:
    def __init__(self, model, ids, mode: str):
        self.model, self.ids, self.mode = model, ids, mode
        self.captured = None
        self.loss = None
        self.recipe = None
        self.accumulate = False
        if mode.startswith("recipe"):
            self.recipe = model_step(model, bf16=True, capture=mode.startswith("recipe_graph"))
            self.accumulate = mode.endswith("_accum")
            self.batch = {"input_ids": ids, "labels": ids, "scale": torch.ones((), device=ids.device)}

    def _fwd_bwd(self):
        loss = self.model(input_ids=self.ids, labels=self.ids).loss
        loss.backward()
        return loss

    def eager(self):
        self.model.zero_grad(set_to_none=True)
        self.loss = self._fwd_bwd().detach()

    def capture(self):
        self.captured = CapturedStep(self._fwd_bwd, self.model.zero_grad)

    def step(self):
        if self.recipe is not None:
            if not self.accumulate:
                self.model.zero_grad(set_to_none=True)  # as the Trainer after each optimizer step
            self.loss = self.recipe.step(self.batch)
        elif self.captured is not None:
            self.loss = self.captured()
        else:
            self.eager()


USER_MOE_IMPL = os.environ.get("MIXLAB_MOE_IMPL")  # what the other modes run (unset: the default, "auto")
USER_KDA_BACKEND = os.environ.get("MIXLAB_KDA_BACKEND")


def _set_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def run_mode(model, ids, mode: str, iters: int, host: bool = False) -> dict:
    peer_fla = mode == "peer" and dispatch.fla_available()
    kda = "fla" if peer_fla or mode.endswith("_flakda") else "triton" if mode.endswith("_mixkda") else USER_KDA_BACKEND
    _set_env("MIXLAB_KDA_BACKEND", kda)
    mode_base = mode.removesuffix("_mixkda").removesuffix("_flakda")
    _set_env("MIXLAB_MOE_IMPL", "grouped" if mode_base.endswith("_grouped") else USER_MOE_IMPL)
    base = mode_base.removesuffix("_grouped")
    set_backend("auto")
    set_fused(mode != "peer")
    short_conv_module.FUSED_SHORT_CONV = mode != "peer" and "_nosc" not in mode
    joint_linear_module.use_fused = (lambda *tensors: False) if "_sep" in mode else dispatch.use_fused
    torch.cuda.synchronize()
    # Memory this mode does not own: the other model alive in this process (the fp32 masters, once a recipe mode ran,
    # during every bf16 mode after it; the bf16 model during recipe modes). It is subtracted from the peak: until
    # wave 13 the rows counted it (main drops both models' gradients before each mode).
    own_weights = sum(p.numel() * p.element_size() for p in model.parameters())
    not_this_mode = torch.cuda.memory_allocated() - own_weights
    r = Runner(model, ids, base)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    r.step() if r.recipe is not None else r.eager()  # first call: fla autotune / triton compile (+ capture)
    torch.cuda.synchronize()
    first_s = time.perf_counter() - t0
    if base.endswith("_graph") and r.recipe is None:
        r.capture()
    for _ in range(2):
        r.step()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        r.step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    ms = statistics.median(times)
    busy_ms = top = None
    try:
        steps = 3
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                r.step()
            torch.cuda.synchronize()
        busy_ms = _events_busy(prof, steps)
        top = _top_kernels(prof, steps) if "_graph" in base else None
    except Exception as exc:  # profiling is best-effort; the timing above stands
        print(f"[{mode}] profiler failed: {exc!r}")
    tokens = ids.numel()
    rec = {
        "mode": mode,
        "step_ms_median": ms,
        "step_ms_min": min(times),
        "step_ms_max": max(times),
        "tokens_per_s": tokens / (ms / 1e3),
        "first_step_s": first_s,
        "gpu_busy_pct": None if busy_ms is None else min(100.0, 100.0 * busy_ms / ms),
        "gpu_kernel_ms_per_step": busy_ms,
        "peak_mem_gib": (torch.cuda.max_memory_allocated() - not_this_mode) / 2**30,  # its weights + the step
        "peak_mem_process_gib": torch.cuda.max_memory_allocated() / 2**30,
        "loss": float(r.loss),
        # which KDA implementation ran (fla, mixlab's Triton or torch), asked with the layers' head dim (s10a asked
        # with [B, T] ids, whose T = 2048 fails mixlab's head-dim check: it said "torch" where mixlab's ran)
        "kda": dispatch.kda_backend(ids.new_empty(1, model.config.kda_head_dim, dtype=torch.float32)),
    }
    if top is not None:
        rec["top_kernels_ms_per_step"] = top
    if host and "_graph" not in base:
        rec.update(host_profile(r.step))
    del r
    torch.cuda.empty_cache()
    return rec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="1b-a150m")
    parser.add_argument("--tokens", default="8192,16384")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--modes", default="peer,fast,fast_graph")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--out", default="bench/results/step.json")
    parser.add_argument("--fla-configs", type=int, default=0,
                        help="keep at most N autotune configs per Triton kernel (fla's first use: ~170 s uncapped)")
    parser.add_argument("--no-fla", action="store_true",
                        help="no fla in any mode (no fla compile): KDA on mixlab's Triton kernels (what `auto` takes "
                             "without fla-core), or on the torch reference with MIXLAB_KDA_BACKEND=torch")
    parser.add_argument("--host-profile", action="store_true",
                        help="eager modes: also a cProfile of two steps, host ms per step by area (host_profile)")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "bench_step needs a CUDA GPU"
    if args.fla_configs:
        _limit_autotune(args.fla_configs)
    if args.no_fla:
        dispatch.fla_available = lambda: False  # use_triton looks the name up at call time
    if not dispatch.fla_available():
        print("WARNING: fla-core not importable: KDA runs mixlab's Triton kernels in every mode (not the peer)")
    cfg = get_preset(args.preset)
    model = load_model(args.preset, dtype=torch.bfloat16, device="cuda", seed=0).train()
    master = None  # fp32 master weights for the recipe modes, made on first use
    results = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "fla_available": dispatch.fla_available(),
        "preset": args.preset, "dtype": "bf16", "what": "forward+backward (no optimizer step)",
        "peak_tflops": PEAK_TFLOPS, "rows": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for tokens in [int(t) for t in args.tokens.split(",")]:
        B = tokens // args.seq
        gen = torch.Generator(device="cuda").manual_seed(tokens)
        ids = torch.randint(0, cfg.vocab_size, (B, args.seq), device="cuda", generator=gen)
        fpt = flops_per_token(cfg, args.seq)
        peer_tps = None
        for mode in args.modes.split(","):
            try:
                if mode.startswith("recipe") and master is None:
                    master = load_model(args.preset, dtype=torch.float32, device="cuda", seed=0).train()
                for alive in (model, master):  # no mode's gradients survive into the next mode's peak
                    if alive is not None:
                        alive.zero_grad(set_to_none=True)
                rec = run_mode(master if mode.startswith("recipe") else model, ids, mode, args.iters,
                               args.host_profile)
            except Exception as exc:
                traceback.print_exc()
                rec = {"mode": mode, "error": repr(exc)[:500]}
                torch.cuda.empty_cache()
            rec.update(tokens_per_batch=tokens, batch=B, seq=args.seq)
            if "tokens_per_s" in rec:
                rec["mfu_pct"] = 100.0 * rec["tokens_per_s"] * fpt / (PEAK_TFLOPS * 1e12)
                if mode == "peer":
                    peer_tps = rec["tokens_per_s"]
                if peer_tps:
                    rec["speedup_vs_peer"] = rec["tokens_per_s"] / peer_tps
            results["rows"].append(rec)
            print(json.dumps(rec), flush=True)
            out.write_text(json.dumps(results, indent=2))
    set_fused(True)
    print(f"\n{results['device']}  {args.preset}  fwd+bwd bf16")
    print(f"{'tokens':>7} {'mode':>11} {'tok/s':>9} {'x peer':>7} {'MFU%':>6} {'busy%':>6} {'GiB':>6} {'loss':>8}")
    for r in results["rows"]:
        if "error" in r:
            print(f"{r['tokens_per_batch']:>7} {r['mode']:>11}  ERROR {r['error'][:80]}")
            continue
        busy = r["gpu_busy_pct"]
        print(f"{r['tokens_per_batch']:>7} {r['mode']:>11} {r['tokens_per_s']:>9.0f} {r.get('speedup_vs_peer', 0):>7.2f} "
              f"{r['mfu_pct']:>6.2f} {busy if busy is not None else float('nan'):>6.1f} {r['peak_mem_gib']:>6.2f} "
              f"{r['loss']:>8.4f}")
    for r in results["rows"]:
        if r.get("top_kernels_ms_per_step"):
            print(f"\n{r['mode']} at {r['tokens_per_batch']} tokens: GPU ms per step, launches per step, kernel")
            for name, ms, count in r["top_kernels_ms_per_step"][:20]:
                print(f"  {ms:8.3f} {count:6.1f}  {name[:100]}")
    for r in results["rows"]:
        if r.get("host_ms_per_step_by_area"):
            print(f"\n{r['mode']} at {r['tokens_per_batch']} tokens: host ms per step by area (cProfile)")
            print("  " + ", ".join(f"{k} {v:.1f}" for k, v in r["host_ms_per_step_by_area"].items()))
            for own, cum, calls, name in r["host_top_functions"][:12]:
                print(f"  {own:8.2f} {cum:8.2f} {calls:7.0f}  {name}")


if __name__ == "__main__":
    main()
