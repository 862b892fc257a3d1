"""Loss-curve agreement: N training steps of `1b-a150m` (bf16, AdamW) on the fast path and on the reference path
(backend "torch": per-expert MoE loop, torch KDA, torch norms), same init, same data; reports the largest deviation.
With `--recipe` a third run trains as a recipe's SFT stage does on a GPU: fp32 master weights under bf16 autocast,
forward + backward replayed as one CUDA graph (recipes/graph_step.py), AdamW outside the graph.
With `--fp32-reference` (after the recipe run) the reference path also trains in fp32: its distance from the bf16
reference is what bf16 rounding alone does to the curve (the tolerance the fast path's deviation is judged by; the
curves drift apart most while the loss falls fastest, where a few steps' lag is a large difference). `--reuse FILE`
takes the reference and fast curves from an earlier result instead of training them again.

The data is a fixed-seed Markov chain over the vocabulary, each context with 4 possible successors (entropy ln 4).
Order 1 (default) is learnable within a few hundred steps; the first H100 run used order 2 (a million contexts),
on which the loss stays near ln(vocab) for 200 steps, which makes the agreement check weak.

`--recipe-runs N` trains the recipe path N times; each run records its gradient norms and rechecks any loss spike
(`train_recipe`; `--no-spike-recheck`: no per-step host reads, as before wave 10). The process's MIXLAB_MOE_IMPL
etc. apply to every run.

Usage: python bench/bench_loss_agreement.py [--steps 200] [--batch 2] [--seq 1024] [--recipe [--recipe-runs N]]
    [--fp32-reference] [--reuse bench/results/loss_agreement_h100_s6.json] [--out bench/results/loss_agreement.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from mixlab.kernels import fla_available, set_backend, set_fused
from mixlab.model import load_model
from mixlab.recipes.graph_step import model_step


def markov_batches(steps: int, B: int, T: int, V: int, seed: int = 0, order: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if order == 2:
        nxt = torch.randint(0, V, (V, V, 4), generator=gen)  # each (a, b) context has 4 possible successors
    else:
        nxt = torch.randint(0, V, (V, 4), generator=gen)
    ids = torch.empty(steps, B, T, dtype=torch.long)
    ids[:, :, :2] = torch.randint(0, V, (steps, B, 2), generator=gen)
    choice = torch.randint(0, 4, (steps, B, T), generator=gen)
    for t in range(2, T):
        ctx = nxt[ids[:, :, t - 2], ids[:, :, t - 1]] if order == 2 else nxt[ids[:, :, t - 1]]
        ids[:, :, t] = ctx.gather(-1, choice[:, :, t, None])[..., 0]
    return ids


def _limit_autotune(n: int) -> None:
    """Keep at most n configs per `triton.autotune` defined from now on (num_warps=4 first), before fla imports."""
    import triton

    orig = triton.autotune

    def limited(configs, *a, **kw):
        return orig(sorted(configs, key=lambda c: (c.num_warps != 4, c.num_stages))[:n], *a, **kw)

    triton.autotune = limited


def train(backend: str, data: torch.Tensor, lr: float, dtype: torch.dtype = torch.bfloat16,
          preset: str = "1b-a150m", device: str = "cuda") -> tuple[list[float], float]:
    """Losses of data.shape[0] AdamW steps (grad-norm clip 1.0) from the seed-0 init; also bench_bf16_drift's loop."""
    set_backend(backend)
    set_fused(True)
    model = load_model(preset, dtype=dtype, device=device, seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    t0 = time.perf_counter()
    for step in range(data.shape[0]):
        ids = data[step].to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.detach())
    losses = [float(x) for x in torch.stack(losses).cpu()]  # one host read, after the last step
    return losses, time.perf_counter() - t0


SPIKE_RISE = 0.5  # a step-to-step loss rise above this is rechecked (no wave 7-8 run rose by more than 0.5)


