"""`mixlab serve` throughput: concurrent clients (micro-batched into one generation batch) vs one at a time.

Starts the server in-process on a preset (random init) and sends the same N chat requests through mixlab's
OpenAI client twice: with `--concurrency` parallel clients, and sequentially (the peer). Greedy answers must be
identical both ways. Prints requests/s and the ratio; writes bench/results/serve-<cpu|cuda>.json.
Run: `.venv/bin/python bench/bench_serve.py [--preset tiny] [--requests 32] [--concurrency 16]`.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    from bench_generation import device_name, prompts

    from mixlab.evals.backends import GenerationConfig, get_backend
    from mixlab.evals.serve import make_server

    backend = get_backend("torch", args.preset, device=args.device, batch_size=args.concurrency)
    server = make_server(backend, port=0, model_name=args.preset, max_batch=args.concurrency)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    cfg = GenerationConfig(max_new_tokens=args.max_tokens)
    batch = prompts(args.requests)
    results, outputs = {}, {}
    for name, concurrency in (("concurrent", args.concurrency), ("sequential", 1)):
        client = get_backend("openai", model=args.preset, base_url=url, concurrency=concurrency)
        client.generate(batch[:2], cfg)  # warm-up
        start = time.perf_counter()
        outputs[name] = client.generate(batch, cfg)
        seconds = time.perf_counter() - start
        results[name] = {"seconds": seconds, "requests_per_s": args.requests / seconds}
        print(f"{name:11s} {args.requests} requests  {seconds:7.2f} s  {args.requests / seconds:7.2f} req/s")
    server.shutdown()
    ratio = results["concurrent"]["requests_per_s"] / results["sequential"]["requests_per_s"]
    identical = outputs["concurrent"] == outputs["sequential"]
    print(f"concurrent x{ratio:.2f} vs sequential; greedy answers identical: {identical}")
    payload = {"device": device_name(args.device), "preset": args.preset, "requests": args.requests,
               "concurrency": args.concurrency, "max_tokens": args.max_tokens, "results": results,
               "ratio_concurrent_vs_sequential": ratio, "outputs_identical": identical}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    out = RESULTS_DIR / f"serve-{kind}.json"
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
