"""`mixlab serve` throughput: concurrent clients (sharing the engine's running batch) vs one at a time.

Starts the server in-process on a preset (random init) and sends N chat requests through mixlab's OpenAI client
with `--concurrency` parallel clients, then `--sequential-requests` of them one at a time (the peer). Greedy answers
must be identical both ways. Prints requests/s and generated tokens/s and their ratio; writes
bench/results/serve-<cpu|cuda>.json.
Run: `.venv/bin/python bench/bench_serve.py [--preset tiny] [--requests 32] [--concurrency 16]`.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

from mixlab.device import cpu_name

RESULTS_DIR = Path(__file__).resolve().parent / "results"

TOPICS = ["the moon", "tax law", "a recursive function", "sourdough bread", "the French revolution",
          "quantum tunnelling", "a haiku about rain", "sorting algorithms", "how vaccines work", "chess openings"]


def prompts(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Explain {TOPICS[i % len(TOPICS)]} to a curious student." +
              " Give examples." * (i % 4)}] for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--sequential-requests", type=int, default=None, help="default: --requests")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch

    from mixlab.evals.backends import GenerationConfig, get_backend
    from mixlab.evals.serve import make_server

    if args.threads:
        torch.set_num_threads(args.threads)
    backend = get_backend("torch", args.preset, device=args.device, batch_size=args.concurrency)
    server = make_server(backend, port=0, model_name=args.preset, max_batch=args.concurrency)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    cfg = GenerationConfig(max_new_tokens=args.max_tokens)
    batch = prompts(args.requests)
    n_seq = args.sequential_requests or args.requests
    results, outputs = {}, {}
    for name, concurrency, items in (("concurrent", args.concurrency, batch), ("sequential", 1, batch[:n_seq])):
        client = get_backend("openai", model=args.preset, base_url=url, concurrency=concurrency)
        client.generate(batch[:2], cfg)  # warm-up (and, on GPU, graph capture for small batches)
        start = time.perf_counter()
        gens = client.generate_detailed(items, cfg)
        seconds = time.perf_counter() - start
        outputs[name] = [g.text for g in gens]
        tokens = sum(g.output_tokens[0] or 0 for g in gens)
        results[name] = {"requests": len(items), "seconds": seconds, "requests_per_s": len(items) / seconds,
                         "completion_tokens": tokens, "tokens_per_s": tokens / seconds}
        print(f"{name:11s} {len(items)} requests  {seconds:7.2f} s  {len(items) / seconds:7.2f} req/s  "
              f"{tokens / seconds:9.1f} tok/s", flush=True)
    server.shutdown()
    ratio = results["concurrent"]["requests_per_s"] / results["sequential"]["requests_per_s"]
    identical = outputs["concurrent"][:n_seq] == outputs["sequential"]
    print(f"concurrent x{ratio:.2f} vs sequential; greedy answers identical: {identical}")
    device = (f"cuda: {torch.cuda.get_device_name(0)}" if args.device.startswith("cuda") else
              f"cpu: {cpu_name()} ({torch.get_num_threads()} threads)")
    payload = {"device": device, "preset": args.preset, "concurrency": args.concurrency,
               "max_tokens": args.max_tokens, "engine": getattr(backend, "use_engine", False), "results": results,
               "ratio_concurrent_vs_sequential": ratio, "outputs_identical": identical}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    out = RESULTS_DIR / f"serve-{kind}.json"
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