def train_recipe(data: torch.Tensor, lr: float, recheck: bool = True) -> tuple[list[float], float, list[float],
                                                                          list[dict]]:
    """The recipe's graph step; returns losses, seconds, per-step gradient norms (before clipping) and the rechecks
    of spikes. With `recheck`, a step whose loss rises more than SPIKE_RISE above the previous one is run twice more
    on the same weights before the optimizer steps: one more graph replay and one eager forward under the same
    autocast. Which of them reproduce the spike tells a transient fault (neither) from a fault of the captured graph
    (the replay only) from a property of the batch (both); the optimizer then uses the second replay's gradients.
    Rechecking reads each loss on the host (one sync per step), which changes the timing between steps: without it
    (as before wave 10) losses and norms stay on the GPU until the end. Either way one sync follows the first step,
    to print how long loading, compiling and capturing took."""
    set_backend("auto")
    set_fused(True)
    model = load_model("1b-a150m", dtype=torch.float32, device="cuda", seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    step = model_step(model, bf16=True, capture=True)
    one = torch.ones((), device="cuda")
    losses, norms, rechecks = [], [], []
    previous = None
    t0 = time.perf_counter()
    for i in range(data.shape[0]):
        ids = data[i].cuda(non_blocking=True)
        batch = {"input_ids": ids, "labels": ids, "scale": one}
        opt.zero_grad(set_to_none=True)
        loss = step.step(batch).clone()
        if recheck:
            value = float(loss)
            if previous is not None and value - previous > SPIKE_RISE:
                opt.zero_grad(set_to_none=True)
                replay = float(step.step(batch))
                with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
                    eager = float(model(input_ids=ids, labels=ids).loss)
                rechecks.append({"step": i, "loss": value, "replay_loss": replay, "eager_loss": eager,
                                 "previous_loss": previous})
                print(json.dumps({"spike": rechecks[-1]}), flush=True)
            previous = value
        losses.append(loss)
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        if i == 0:  # one sync: how long loading, Triton compiles and the capture took (a cut run still says so)
            torch.cuda.synchronize()
            print(json.dumps({"recipe_first_step_s": round(time.perf_counter() - t0, 1)}), flush=True)
    losses = [float(x) for x in torch.stack(losses).cpu()]
    norms = [float(x) for x in torch.stack(norms).cpu()]
    torch.cuda.synchronize()
    return losses, time.perf_counter() - t0, norms, rechecks


def deviation(a: list[float], b: list[float]) -> list[float]:
    return [abs(x - y) for x, y in zip(a, b)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--order", type=int, default=1, choices=(1, 2))
    parser.add_argument("--out", default="bench/results/loss_agreement.json")
    parser.add_argument("--fla-configs", type=int, default=0,
                        help="keep at most N autotune configs per Triton kernel (fla's first use: minutes uncapped)")
    parser.add_argument("--recipe", action="store_true", help="also train the recipe's graph step (fp32 masters)")
    parser.add_argument("--recipe-runs", type=int, default=1,
                        help="with --recipe: train the recipe path this many times (is its curve reproducible?)")
    parser.add_argument("--no-spike-recheck", action="store_true",
                        help="recipe runs read nothing on the host until the end (no per-step sync, no rechecks)")
    parser.add_argument("--fp32-reference", action="store_true",
                        help="also train the reference path in fp32: the bf16 noise floor")
    parser.add_argument("--reuse", default=None,
                        help="take the reference and fast curves from this earlier result (same settings) instead of "
                             "training them again; then only --recipe / --fp32-reference run")
    args = parser.parse_args()
    if args.fla_configs:
        _limit_autotune(args.fla_configs)
    from mixlab.model import get_preset

    V = get_preset("1b-a150m").vocab_size
    data = markov_batches(args.steps, args.batch, args.seq, V, order=args.order)
    if args.reuse:
        settings = ("steps", "batch", "seq", "lr", "markov_order")
        mine = (args.steps, args.batch, args.seq, args.lr, args.order)
        try:
            old = json.loads(Path(args.reuse).read_text())
            theirs = tuple(old[k] for k in settings)
            ref, ref_s, fast, fast_s = old["loss_reference"], old["reference_s"], old["loss_fast"], old["fast_s"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            parser.error(f"--reuse {args.reuse}: not an earlier result of this script ({type(e).__name__}: {e})")
        if theirs != mine:
            parser.error(f"--reuse {args.reuse}: its {settings} are {theirs}, not {mine}")
    else:
        ref, ref_s = train("torch", data, args.lr)
        fast, fast_s = train("auto", data, args.lr)
    diffs = deviation(ref, fast)
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    res = {
        "device": torch.cuda.get_device_name(), "fla_available": fla_available(), "steps": args.steps,
        "batch": args.batch, "seq": args.seq, "lr": args.lr, "markov_order": args.order, "ln_vocab": math.log(V),
        "reference_s": ref_s, "fast_s": fast_s,
        "max_abs_dev": diffs[worst], "max_abs_dev_step": worst, "max_rel_dev": max(d / r for d, r in zip(diffs, ref)),
        "mean_abs_dev_last20": sum(diffs[-20:]) / len(diffs[-20:]),
        "final_loss_reference": ref[-1], "final_loss_fast": fast[-1],
        "loss_reference": ref, "loss_fast": fast, "reused": args.reuse,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))  # written after each run: a later one may hit a call's time limit
    print(json.dumps({k: v for k, v in res.items() if not k.startswith("loss_")}), flush=True)
    for run in range(args.recipe_runs if args.recipe else 0):  # runs after the first: is the curve reproducible?
        rec, rec_s, rec_norms, rechecks = train_recipe(data, args.lr, recheck=not args.no_spike_recheck)
        rd = deviation(ref, rec)
        w = max(range(len(rd)), key=rd.__getitem__)
        rises = [b - a for a, b in zip(rec, rec[1:])]
        summary = dict(recipe_s=rec_s, recipe_spike_recheck=not args.no_spike_recheck, recipe_max_abs_dev=rd[w],
                       recipe_max_abs_dev_step=w,
                       recipe_mean_abs_dev_last20=sum(rd[-20:]) / len(rd[-20:]), final_loss_recipe=rec[-1],
                       recipe_max_rise=max(rises), recipe_max_rise_step=rises.index(max(rises)) + 1,
                       recipe_spike_rechecks=rechecks, recipe_max_grad_norm=max(rec_norms),
                       recipe_max_grad_norm_step=rec_norms.index(max(rec_norms)))
        if run == 0:
            res.update(summary, loss_recipe=rec, grad_norm_recipe=rec_norms)
        else:
            res.setdefault("recipe_repeats", []).append(dict(summary, loss_recipe=rec, grad_norm_recipe=rec_norms))
            res[f"recipe_vs_first_run_max_abs_dev_{run}"] = max(deviation(res["loss_recipe"], rec))
        out.write_text(json.dumps(res, indent=2))
        print(json.dumps({k: v for k, v in summary.items()} | {"run": run}), flush=True)
    if args.fp32_reference:
        ref32, ref32_s = train("torch", data, args.lr, torch.float32)
        floor, fast32 = deviation(ref, ref32), deviation(fast, ref32)
        res.update(reference_fp32_s=ref32_s, loss_reference_fp32=ref32, final_loss_reference_fp32=ref32[-1],
                   bf16_noise_max_abs_dev=max(floor), bf16_noise_max_abs_dev_step=floor.index(max(floor)),
                   fast_vs_fp32_max_abs_dev=max(fast32), fast_vs_fp32_max_abs_dev_step=fast32.index(max(fast32)))
        out.write_text(json.dumps(res, indent=2))
        print(json.dumps({k: v for k, v in res.items() if ("fp32" in k or "noise" in k) and not k.startswith("loss_")}),
              flush=True)


if __name__ == "__main__":
    main()
