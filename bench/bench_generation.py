"""Generation throughput: mixlab's engine vs transformers `generate`, same model, prompts and run.

Methods (all greedy, same chat-templated prompts of a mixlab preset, random init):
- engine : `get_backend("torch")`, i.e. the continuous-batching engine (CUDA graphs on GPU), as configured (on CUDA
  its Triton decode kernels are the default since the H100 run of BENCHMARKS.md)
- engine-fused / engine-reference : the same with MIXLAB_FUSED_DECODE=1 / 0 (Triton decode kernels / torch references)
- loop   : `get_backend("torch", engine=False)`, the plain batched decode loop (the previous default)
- hf     : `get_backend("hf")`, i.e. `model.generate` (the peer; ratios are against it)
A random model rarely emits its end-of-turn token, so by default its logit is made to shadow one frequent token
(`--no-eos-shadow` turns this off): rows then end at different steps, as real chat answers do.

`--agreement` (for bf16) compares the engine's and generate's token ids row by row and, at each first divergence,
scores both candidate tokens with an fp32 copy of the model: if the fp32 logit gap between them is within the bf16
error of that gap, the rows split on a rounding-level near-tie. It also runs generate at a second batch size to show
whether generate agrees with itself.
`--context-scan 1024,32768` times the engine's decode step with every row at that context (per generated token);
`--step-compare ROWS,CTX` times one decode step with and without the fused decode kernels (and counts its kernels).

Writes bench/results/generation-<cpu|cuda>-<dtype>[-tag].json with the device name and prints the ratios.
Run: `.venv/bin/python bench/bench_generation.py [--preset small] [--device cpu] [--prompts 32] [--batch 16]`.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import time
from pathlib import Path

from mixlab.device import cpu_name

RESULTS_DIR = Path(__file__).resolve().parent / "results"

TOPICS = ["the moon", "tax law", "a recursive function", "sourdough bread", "the French revolution",
          "quantum tunnelling", "a haiku about rain", "sorting algorithms", "how vaccines work", "chess openings",
          "the water cycle", "a cover letter", "photosynthesis", "binary search", "jazz harmony", "volcanoes"]


def prompts(n: int) -> list[list[dict[str, str]]]:
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        detail = " Please be thorough and give examples." * (i % 5)
        out.append([{"role": "user", "content": f"Explain {topic} to a curious student.{detail}"}])
    return out


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {cpu_name()} ({torch.get_num_threads()} threads)"


def shadow_eos(model, tokenizer, sample_prompts, max_new_tokens: int) -> None:
    import torch

    from mixlab.evals.backends import GenerationConfig, get_backend

    free = get_backend("torch", model, tokenizer, batch_size=4).generate(sample_prompts[:1], GenerationConfig(
        max_new_tokens=max_new_tokens))
    ids = tokenizer(free[0], add_special_tokens=False)["input_ids"]
    victim = ids[len(ids) // 3] if ids else 0
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        head[tokenizer.eos_token_id] = head[victim] * 1.2


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_methods(methods, batch, cfg, repeats, device):
    """Best of `repeats` rounds, methods interleaved within each round (so load changes on a shared machine hit
    all of them alike). Also records process CPU time: with one torch thread it is robust to other processes."""
    results, outputs = {}, {}
    for backend in methods.values():
        backend.generate_detailed(batch[: min(4, len(batch))], cfg.replace(max_new_tokens=4))  # warm-up
    times = {name: [] for name in methods}
    cpu = {name: [] for name in methods}
    runs = {name: [] for name in methods}
    gens = {}
    for _ in range(repeats):
        for name, backend in methods.items():
            sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            gens[name] = backend.generate_detailed(batch, cfg)
            sync(device)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            runs[name].append([g.text for g in gens[name]])
    for name, backend in methods.items():
        tokens = sum(g.output_tokens[0] for g in gens[name])
        best, best_cpu = min(times[name]), min(cpu[name])
        outputs[name] = runs[name][0]
        results[name] = {"seconds": best, "cpu_seconds": best_cpu, "generated_tokens": tokens,
                         "tokens_per_s": tokens / best, "tokens_per_cpu_s": tokens / best_cpu,
                         "all_seconds": times[name], "all_cpu_seconds": cpu[name],
                         "repeats_identical": all(r == runs[name][0] for r in runs[name])}
        engine = getattr(backend, "_engine", None)
        if engine is not None:
            results[name]["engine_stats"] = dict(engine.stats)
        print(f"{name:8s} {tokens:6d} tokens  {best:7.3f} s  {tokens / best:9.1f} tok/s  "
              f"(cpu {best_cpu:7.3f} s, {tokens / best_cpu:9.1f} tok/cpu-s)", flush=True)
    return results, outputs


def hf_token_ids(model, encoded, pad, eos, batch_size, max_new):
    """`model.generate` greedy token ids per prompt (left-padded batches in the given order), cut at EOS."""
    import torch

    device = next(model.parameters()).device
    out = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(c) for c in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, c in enumerate(chunk):
            ids[i, width - len(c) :] = torch.tensor(c)
            mask[i, width - len(c) :] = 1
        with torch.inference_mode():
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new,
                                 do_sample=False, temperature=None, top_p=None, top_k=None, eos_token_id=sorted(eos),
                                 pad_token_id=pad)
        for row in gen[:, width:].tolist():
            cut = next((k for k, t in enumerate(row) if t in eos), len(row))
            out.append(row[:cut])
    return out


def agreement(model, tokenizer, backend, batch, cfg, hf_batch, hf_batch_alt):
    """Row agreement engine vs generate (and generate vs itself), with an fp32 look at every first divergence."""
    import torch

    from mixlab.evals.backends.torch_backend import encode_chat

    encoded = [encode_chat(tokenizer, p) for p in batch]
    eos = backend.eos_ids
    ours = [s[0][0] for s in backend.engine.generate(encoded, cfg)]
    theirs = hf_token_ids(model, encoded, tokenizer.pad_token_id, eos, hf_batch, cfg.max_new_tokens)
    theirs_alt = hf_token_ids(model, encoded, tokenizer.pad_token_id, eos, hf_batch_alt, cfg.max_new_tokens)
    model32 = copy.deepcopy(model).float()
    gaps = []
    for prompt, a, b in zip(encoded, ours, theirs):
        d = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if d is None:
            continue
        ctx = torch.tensor([prompt + a[:d]], device=next(model.parameters()).device)
        with torch.no_grad():
            l32 = model32(input_ids=ctx, use_cache=False).logits[0, -1].float()
            l16 = model(input_ids=ctx, use_cache=False).logits[0, -1].float()
        ta, tb = a[d], b[d]
        gap32 = float(l32[ta] - l32[tb])
        gap16 = float(l16[ta] - l16[tb])
        top2 = l32.topk(2).values
        gaps.append({"position": d, "fp32_gap_engine_minus_hf": gap32, "bf16_gap": gap16,
                     "bf16_error_of_gap": abs(gap16 - gap32), "fp32_top2_margin": float(top2[0] - top2[1]),
                     "fp32_argmax_is": "engine" if int(l32.argmax()) == ta else
                     ("hf" if int(l32.argmax()) == tb else "neither")})

    def rate(x, y):
        return sum(p == q for p, q in zip(x, y)) / len(x)

    def prefix(x, y):
        return sum(next((k for k, (p, q) in enumerate(zip(a, b)) if p != q), min(len(a), len(b)))
                   for a, b in zip(x, y)) / len(x)

    out = {
        "rows": len(encoded),
        "engine_vs_hf_rows_identical": rate(ours, theirs),
        "hf_vs_hf_other_batch_rows_identical": rate(theirs, theirs_alt),
        "hf_batch_sizes": [hf_batch, hf_batch_alt],
        "engine_vs_hf_mean_common_prefix_tokens": prefix(ours, theirs),
        "divergences": gaps,
    }
    if gaps:
        absgap = sorted(abs(g["fp32_gap_engine_minus_hf"]) for g in gaps)
        err = sorted(g["bf16_error_of_gap"] for g in gaps)
        out["median_abs_fp32_gap"] = absgap[len(absgap) // 2]
        out["median_bf16_error_of_gap"] = err[len(err) // 2]
        out["fp32_prefers"] = {k: sum(g["fp32_argmax_is"] == k for g in gaps) for k in ("engine", "hf", "neither")}
    print(f"agreement: engine vs hf {out['engine_vs_hf_rows_identical']:.2f}, hf(batch {hf_batch}) vs "
          f"hf(batch {hf_batch_alt}) {out['hf_vs_hf_other_batch_rows_identical']:.2f}", flush=True)
    return out


def timed_engine(model, rows, ctx, steps, device):
    """An engine decoding `rows` random prompts of `ctx` tokens (no EOS): its prefill (+ first decode step) timed,
    3 steps to capture the decode shape, then `steps` decode steps timed. Returns (engine, prefill s, s a step);
    the engine can run a few more steps."""
    import torch

    from mixlab.evals.backends import GenerationConfig
    from mixlab.evals.engine import Engine

    engine = Engine(model, eos_ids=set(), max_batch=rows, max_context=ctx + steps + 16)
    g = torch.Generator().manual_seed(ctx)
    cfg = GenerationConfig(max_new_tokens=steps + 16)
    for _ in range(rows):
        engine.submit(torch.randint(0, model.config.vocab_size - 8, (ctx,), generator=g).tolist(), cfg)
    sync(device)
    t0 = time.perf_counter()
    engine.step()  # prefill (all rows) + the first decode step
    sync(device)
    prefill_s = time.perf_counter() - t0
    for _ in range(3):  # graph capture for this shape happens here
        engine.step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    sync(device)
    return engine, prefill_s, (time.perf_counter() - t0) / steps


def context_scan(model, contexts, rows, steps, device):
    """Per-token decode time with every row at each context length (random prompt ids, no EOS)."""
    import torch

    out = {}
    for ctx in contexts:
        engine, prefill_s, per_step = timed_engine(model, rows, ctx, steps, device)
        out[str(ctx)] = {"rows": rows, "step_ms": per_step * 1e3, "per_token_ms": per_step * 1e3 / rows,
                         "tokens_per_s": rows / per_step, "prefill_s": prefill_s}
        print(f"context {ctx:6d}: decode step {per_step * 1e3:8.3f} ms for {rows} rows "
              f"({rows / per_step:9.1f} tok/s)", flush=True)
        del engine
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    first, last = str(contexts[0]), str(contexts[-1])
    out["ratio_last_vs_first"] = out[last]["per_token_ms"] / out[first]["per_token_ms"]
    return out


class WithEnv:
    """A backend whose calls run with extra environment variables (e.g. MIXLAB_ENGINE_MOE=fused: the engine reads
    it when it captures a decode shape, so the whole run uses that form)."""

    def __init__(self, backend, **env):
        self.backend, self.env = backend, env

    def _run(self, fn, *args, **kwargs):
        import os

        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            return fn(*args, **kwargs)
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None)
                if v is not None:
                    os.environ[k] = v

    def generate_detailed(self, *args, **kwargs):
        return self._run(self.backend.generate_detailed, *args, **kwargs)

    def close(self):
        self.backend.close()

    @property
    def _engine(self):
        return getattr(self.backend, "_engine", None)


def step_compare(model, rows, ctx, steps, device):
    """Decode-step time and GPU kernels per step, same model and run: "reference" (MIXLAB_FUSED_DECODE=0: the decode
    ops' torch references, the gather/dense MoE form), "fused" (MIXLAB_FUSED_DECODE=1 for `kda_decode_step` and
    `mla_decode_paged` only), "fused+moe" (also `moe_decode_block`) and "fused+moe+proj" (everything
    MIXLAB_FUSED_DECODE=1 turns on, the KDA projections included: the CUDA default)."""
    import os

    import torch

    cfg = model.config
    plain_moe = "gather" if rows * cfg.num_experts_per_token < cfg.num_experts else "dense"
    saved = {k: os.environ.get(k) for k in ("MIXLAB_FUSED_DECODE", "MIXLAB_ENGINE_MOE", "MIXLAB_FUSED_DECODE_PROJ")}
    out = {}
    try:
        for name in ("fused+moe+proj", "fused+moe", "fused", "reference"):
            os.environ["MIXLAB_FUSED_DECODE"] = "0" if name == "reference" else "1"
            os.environ["MIXLAB_ENGINE_MOE"] = "fused" if "moe" in name else plain_moe
            os.environ["MIXLAB_FUSED_DECODE_PROJ"] = "1" if "proj" in name else "0"
            engine, _, per_step = timed_engine(model, rows, ctx, steps, device)
            launches = busy = None
            if device.startswith("cuda"):
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                    engine.step()
                    sync(device)
                events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
                launches = sum(e.count for e in events)
                busy = sum(e.self_device_time_total for e in events) / 1e3  # ms of GPU time in the step
                top = sorted(events, key=lambda e: -e.self_device_time_total)[:15]
                print(f"  GPU busy {busy:.3f} ms of the step; top kernels (ms, count):", flush=True)
                for e in top:
                    print(f"    {e.self_device_time_total / 1e3:7.3f} {e.count:5d}  {e.key[:110]}", flush=True)
            out[name] = {"step_ms": per_step * 1e3, "tokens_per_s": rows / per_step, "gpu_kernels_per_step": launches,
                         "gpu_busy_ms": busy if launches is not None else None}
            print(f"step-compare {name:9s} rows {rows} ctx {ctx}: {per_step * 1e3:8.3f} ms a step "
                  f"({rows / per_step:9.1f} tok/s), {launches} GPU kernels a step", flush=True)
            del engine
            gc.collect()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v
    out["speedup"] = out["reference"]["step_ms"] / out["fused"]["step_ms"]
    out["speedup_with_moe"] = out["reference"]["step_ms"] / out["fused+moe"]["step_ms"]
    out["speedup_with_moe_proj"] = out["reference"]["step_ms"] / out["fused+moe+proj"]["step_ms"]
    print(f"step-compare vs references: fused attention decode kernels x{out['speedup']:.2f}, + fused MoE "
          f"x{out['speedup_with_moe']:.2f}, + fused KDA projections x{out['speedup_with_moe_proj']:.2f}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16, help="engine: most rows at once; loop/hf: batch size")
    parser.add_argument("--engine-batch", type=int, default=None, help="engine rows (default --batch); "
                        "method hf-engine-batch runs generate at this batch size")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--methods", default="engine,loop,hf")
    parser.add_argument("--no-eos-shadow", action="store_true")
    parser.add_argument("--agreement", action="store_true")
    parser.add_argument("--hf-batch-alt", type=int, default=8, help="--agreement: generate's second batch size")
    parser.add_argument("--context-scan", default="", help="comma-separated context lengths, e.g. 1024,32768")
    parser.add_argument("--scan-rows", default="1,8", help="comma-separated rows for --context-scan")
    parser.add_argument("--scan-steps", type=int, default=32)
    parser.add_argument("--tag", default="")
    parser.add_argument("--step-compare", default="", help="ROWS,CTX: decode step with the fused decode kernels vs "
                        "their torch references (time and GPU kernels a step)")
    args = parser.parse_args()

    import torch

    from mixlab.evals.backends import GenerationConfig, get_backend
    from mixlab.model import load_model, load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else
                                                            torch.float32)
    torch.manual_seed(0)
    model = load_model(args.preset, dtype=dtype, device=args.device).eval()
    tokenizer = load_tokenizer()
    batch = prompts(args.prompts)
    if not args.no_eos_shadow:
        shadow_eos(model, tokenizer, batch, args.max_new_tokens)
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens)
    engine_batch = args.engine_batch or args.batch
    factories = {
        "engine": lambda: get_backend("torch", model, tokenizer, batch_size=engine_batch),
        "engine-fused": lambda: WithEnv(get_backend("torch", model, tokenizer, batch_size=engine_batch),
                                        MIXLAB_FUSED_DECODE="1"),
        "engine-reference": lambda: WithEnv(get_backend("torch", model, tokenizer, batch_size=engine_batch),
                                            MIXLAB_FUSED_DECODE="0"),
        "loop": lambda: get_backend("torch", model, tokenizer, batch_size=args.batch, engine=False),
        "hf": lambda: get_backend("hf", model, tokenizer, batch_size=args.batch),
        "hf-engine-batch": lambda: get_backend("hf", model, tokenizer, batch_size=engine_batch),
    }
    payload = {
        "device": device_name(args.device), "torch": torch.__version__, "preset": args.preset, "dtype": str(dtype),
        "prompts": args.prompts, "batch_size": args.batch, "engine_batch": engine_batch,
        "max_new_tokens": args.max_new_tokens,
        "eos_shadow": not args.no_eos_shadow,
    }
    names = [m for m in args.methods.split(",") if m]
    if names:
        methods = {name: factories[name]() for name in names}
        results, outputs = time_methods(methods, batch, cfg, args.repeats, args.device)
        payload["results"] = results
        if "hf" in results:
            ratios = {name: results[name]["tokens_per_s"] / results["hf"]["tokens_per_s"] for name in results}
            payload["ratio_vs_hf"] = ratios
            payload["cpu_time_ratio_vs_hf"] = {
                name: results[name]["tokens_per_cpu_s"] / results["hf"]["tokens_per_cpu_s"] for name in results}
            for name, ratio in ratios.items():
                print(f"{name:16s} x{ratio:.2f} vs hf (wall), x{payload['cpu_time_ratio_vs_hf'][name]:.2f} (cpu time)")
        identical = all(outputs[n] == outputs[names[0]] for n in names)
        payload["outputs_identical"] = identical
        payload["rows_identical_vs_first"] = {
            n: sum(a == b for a, b in zip(outputs[n], outputs[names[0]])) / len(batch) for n in names}
        lengths = [len(t) for t in outputs[names[0]]]
        payload["answer_chars_min_max"] = [min(lengths), max(lengths)]
        print(f"greedy outputs identical across methods: {identical} {payload['rows_identical_vs_first']}")
        if args.agreement and "engine" in methods:
            payload["agreement"] = agreement(model, tokenizer, methods["engine"], batch, cfg, args.batch,
                                             args.hf_batch_alt)
        for backend in methods.values():
            backend.close()
        del methods
        gc.collect()
    if args.context_scan:
        contexts = [int(c) for c in args.context_scan.split(",")]
        payload["context_scan"] = {
            rows: context_scan(model, contexts, int(rows), args.scan_steps, args.device)
            for rows in args.scan_rows.split(",")}
        for rows, scan in payload["context_scan"].items():
            print(f"rows {rows}: per-token decode at {contexts[-1]} vs {contexts[0]}: "
                  f"x{scan['ratio_last_vs_first']:.2f}")
    if args.step_compare:
        rows, ctx = (int(v) for v in args.step_compare.split(","))
        payload["step_compare"] = step_compare(model, rows, ctx, args.scan_steps, args.device)
    from mixlab.kernels.dispatch import failed_kernels

    payload["kernels_fallen_back"] = failed_kernels()  # decode kernels that raised and ran their reference instead
    print(f"kernels that fell back to their reference: {payload['kernels_fallen_back'] or 'none'}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    suffix = f"-{args.tag}" if args.tag else ""
    out = RESULTS_DIR / f"generation-{kind}-{str(dtype).replace('torch.', '')}{suffix}.json"
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
