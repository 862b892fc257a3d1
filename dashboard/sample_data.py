"""A realistic mixlab database, written through the real store API, for dashboard tests, demos and benchmarks.

The numbers come from a small generative story, not from random noise: each mixture's realised source shares set
latent math / code / chat skills, the ladder rung and training stage scale them, and every benchmark draws its
per-item outcomes from those skills. So the leaderboard-versus-usability trade-off, the Pareto front, the CIs
(Wilson for rates, bootstrap for judge scores) and the per-sample rows are mutually consistent, as in a real lab.

    python -m mixlab.dashboard.sample_data --db /tmp/sample.duckdb [--runs 40] [--samples-per-task 24]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from mixlab.store import MetricRecord, RunRecord, Store

# (source name, kind, skill it teaches: math | code | chat, rows available)
SOURCES = [
    ("proc-math", "procedural", "math", 200_000),
    ("gsm8k-train", "local", "math", 7_473),
    ("proc-code", "procedural", "code", 200_000),
    ("code-alpaca-2k", "local", "code", 2_000),
    ("proc-chat", "procedural", "chat", 200_000),
    ("alpaca-demo", "local", "chat", 5_000),
    ("ultrachat-demo", "local", "chat", 4_000),
]
_SKILL = {name: skill for name, _, skill, _ in SOURCES}

# family -> Dirichlet concentration per source (same order as SOURCES)
FAMILIES = {
    "math-heavy": [6, 3, 1, 0.5, 1, 0.5, 0.5],
    "code-heavy": [1, 0.5, 6, 3, 1, 0.5, 0.5],
    "chat-heavy": [0.7, 0.3, 0.7, 0.3, 5, 3, 2],
    "balanced": [2, 1, 2, 1, 2, 1, 1],
    "reasoning+chat": [3, 2, 1, 0.5, 3, 1, 1],
}

RUNGS = [("r0", "tiny", 0.0), ("r1", "small", 0.35), ("r2", "1b-a150m", 0.75)]
STAGES = ["sft", "dpo", "grpo"]
BASE_MODELS = ["mixlab/kimi-linear-tiny-base", "mixlab/kimi-linear-tiny-base-v2"]


@dataclass(frozen=True)
class TaskSpec:
    task: str
    category: str  # leaderboard | usability | other
    skill: str
    n_items: int
    metrics: tuple[str, ...]
    judged: bool = False


# Task and metric names as `mixlab.evals.runner` writes them (style/* metrics ride along on every task).
TASKS = [
    TaskSpec("proc-math", "leaderboard", "math", 300, ("accuracy",)),
    TaskSpec("gsm8k", "leaderboard", "math", 1319, ("exact_match_strict", "exact_match_flexible")),
    TaskSpec("math500", "leaderboard", "math", 500, ("accuracy", "accuracy_any_extraction")),
    TaskSpec("proc-code", "leaderboard", "code", 200, ("pass@1",)),
    TaskSpec("humaneval", "leaderboard", "code", 164, ("pass@1", "pass@10")),
    TaskSpec("mbpp", "leaderboard", "code", 257, ("pass@1",)),
    TaskSpec("proc-chat", "usability", "chat", 300, ("format_satisfied", "constraint_acc")),
    TaskSpec("ifeval", "usability", "chat", 541, ("prompt_level_strict_acc", "prompt_level_loose_acc",
                                                  "inst_level_strict_acc", "inst_level_loose_acc")),
    TaskSpec("mt-bench", "usability", "chat", 160, ("score", "score_turn1", "score_turn2", "judge_unparseable"),
             judged=True),
    TaskSpec("alpaca-eval", "usability", "chat", 805, ("lc_win_rate", "win_rate", "judge_unparseable",
                                                       "length_chars"), judged=True),
]
STYLE_KEYS = ("refusal", "repetition_3gram", "broken_format", "markdown_density", "chars")

_PROMPTS = {
    "math": [
        "Tom has {a} apples and buys {b} more. He gives {c} to a friend. How many apples does he have now?",
        "A train travels {a} km in the morning and {b} km in the afternoon, then returns {c} km. How far is it from the start?",
        "A shop sells pens at {a} cents each. Ana buys {b} pens and pays with {c} dimes. How much change in cents?",
    ],
    "code": [
        "Write a Python function `f(xs)` that returns the sum of the {a} largest values in the list xs.",
        "Write `count_vowels(s)` returning how many vowels appear in s, ignoring case; s has at most {b} chars.",
        "Write `rotate(xs, k)` that rotates the list xs right by k positions (k may exceed {c}).",
    ],
    "chat": [
        "Explain why the sky is blue in exactly {a} sentences, without using the word 'light'.",
        "Write a short product description for a kettle as a bullet list of {b} items, all lowercase.",
        "Give three tips for a job interview. Answer in JSON with keys 'tips' and 'summary' ({c} words max).",
    ],
}

# (reference, a good answer, a bad answer) per chat prompt template above.
_CHAT_ANSWERS = [
    ("The sky looks blue because air scatters short wavelengths more strongly than long ones.",
     "Air molecules scatter short blue wavelengths far more than red ones. Our eyes see that scattered glow from "
     "every direction. So the daytime sky appears blue.",
     "blue blue because of the the scattering. 42."),
    ("- boils a litre in three minutes\n- cool-touch handle\n- switches off when empty",
     "- boils a litre in three minutes\n- cool-touch handle\n- auto shut-off when dry\n- limescale filter",
     "The Kettle 3000 is the BEST kettle. It boils water. Buy it today!"),
    ('{"tips": ["research the company", "prepare examples", "ask questions"], "summary": "prepare and engage"}',
     '{"tips": ["research the company", "practise answers with examples", "ask your own questions"], '
     '"summary": "prepare, then engage"}',
     'tips: research the company, prepare examples, ask questions (summary: be prepared'),
]

_RATIONALES_GOOD = [
    "The answer follows every constraint and is helpful; tone is natural.",
    "Accurate, well structured, and the requested format is respected.",
    "Directly answers the question with a correct, concise explanation.",
]
_RATIONALES_BAD = [  # one per chat prompt template
    "The answer ignores the sentence-count constraint and drifts into a bare number; unhelpful.",
    "Not a lowercase bullet list as requested; reads like an advert and repeats itself.",
    "The JSON is malformed (missing closing brace) and the summary is not a separate key.",
]


def _hash(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _bootstrap(values: np.ndarray, rng: np.random.Generator, n_boot: int = 200) -> tuple[float, float]:
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@dataclass
class BuildSummary:
    path: str
    mixtures: int
    runs: int
    eval_metrics: int
    eval_samples: int
    train_metrics: int
    expert_load: int
    contamination: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def build(
    path: str | Path,
    *,
    n_runs: int = 36,
    n_mixtures: int | None = None,
    samples_per_task: int = 16,
    train_points: int = 40,
    expert_snapshots: int = 8,
    n_layers: int = 4,
    n_experts: int = 8,
    expert_load_runs: int | None = None,
    seed: int = 0,
) -> BuildSummary:
    """Fill `path` (created if absent) with a consistent lab history. Returns row counts.

    `n_runs` training runs spread over mixtures × stages × rungs × seeds; `samples_per_task` per-item eval rows per
    run and task (the same item ids across runs, so answers can be compared side by side); expert load for the
    first `expert_load_runs` runs (all by default).
    """
    rng = np.random.default_rng(seed)
    store = Store(path)
    t0 = datetime(2026, 11, 2, 9, 0, 0)
    n_mixtures = n_mixtures or max(5, min(60, n_runs // 4))
    # The order of the steps below is the order of draws from `rng`: it fixes every number in the database.
    store.insert("sources", _sources(t0), replace=True)
    mixtures, components, contamination = _mixtures(rng, n_mixtures, seed, t0)
    store.insert("mixtures", mixtures, replace=True)
    store.insert("mixture_components", components)
    store.insert("contamination", contamination)
    runs, run_skill = _runs(rng, mixtures, components, n_runs, seed, t0)
    store.insert("runs", [asdict(r) for r in runs], replace=True)
    train_rows, load_rows = _training(rng, runs, train_points, expert_snapshots, n_layers, n_experts, expert_load_runs)
    store.insert("train_metrics", train_rows)
    if load_rows:
        store.insert("expert_load", load_rows)
    eval_runs, metrics, samples = _evaluations(rng, runs, run_skill, samples_per_task)
    store.insert("eval_runs", eval_runs, replace=True)
    store.record_metrics(metrics)
    # Insert samples in slices so one transaction never holds the file lock for long.
    for start in range(0, len(samples), 50_000):
        store.insert("eval_samples", samples[start:start + 50_000])
    return BuildSummary(str(path), len(mixtures), len(runs), len(metrics), len(samples), len(train_rows),
                        len(load_rows), len(contamination))


def _sources(t0: datetime) -> list[dict]:
    return [
        {
            "source_id": _hash("src", name),
            "name": name,
            "kind": "sft",
            "uri": f"procedural://{name[5:]}" if kind == "procedural" else f"data/{name}/train.jsonl",
            "revision": "v1" if kind == "procedural" else "sha256:" + _hash("rev", name),
            "adapter": "procedural" if kind == "procedural" else "alpaca",
            "n_rows": rows,
            "content_hash": _hash("content", name),
            "created_at": t0,
        }
        for name, kind, _, rows in SOURCES
    ]


BUDGET_ROWS = 60_000
_BENCHMARKS_OF = {"math": ["gsm8k", "math500"], "code": ["humaneval", "mbpp"], "chat": ["ifeval", "mt-bench"]}
_NGRAM_WORDS = ["how", "many", "apples", "does", "she", "have", "left", "return", "the", "sum", "of", "list", "write",
                "a", "function", "that", "answer", "in", "exactly", "three", "sentences"]


def _mixtures(rng: np.random.Generator, n_mixtures: int, seed: int,
              t0: datetime) -> tuple[list[dict], list[dict], list[dict]]:
    """Mixtures (rows of `mixtures`), their realised composition and the eval-set overlaps their builds flagged."""
    family_names = list(FAMILIES)
    mixtures: list[dict] = []
    components: list[dict] = []
    contamination: list[dict] = []
    for m in range(n_mixtures):
        family = family_names[m % len(family_names)]
        target = rng.dirichlet(FAMILIES[family])
        target[target < 0.005] = 0.0  # a YAML would not list a source at a fraction of a percent
        target /= target.sum()
        target_rows, realised_rows = _realised_rows(target)
        realised = realised_rows / realised_rows.sum()
        name = f"{family}-{m // len(family_names) + 1:02d}"
        mixture_id = _hash("mix", name, seed)
        yaml_lines = [f"name: {name}", f"family: {family}", "kind: sft", f"budget: {{rows: {BUDGET_ROWS}}}", "seed: 0",
                      "sources:"]
        yaml_lines += [f"  - {{name: {s[0]}, weight: {w:.3f}, max_epochs: 1}}" for s, w in zip(SOURCES, target) if w > 0]
        mixtures.append({
            "mixture_id": mixture_id, "name": name, "kind": "sft", "family": family, "yaml": "\n".join(yaml_lines) + "\n",
            "artifact_path": f"runs/artifacts/mixtures/{mixture_id}", "manifest": {"budget_rows": BUDGET_ROWS},
            "n_rows": int(realised_rows.sum()), "n_tokens": int(realised_rows.sum() * 180), "seed": 0,
            "created_at": t0 + timedelta(hours=m),
        })
        for (src, kind, skill, avail), tw, rw, rr, tr in zip(SOURCES, target, realised, realised_rows, target_rows):
            if tw == 0:
                continue
            toks = int(rr * {"math": 150, "code": 210, "chat": 260}[skill])
            flagged = int(rng.poisson(3)) if kind == "local" else 0
            components.append({
                "mixture_id": mixture_id, "source_id": _hash("src", src), "source_name": src,
                "group_path": f"{skill}/{src}", "phase": "main",
                "target_share": float(tw), "realised_share": float(rw),
                "target_rows": int(round(tr)), "realised_rows": int(rr), "tokens": toks,
                "trainable_tokens": int(toks * 0.62), "epochs": float(rr / avail),
                "dropped_filter": int(rng.poisson(rr * 0.01)), "dropped_dedup": int(rng.poisson(rr * 0.004)),
                "dropped_contamination": flagged,
            })
            contamination += _flagged_rows(rng, mixture_id, src, skill, avail, flagged)
    return mixtures, components, contamination


def _realised_rows(target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Target rows per source, and the rows a build realises: small local sources are capped at 1 epoch and the
    solver moves the shortfall to the procedural sources."""
    target_rows = target * BUDGET_ROWS
    caps = np.array([rows * 1.0 for *_, rows in SOURCES], dtype=float)
    realised_rows = np.minimum(target_rows, caps)
    shortfall = target_rows.sum() - realised_rows.sum()
    procedural = np.array([kind == "procedural" for _, kind, _, _ in SOURCES])
    realised_rows[procedural] += shortfall * target[procedural] / target[procedural].sum()
    return target_rows, np.round(realised_rows).astype(int)


