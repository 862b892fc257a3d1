"""Benchmark: a 1M-row mixture build (exact + MinHash near dedup + 13-gram decontamination against every
registered eval set) with mixlab, beside the same pipeline written as plain `datasets.map/filter`, in one run.

    .venv/bin/python bench/bench_mixture_build.py [--rows 1000000] [--skip-peer]

Data: synthetic Alpaca-style rows in 4 jsonl files (2 sources × 2 shards): 1 % exact duplicates (case and
whitespace changed), 1 % near duplicates (one word changed), and rows that quote eval-set texts (planted
contamination). Both pipelines: adapt to chat messages → token counts (mixlab-bpe + chat template) → length
filter → 13-gram decontamination → exact dedup → MinHash LSH (128 perms, 5-word shingles, threshold 0.85) →
sample 45 % of the budget per source → parquet. Writes bench/results/mixture_build.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from mixlab.device import cpu_name

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

N_GRAM, NUM_PERM, SHINGLE, THRESHOLD, MAX_TOKENS = 13, 128, 5, 0.85, 2048


def device_name() -> str:
    return f"{cpu_name()} ({os.cpu_count()} logical CPUs visible)"


def eval_texts(data_root: Path | None) -> list[tuple[str, str, str]]:
    """(task, item id, text) for every registered task that loads."""
    from mixlab.errors import MixlabError
    from mixlab.evals.tasks.base import get_task, task_names

    out = []
    for name in task_names():
        task = get_task(name)
        try:
            items = task.load(data_root)
        except MixlabError:
            continue
        for item in items:
            for text in task.contamination_texts(item):
                if isinstance(text, str) and text.strip():
                    out.append((name, item.item_id, text))
    return out


def make_data(folder: Path, rows: int, planted: list[str], seed: int = 0) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    syll = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "do", "fe", "gi", "ha", "ju"]
    vocab = np.array(["".join(rng.choice(syll, size=rng.integers(1, 4))) + str(i % 7 if i % 5 == 0 else "")
                      for i in range(20_000)])
    zipf = 1.0 / np.arange(1, len(vocab) + 1) ** 0.9
    zipf /= zipf.sum()
    stats = {"rows": rows, "exact_dups": 0, "near_dups": 0, "planted": 0}
    per_file = rows // 4
    py = random.Random(seed)
    made: list[dict[str, str]] = []
    for f in range(4):
        path = folder / ("src_a" if f < 2 else "src_b") / f"part-{f % 2}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        n = per_file if f < 3 else rows - 3 * per_file
        ins_len = rng.integers(8, 21, size=n)
        out_len = rng.integers(20, 81, size=n)
        words = rng.choice(vocab, size=int(ins_len.sum() + out_len.sum()), p=zipf)
        pos = 0
        with open(path, "w") as fh:
            for i in range(n):
                instruction = " ".join(words[pos : pos + ins_len[i]])
                pos += ins_len[i]
                output = " ".join(words[pos : pos + out_len[i]])
                pos += out_len[i]
                row = {"instruction": instruction.capitalize() + "?", "input": "", "output": output + "."}
                r = py.random()
                if made and r < 0.01:
                    src = py.choice(made)
                    row = {"instruction": "  " + src["instruction"].upper(), "input": "", "output": src["output"]}
                    stats["exact_dups"] += 1
                elif made and r < 0.02:
                    src = py.choice(made)
                    toks = src["output"].split()
                    toks[py.randrange(len(toks))] = "changed"
                    row = {"instruction": src["instruction"], "input": "", "output": " ".join(toks)}
                    stats["near_dups"] += 1
                elif planted and r < 0.0205:
                    row = {"instruction": "Please solve: " + py.choice(planted), "input": "", "output": output + "."}
                    stats["planted"] += 1
                if len(made) < 50_000 and r > 0.9:
                    made.append(row)
                fh.write(json.dumps(row) + "\n")
    return stats


MIXTURE = """
name: bench-1m
budget: {{unit: samples, total: {total}}}
filters:
  - {{name: length, max_tokens: {max_tokens}}}
