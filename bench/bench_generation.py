"""Generation throughput: mixlab's torch decode loop vs transformers `generate`, same model, prompts, run.

Both backends get the same chat-templated, left-padded batches of a mixlab preset (random init) and decode greedily;
the script checks that their outputs are identical, then reports generated tokens/s for
- torch         : `get_backend("torch")` (drops finished rows from the batch and cache)
- torch-nocompact: the same loop keeping finished rows (fed padding, as transformers does)
- hf            : `get_backend("hf")`, i.e. `model.generate` (the peer; ratios are against it)
A random model rarely emits its end-of-turn token, so by default its logit is made to shadow one frequent token
(`--no-eos-shadow` turns this off): rows then end at different steps, as real chat answers do.

Writes bench/results/generation-<cpu|cuda>-<dtype>.json with the device name and prints the ratios.
Run: `.venv/bin/python bench/bench_generation.py [--preset tiny] [--device cpu] [--prompts 32] [--batch 16]`.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-eos-shadow", action="store_true")
    args = parser.parse_args()

    import torch

    from mixlab.evals.backends import GenerationConfig, get_backend
    from mixlab.model import load_model, load_tokenizer

    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else
                                                            torch.float32)
    torch.manual_seed(0)
    model = load_model(args.preset, dtype=dtype, device=args.device).eval()
    tokenizer = load_tokenizer()
    batch = prompts(args.prompts)
    if not args.no_eos_shadow:
        shadow_eos(model, tokenizer, batch, args.max_new_tokens)
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens)
    methods = {
        "torch": get_backend("torch", model, tokenizer, batch_size=args.batch),
        "torch-nocompact": get_backend("torch", model, tokenizer, batch_size=args.batch, compact=False),
        "hf": get_backend("hf", model, tokenizer, batch_size=args.batch),
    }
    results: dict[str, dict] = {}
    outputs: dict[str, list[str]] = {}
    for name, backend in methods.items():
        backend.generate_detailed(batch[: min(4, len(batch))], cfg.replace(max_new_tokens=4))  # warm-up
        times, runs = [], []
        for _ in range(args.repeats):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            gens = backend.generate_detailed(batch, cfg)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            runs.append([g.text for g in gens])
        tokens = sum(g.output_tokens[0] for g in gens)
        best = min(times)
        outputs[name] = [g.text for g in gens]
        # Whether repeating the same method reproduces its own outputs (bf16 MoE on GPU may not: index_add uses
        # atomics whose summation order varies run to run).
        results[name] = {"seconds": best, "generated_tokens": tokens, "tokens_per_s": tokens / best,
                         "all_seconds": times, "repeats_identical": all(r == runs[0] for r in runs)}
        print(f"{name:16s} {tokens:6d} tokens  {best:7.3f} s  {tokens / best:9.1f} tok/s")
    identical = outputs["torch"] == outputs["hf"] == outputs["torch-nocompact"]
    lengths = [len(t) for t in outputs["torch"]]
    ratios = {name: results[name]["tokens_per_s"] / results["hf"]["tokens_per_s"] for name in results}
    for name, ratio in ratios.items():
        print(f"{name:16s} x{ratio:.2f} vs hf")
    print(f"greedy outputs identical across methods: {identical}")
    payload = {
        "device": device_name(args.device),
        "torch": torch.__version__,
        "preset": args.preset,
        "dtype": str(dtype),
        "prompts": args.prompts,
        "batch_size": args.batch,
        "max_new_tokens": args.max_new_tokens,
        "eos_shadow": not args.no_eos_shadow,
        "answer_chars_min_max": [min(lengths), max(lengths)],
        "results": results,
        "ratio_vs_hf": ratios,
        "outputs_identical": identical,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    out = RESULTS_DIR / f"generation-{kind}-{str(dtype).replace('torch.', '')}.json"
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