def _flagged_rows(rng: np.random.Generator, mixture_id: str, src: str, skill: str, avail: int,
                  flagged: int) -> list[dict]:
    bench = _BENCHMARKS_OF[skill]
    rows = []
    for i in range(flagged):
        b = bench[i % len(bench)]
        rows.append({
            "mixture_id": mixture_id, "source_id": _hash("src", src), "row_id": f"{src}:{rng.integers(0, avail)}",
            "benchmark": b, "item_id": f"{b}/{int(rng.integers(0, 40)):04d}",
            "ngram": " ".join(rng.choice(_NGRAM_WORDS, size=13)),
            "field": "prompt" if i % 3 else "response",
        })
    return rows


def _runs(rng: np.random.Generator, mixtures: list[dict], components: list[dict], n_runs: int, seed: int,
          t0: datetime) -> tuple[list[RunRecord], dict[str, dict[str, float]]]:
    """A ladder of rungs × stages × mixtures × seeds, and each run's latent math / code / chat skill."""
    skills_of = {}
    for mix in mixtures:
        shares = {"math": 0.0, "code": 0.0, "chat": 0.0}
        for c in components:
            if c["mixture_id"] == mix["mixture_id"]:
                shares[_SKILL[c["source_name"]]] += c["realised_share"]
        skills_of[mix["mixture_id"]] = shares

    runs: list[RunRecord] = []
    run_skill: dict[str, dict[str, float]] = {}
    for i in range(n_runs):
        mix = mixtures[i % len(mixtures)]
        # Higher rungs hold fewer runs: only promoted mixtures climb.
        r = 0 if i % 6 < 4 else (1 if i % 6 == 4 else 2)
        rung, preset, scale = RUNGS[r]
        stage = STAGES[0] if i % 5 < 3 else STAGES[1 + (i % 2)]
        seed_i = int(i // len(mixtures)) % 3
        created = t0 + timedelta(days=1 + i * 9 / max(n_runs, 1), minutes=int(rng.integers(0, 600)))
        run_id = f"{stage}-{mix['name']}-{rung}-s{seed_i}-{_hash('run', i, seed)[:6]}"
        shares = skills_of[mix["mixture_id"]]
        # Skill: saturating in the share, lifted by scale; RL sharpens math/code, DPO helps chat.
        stage_bonus = {"sft": (0, 0, 0), "dpo": (-0.05, -0.05, 0.35), "grpo": (0.45, 0.3, -0.25)}[stage]
        run_skill[run_id] = {
            "math": -1.6 + 3.4 * math.sqrt(shares["math"]) + 1.4 * scale + stage_bonus[0] + rng.normal(0, 0.1),
            "code": -1.9 + 3.2 * math.sqrt(shares["code"]) + 1.3 * scale + stage_bonus[1] + rng.normal(0, 0.1),
            "chat": -1.3 + 3.0 * math.sqrt(shares["chat"]) + 1.2 * scale + stage_bonus[2] + rng.normal(0, 0.1),
        }
        status = "completed" if i % 17 != 16 else "failed"
        runs.append(RunRecord(
            run_id=run_id, name=f"{mix['name']} {stage} {rung}", kind="train", trainer=stage, stage=stage,
            recipe_name=f"{stage}-{preset}", recipe_yaml=f"trainer: {stage}\nmodel: {{preset: {preset}}}\nmixture: {mix['name']}\nseed: {seed_i}\n",
            mixture_id=mix["mixture_id"], mixture_name=mix["name"], mixture_family=mix["family"],
            base_model=BASE_MODELS[1 if i % 7 == 6 else 0], preset=preset, rung=rung, seed=seed_i,
            git_sha=_hash("git", i // 10)[:12], packages={"torch": "2.13.0", "trl": "1.16.0"}, device="cpu (2 cores)",
            status=status, error="RuntimeError: loss is NaN at step 412" if status == "failed" else None,
            config={"lr": 2e-3, "steps": 600}, created_at=created, updated_at=created,
            finished_at=created + timedelta(minutes=14),
        ))
    return runs, run_skill


N_STEPS = 600


def _training(rng: np.random.Generator, runs: list[RunRecord], train_points: int, expert_snapshots: int,
              n_layers: int, n_experts: int, expert_load_runs: int | None) -> tuple[list[dict], list[dict]]:
    """Training curves of every run, and expert load for the first `expert_load_runs` runs."""
    train_rows: list[dict] = []
    load_rows: list[dict] = []
    for k, run in enumerate(runs):
        train_rows += _train_curve(rng, run, train_points)
        if expert_load_runs is None or k < expert_load_runs:
            load_rows += _expert_load(rng, run, expert_snapshots, n_layers, n_experts)
    return train_rows, load_rows


def _train_curve(rng: np.random.Generator, run: RunRecord, train_points: int) -> list[dict]:
    rows = []
    base_loss = 2.3 - 0.3 * {"r0": 0, "r1": 1, "r2": 2}[run.rung] + rng.normal(0, 0.03)
    tps = {"tiny": 15_500, "small": 6_200, "1b-a150m": 1_900}[run.preset] * rng.uniform(0.9, 1.05)
    for p in range(train_points):
        step = int((p + 1) * N_STEPS / train_points)
        if run.status == "failed" and step > 412:
            break
        warm = min(1.0, step / 60)
        lr = 2e-3 * warm * (0.5 * (1 + math.cos(math.pi * min(1.0, step / N_STEPS))))
        loss = base_loss * (0.35 + 0.65 * math.exp(-step / 140)) + 0.02 * rng.normal()
        ts = run.created_at + timedelta(seconds=step * 1.3)
        for name, value in (("loss", loss), ("lr", lr), ("tokens_per_s", tps * rng.uniform(0.95, 1.05)),
                            ("grad_norm", 1.5 * math.exp(-step / 300) + 0.2 + 0.05 * abs(rng.normal())),
                            ("aux_loss", 0.02 * math.exp(-step / 200) + 0.001)):
            rows.append({"run_id": run.run_id, "step": step, "name": name, "value": float(value), "ts": ts})
    return rows


def _expert_load(rng: np.random.Generator, run: RunRecord, snapshots: int, n_layers: int,
                 n_experts: int) -> list[dict]:
    """Router imbalance decays as the aux-loss-free bias adapts; one layer stays stubborn."""
    rows = []
    hot = rng.integers(0, n_experts, size=n_layers)
    for s in range(snapshots):
        step = int((s + 1) * N_STEPS / snapshots)
        for layer in range(1, n_layers + 1):
            skew = 2.5 * math.exp(-step / (180 if layer != 2 else 900))
            logits = rng.normal(0, 0.15, n_experts)
            logits[hot[layer - 1]] += skew
            load = np.exp(logits) / np.exp(logits).sum()
            for e in range(n_experts):
                rows.append({"run_id": run.run_id, "step": step, "layer": layer, "expert": e,
                             "load": float(load[e]), "bias": float(-0.01 * s * (load[e] - 1 / n_experts))})
    return rows


_DIFFICULTY = {"proc-math": 0.0, "gsm8k": 0.8, "math500": 1.8, "proc-code": 0.2, "humaneval": 1.0, "mbpp": 0.7,
               "proc-chat": 0.0, "ifeval": 0.5, "mt-bench": 0.0, "alpaca-eval": 1.2}


def _evaluations(rng: np.random.Generator, runs: list[RunRecord], run_skill: dict[str, dict[str, float]],
                 samples_per_task: int) -> tuple[list[dict], list[MetricRecord], list[dict]]:
    """Per completed run and task: the eval_runs row, metrics with CIs (style/* included) and per-sample rows."""
    eval_runs: list[dict] = []
    metrics: list[MetricRecord] = []
    samples: list[dict] = []
    for run in runs:
        if run.status == "failed":
            continue
        sk = run_skill[run.run_id]
        for t in TASKS:
            eval_id = _hash("eval", run.run_id, t.task)
            created = run.finished_at + timedelta(minutes=1)
            eval_runs.append({
                "eval_id": eval_id, "run_id": run.run_id, "checkpoint": f"runs/checkpoints/{run.run_id}/final",
                "task": t.task, "suite": "demo", "backend": "torch", "gen_config": {"temperature": 0.0, "max_new_tokens": 256},
                "judge": "mixlab-local-judge@v1" if t.judged else None, "status": "completed",
                "n_samples": t.n_items, "created_at": created, "finished_at": created,
            })
            p = _sigmoid(2.2 * (sk[t.skill] - _DIFFICULTY[t.task]))
            for metric in t.metrics:
                mean, lo, hi, method = _task_metric(rng, t, metric, p)
                metrics.append(MetricRecord(eval_id, run.run_id, t.task, metric, t.category, t.n_items,
                                            float(mean), float(lo), float(hi), method, created_at=created))
            for key in STYLE_KEYS:
                mean, lo, hi, method = _style_metric(key, sk, rng, t.n_items)
                metrics.append(MetricRecord(eval_id, run.run_id, t.task, f"style/{key}", "usability", t.n_items,
                                            float(mean), float(lo), float(hi), method, created_at=created))
            for item in range(samples_per_task):
                samples.append(_sample(eval_id, run.run_id, t, item, p, rng))
    return eval_runs, metrics, samples


# Per-metric success rate relative to the task's primary rate p (looser metrics pass more often).
_RATE = {"exact_match_flexible": lambda p: min(0.99, p * 1.12), "pass@10": lambda p: 1 - (1 - p) ** 4,
         "accuracy_any_extraction": lambda p: min(0.99, p * 1.1), "constraint_acc": lambda p: min(0.99, p * 1.1 + 0.05),
         "prompt_level_loose_acc": lambda p: min(0.99, p * 1.08),
         "inst_level_strict_acc": lambda p: min(0.99, p * 1.15 + 0.05),
         "inst_level_loose_acc": lambda p: min(0.99, p * 1.2 + 0.06), "lc_win_rate": lambda p: p * 0.9 + 0.02,
         "win_rate": lambda p: p * 0.85, "judge_unparseable": lambda p: 0.02}


def _task_metric(rng: np.random.Generator, t: TaskSpec, metric: str, p: float) -> tuple[float, float, float, str]:
    """(mean, ci_low, ci_high, method): judge scores and lengths with bootstrap CIs, rates with Wilson CIs."""
    if t.task == "mt-bench" and metric.startswith("score"):
        values = np.clip(rng.normal(1 + 8 * p - (0.3 if metric == "score_turn2" else 0), 1.8, t.n_items), 1, 10)
        return (float(values.mean()), *_bootstrap(values, rng), "bootstrap")
    if metric == "length_chars":
        values = rng.gamma(4, (300 + 900 * p) / 4, t.n_items)
        return (float(values.mean()), *_bootstrap(values, rng), "bootstrap")
    q = _RATE.get(metric, lambda p: p)(p)
    k = int(rng.binomial(t.n_items, q))
    return (k / t.n_items, *_wilson(k, t.n_items), "wilson")


def _style_metric(key: str, sk: dict[str, float], rng: np.random.Generator, n: int) -> tuple[float, float, float, str]:
    chatty = _sigmoid(sk["chat"])
    if key == "chars":
        values = rng.gamma(4, (200 + 700 * chatty) / 4, n)
        lo, hi = _bootstrap(values, rng)
        return float(values.mean()), lo, hi, "bootstrap"
    rate = {"refusal": 0.02 + 0.06 * (1 - chatty), "repetition_3gram": 0.25 * (1 - chatty) + 0.02,
            "broken_format": 0.15 * (1 - chatty) + 0.01, "markdown_density": 0.05 + 0.3 * chatty}[key]
    k = int(rng.binomial(n, min(rate, 0.99)))
    lo, hi = _wilson(k, n)
    return k / n, lo, hi, "wilson"


def _sample(eval_id: str, run_id: str, t: TaskSpec, item: int, p: float, rng: np.random.Generator) -> dict:
    item_rng = np.random.default_rng(int(_hash(t.task, item), 16) % (2**32))  # the same prompt in every run
    a, b, c = (int(x) for x in item_rng.integers(2, 60, size=3))
    prompt = _PROMPTS[t.skill][item % 3].format(a=a, b=b, c=c)
    passed = bool(rng.random() < p)
    if t.skill == "math":
        truth = a + b - c
        reference = f"{a} + {b} - {c} = {truth}. #### {truth}"
        output = reference if passed else f"{a} + {b} = {a + b}. Then {a + b} - {c} = {truth + int(rng.integers(1, 9))}. #### {truth + 1}"
    elif t.skill == "code":
        reference = "def f(xs):\n    return sum(sorted(xs)[-%d:])\n" % a
        output = reference if passed else "def f(xs):\n    return sorted(xs)[:%d]\n" % a
    else:
        template = item % 3
        reference, good, bad = _CHAT_ANSWERS[template]
        output = good if passed else bad
    if t.task == "mt-bench":
        score = float(np.clip(round(1 + 9 * p + rng.normal(0, 1.5)), 1, 10))
        passed = score >= 6
    else:
        score = 1.0 if passed else 0.0
    rationale = None
    if t.judged:
        rationale = _RATIONALES_GOOD[int(rng.integers(0, 3))] if passed else _RATIONALES_BAD[item % 3]
    return {
        "eval_id": eval_id, "run_id": run_id, "task": t.task, "item_id": f"{t.task}/{item:04d}", "prompt": prompt,
        "output": output, "reference": reference, "score": score, "passed": passed, "judge_rationale": rationale,
        "prompt_tokens": len(prompt) // 4, "output_tokens": len(output) // 4,
        "extra": {"verifier": t.skill} if not t.judged else {"judge": "mixlab-local-judge@v1"},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", required=True, help="DuckDB file to fill (created if absent)")
    ap.add_argument("--runs", type=int, default=36)
    ap.add_argument("--samples-per-task", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    summary = build(args.db, n_runs=args.runs, samples_per_task=args.samples_per_task, seed=args.seed)
    print(summary.to_json())


if __name__ == "__main__":
    main()