dedup: {{exact: true, near: {{threshold: {threshold}, num_perm: {num_perm}, shingle: {shingle}}}}}
decontamination: {{n: {n}}}
components:
  - {{name: a, weight: 1, source: {{local: src_a/*.jsonl, adapter: alpaca}}}}
  - {{name: b, weight: 1, source: {{local: src_b/*.jsonl, adapter: alpaca}}}}
"""


def run_mixlab(data: Path, total: int, eval_root: Path | None) -> dict:
    import resource

    from mixlab.mixtures import build
    from mixlab.mixtures import decontam

    mix = data / "bench-1m.yaml"
    mix.write_text(MIXTURE.format(total=total, max_tokens=MAX_TOKENS, threshold=THRESHOLD, num_perm=NUM_PERM,
                                  shingle=SHINGLE, n=N_GRAM))
    # The eval sets come from the benchmark data root; the bench sources live under `data` (absolute globs).
    text = mix.read_text().replace("local: src_", f"local: {data}/src_")
    mix.write_text(text)
    decontam._CACHE.clear()
    stages: dict[str, float] = {}
    last = [time.perf_counter()]

    def progress(stage: str, done: int, total_: int) -> None:
        now = time.perf_counter()
        key = "read" if stage.startswith("read ") else stage
        stages[key] = stages.get(key, 0.0) + now - last[0]
        last[0] = now

    t0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    built = build(mix, data_root=eval_root, record=False, force=True, progress=progress)
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    m = built.manifest
    return {"seconds": seconds, "cpu_seconds": round(cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime, 1),
            "load_average_1m": os.getloadavg()[0], "stages": {k: round(v, 2) for k, v in stages.items()}, "rows_out": m["n_rows"],
            "dropped": {c["path"]: c["dropped"] for c in m["components"]},
            "decontaminated": m["decontamination"]["flagged_rows"], "path": str(built.path)}


def run_peer(data: Path, total: int, evals: list[tuple[str, str, str]], out: Path) -> dict:
    """The same pipeline as a user would write it with `datasets` (+ datasketch for MinHash LSH)."""
    import datasets
    from datasketch import MinHash, MinHashLSH
    from transformers import PreTrainedTokenizerFast

    from mixlab.paths import tokenizers_dir

    datasets.disable_progress_bars()
    t0 = time.perf_counter()
    tok = PreTrainedTokenizerFast.from_pretrained(str(tokenizers_dir() / "mixlab-bpe"))
    word = re.compile(r"\w+")
    grams: set[tuple[str, ...]] = set()
    shorts: set[tuple[str, ...]] = set()
    for _, _, text in evals:
        toks = word.findall(text.lower())
        if len(toks) >= N_GRAM:
            grams.update(tuple(toks[i : i + N_GRAM]) for i in range(len(toks) - N_GRAM + 1))
        elif len(toks) >= 6:
            shorts.add(tuple(toks))
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hi"}]
    overhead = len(tok.apply_chat_template(probe, tokenize=True)) - 2 * len(tok("hi", add_special_tokens=False)["input_ids"])
    ds = datasets.load_dataset("json", data_files={"a": [str(p) for p in sorted((data / "src_a").glob("*.jsonl"))],
                                                    "b": [str(p) for p in sorted((data / "src_b").glob("*.jsonl"))]},
                               cache_dir=str(out / "hf-cache"))
    stats = {}

    def adapt(b):
        return {"messages": [[{"role": "user", "content": i + (f"\n\n{x}" if x else "")},
                              {"role": "assistant", "content": o}]
                             for i, x, o in zip(b["instruction"], b["input"], b["output"])]}

    def count(b):
        users = tok([m[0]["content"] for m in b["messages"]], add_special_tokens=False)["input_ids"]
        answers = tok([m[1]["content"] for m in b["messages"]], add_special_tokens=False)["input_ids"]
        return {"n_tokens": [len(u) + len(a) + overhead for u, a in zip(users, answers)]}

    def clean(b):
        keep = []
        for m in b["messages"]:
            hit = False
            for msg in m:
                toks = word.findall(msg["content"].lower())
                if len(toks) < N_GRAM:
                    hit = hit or tuple(toks) in shorts
                else:
                    hit = hit or any(tuple(toks[i : i + N_GRAM]) in grams for i in range(len(toks) - N_GRAM + 1))
            keep.append(not hit)
        return keep

    parts = {}
    for split in ("a", "b"):
        d = ds[split].map(adapt, batched=True, remove_columns=["instruction", "input", "output"])
        d = d.map(count, batched=True)
        n0 = len(d)
        d = d.filter(lambda b: [n <= MAX_TOKENS for n in b["n_tokens"]], batched=True)
        n1 = len(d)
        d = d.filter(clean, batched=True)
        stats[split] = {"loaded": n0, "length": n0 - n1, "decontamination": n1 - len(d)}
        parts[split] = d
    # Exact dedup across sources (normalised text), then MinHash LSH, both sequential as the datasets docs do it.
    seen: set[int] = set()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)

    def text_of(m):
        return "\n".join(f"{x['role']}: {x['content']}" for x in m)

    for split in ("a", "b"):
        d = parts[split]

        def exact(b, split=split):
            keep = []
            for m in b["messages"]:
                h = hash(re.sub(r"\s+", " ", text_of(m).lower()).strip())
                keep.append(h not in seen)
                seen.add(h)
            return keep

        n0 = len(d)
        d = d.filter(exact, batched=True)
        n1 = len(d)

        def near(b, split=split, offset=[0]):
            keep = []
            for m in b["messages"]:
                toks = word.findall(text_of(m).lower())
                shingles = {" ".join(toks[i : i + SHINGLE]) for i in range(max(1, len(toks) - SHINGLE + 1))}
                mh = MinHash(num_perm=NUM_PERM)
                mh.update_batch([s.encode() for s in shingles])
                dup = bool(lsh.query(mh))
                if not dup:
                    lsh.insert(f"{split}{offset[0]}", mh)
                offset[0] += 1
                keep.append(not dup)
            return keep

        d = d.filter(near, batched=True)
        stats[split].update({"dedup_exact": n0 - n1, "dedup_near": n1 - len(d)})
        parts[split] = d
    half = total // 2
    sampled = [parts["a"].shuffle(seed=0).select(range(half)), parts["b"].shuffle(seed=0).select(range(total - half))]
    final = datasets.concatenate_datasets(sampled).shuffle(seed=0)
    final.to_parquet(str(out / "peer.parquet"))
    return {"seconds": time.perf_counter() - t0, "rows_out": len(final), "dropped": stats,
            "load_average_1m": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--peer-rows", type=int, default=None,
                        help="run the datasets peer (and mixlab again) on this many rows instead of --rows: the "
                             "plain pipeline needs ~1 ms/row, so a full 1M-row peer takes over an hour on 2 cores")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mixture_build.json")
    args = parser.parse_args()
    from mixlab.paths import data_root

    work = Path(tempfile.mkdtemp(prefix="mixlab-bench-"))
    os.environ["MIXLAB_RUNS"] = str(work / "runs")
    try:
        root = data_root()
        evals = eval_texts(root)
        planted = [t for _, _, t in evals if 8 <= len(t.split()) <= 60][:2000]
        t0 = time.perf_counter()
        data_stats = make_data(work / "data", args.rows, planted)
        print(f"generated {args.rows:,} rows in {time.perf_counter() - t0:.1f}s: {data_stats}", flush=True)
        total = int(args.rows * 0.9)
        ours = run_mixlab(work / "data", total, root)
        print(f"mixlab: {ours['seconds']:.1f}s, {ours['rows_out']:,} rows, stages {ours['stages']}", flush=True)
        result = {"benchmark": "mixture_build", "device": device_name(), "python": sys.version.split()[0],
                  "rows_in": args.rows, "budget_rows": total, "eval_texts": len(evals), "data": data_stats,
                  "params": {"ngram": N_GRAM, "num_perm": NUM_PERM, "shingle": SHINGLE, "threshold": THRESHOLD},
                  "mixlab": ours}
        if not args.skip_peer:
            peer_rows = args.peer_rows or args.rows
            peer_data = work / "data"
            ours_same = ours
            if peer_rows != args.rows:
                peer_data = work / "peer-data"
                result["peer_data"] = make_data(peer_data, peer_rows, planted)
                ours_same = run_mixlab(peer_data, int(peer_rows * 0.9), root)
                print(f"mixlab on {peer_rows:,} rows: {ours_same['seconds']:.1f}s", flush=True)
                result["mixlab_on_peer_rows"] = ours_same
            peer = run_peer(peer_data, int(peer_rows * 0.9), evals, work)
            print(f"datasets.map/filter on {peer_rows:,} rows: {peer['seconds']:.1f}s, {peer['rows_out']:,} rows",
                  flush=True)
            result["peer_rows"] = peer_rows
            result["datasets_map_filter"] = peer
            result["speedup_vs_datasets"] = round(peer["seconds"] / ours_same["seconds"], 2)
            print(f"speed-up on the same {peer_rows:,} rows: {result['speedup_vs_datasets']}x", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
