"""`mixlab demo` (`make demo`): the whole lab on a laptop CPU, start to finish.

1. builds the demo mixtures from mixlab's procedural sources (math-, code-, chat-heavy, balanced; RL prompts);
2. trains a shared base (SFT of the `demo` preset on the balanced mixture);
3. fine-tunes the base on each mixture (a sweep; `--parallel` processes) and adds one short GRPO stage after the
   balanced SFT;
4. evaluates every fine-tuned model on held-out level-1 procedural tasks (proc-math-l1, proc-code-l1,
   proc-chat-l1: the level the demo mixtures train on; suite `procedural-l1`);
5. writes everything to runs/mixlab.duckdb, prints the result table with 95 % CIs and checks the trade-off:
   math-heavy beats chat-heavy on proc-math and chat-heavy beats math-heavy on proc-chat, beyond the CIs;
6. writes the table as markdown, naming the machine (runs/demo-results.md; `--readme README.md` splices it in).

Reproducible: the same seed on the same machine kind gives identical numbers. Every process of the demo runs with
one torch thread, deterministic algorithms and PYTHONHASHSEED=0 (`mixlab demo` re-executes itself to fix the
latter); data order, sampling and generation are seeded by the recipes' seed.

The knobs (steps, eval size, parallelism) default to what fits the 15-minute budget on 2 cores; see
`mixlab demo --help` (the command is registered in recipes/cli.py).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console

from mixlab.device import cpu_name
from mixlab.errors import MixlabError
from mixlab.evals import stats
from mixlab.evals.compare import align
from mixlab.mixtures import build
from mixlab.paths import default_db_path, runs_dir
from mixlab.recipes.report import print_table, results_rows
from mixlab.recipes.runner import RecipeRunner
from mixlab.recipes.schema import parse_recipe
from mixlab.recipes.jobs import Job, run_graph, start_workers
from mixlab.recipes.sweep import new_sweep_id
from mixlab.store import RunRecord, Store
from mixlab.yamlio import load_yaml

SFT_MIXTURES = ["demo-math-heavy", "demo-code-heavy", "demo-chat-heavy", "demo-balanced"]
GRPO_AFTER = "demo-balanced"
REGISTRY = Path(__file__).parent / "registry"
README_START = "<!-- demo-table:start (written by `mixlab demo --readme README.md`; do not edit by hand) -->"
README_END = "<!-- demo-table:end -->"
# What every process of the demo runs under (children inherit it): see the module docstring.
DETERMINISTIC_ENV = {"PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MIXLAB_THREADS": "1",
                     "MIXLAB_DETERMINISTIC": "1"}


_PRECISION: str | None = None


def _load(name: str) -> dict[str, Any]:
    data, _ = load_yaml(REGISTRY / f"{name}.yaml")
    if _PRECISION:
        data["precision"] = _PRECISION
    return data


def _stage_args(data: dict[str, Any], **values: Any) -> dict[str, Any]:
    for key, value in values.items():
        if value is not None:
            data["stages"][0]["args"][key] = value
    return data


def main(base_steps: int | None = None, sft_steps: int | None = None, grpo_steps: int | None = None,
         eval_limit: int | None = None, parallel: int = 2, precision: str | None = None, quiet: bool = False,
         preset: str | None = None, seed: int | None = None, readme: Path | None = None) -> int:
    """Runs the demo; returns 0 when the trade-off holds, 3 when it does not, 1 when a member run failed."""
    global _PRECISION
    _PRECISION = precision
    os.environ.update(DETERMINISTIC_ENV)
    # One thread: a few dozen steps of a ~1M model gain little from a second thread on 2 cores (on a busy machine a
    # 2-thread process was measured 8x slower per step), and a fixed count keeps float sums in one order.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    console = Console()
    progress = not quiet
    store = Store()
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    console.rule("[bold]mixlab demo[/bold]: does the data mixture trade leaderboard skill for usability?")
    console.print(f"database: {default_db_path()}   cores: {len(os.sched_getaffinity(0))}")

    # 1. mixtures ------------------------------------------------------------------------------------------------
    t = time.perf_counter()
    for name in [*SFT_MIXTURES, "demo-rl"]:
        built = build(name)
        console.print(f"mixture {name:<16} {built.mixture_id}  ({built.manifest.get('n_rows', '?')} rows"
                      f"{', cached' if built.cache_hit else ''})")
    timings["mixtures_s"] = time.perf_counter() - t

    # Worker processes for step 3 start now: their imports overlap the shared base's training.
    sweep_id = new_sweep_id("demo")
    out_dir = runs_dir() / "sweeps" / sweep_id
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = start_workers(parallel, out_dir) if parallel > 1 else None

    # 2. shared base ---------------------------------------------------------------------------------------------
    t, c = time.perf_counter(), time.process_time()
    base_data = _stage_args(_load("demo-base"), max_steps=base_steps)
    if preset:
        base_data["model"] = {"preset": preset}
    if seed is not None:
        base_data["seed"] = seed
    base_text = yaml.safe_dump(base_data, sort_keys=False)
    base = RecipeRunner(parse_recipe(base_data, where="demo-base"), base_text, store=store, progress=progress)
    try:
        base_run = base.run()[-1]
    except BaseException:
        for w in workers or []:
            w.close()
        raise
    timings["base_s"] = time.perf_counter() - t
    timings["base_cpu_s"] = time.process_time() - c
    console.print(f"shared base: run {base_run.run_id}, {base_run.steps} steps, loss {base_run.final_loss:.4f}, "
                  f"{timings['base_s']:.0f}s")

    # 3. per-mixture SFT, GRPO after the balanced one, and every final eval: jobs on `parallel` processes --------
    t = time.perf_counter()
    grpo = _stage_args(_load("demo-grpo"), max_steps=grpo_steps)
    if seed is not None:
        grpo["seed"] = seed
    members, runners = [], {}
    for mixture in sorted(SFT_MIXTURES, key=lambda m: m != GRPO_AFTER):
        data = _stage_args(_load("demo-sft"), max_steps=sft_steps)
        data["name"] = f"demo-{mixture.removeprefix('demo-')}"
        data["model"] = {"run": base_run.run_id}
        data["stages"][0]["mixture"] = mixture
        if seed is not None:
            data["seed"] = seed
        if eval_limit:
            data["eval"]["limit"] = eval_limit
        if mixture == GRPO_AFTER:
            stage = dict(grpo["stages"][0])
            stage["eval"] = {**grpo["eval"], **({"limit": eval_limit} if eval_limit else {})}
            data["stages"].append(stage)
        text = yaml.safe_dump(data, sort_keys=False)
        path = out_dir / f"{data['name']}.yaml"
        path.write_text(text)
        runner = RecipeRunner(parse_recipe(data, where=data["name"]), text, store=store, sweep_id=sweep_id)
        runner.preflight()  # a member that cannot run fails here, before any trains
        members.append((data["name"], path, [s["name"] for s in data["stages"]]))
        runners[data["name"]] = runner
    jobs = demo_jobs(members, {m: r.invocation for m, r in runners.items()}, sweep_id, out_dir)
    store.start_run(RunRecord(
        run_id=sweep_id, kind="sweep", name="demo", recipe_name="demo-sft", status="running", sweep_id=sweep_id,
        config={"members": [m for m, _, _ in members], "parallel": parallel,
                "invocations": {m: r.invocation for m, r in runners.items()}, "jobs": [j.id for j in jobs]},
    ))
    job_wall: dict[str, float] = {}
    failures = run_graph(jobs, workers, store=store, progress=progress,
                         on_done=lambda job, wall: job_wall.__setitem__(job.id, wall))
    store.finish_run(sweep_id, error="; ".join(f"{k}: {v}" for k, v in failures.items()) or None)
    timings["finetune_and_eval_s"] = time.perf_counter() - t
    if failures:
        for job_id, error in failures.items():
            console.print(f"[red]{job_id} failed:[/red] {error}")
        return 1

    # 4. results -------------------------------------------------------------------------------------------------
    rows, tasks = results_rows(store, store.sweep_train_runs(sweep_id, by_mixture=True))
    timings["total_s"] = time.perf_counter() - t_start
    n_items = max((m[3] for r in rows for m in r["metrics"].values()), default=0)
    print_table(rows, tasks, f"held-out level-1 procedural tasks (mean [95% CI], greedy, {n_items} items each)")
    verdict = trade_off(rows, store)
    for line in verdict["lines"]:
        console.print(line)
    console.print(
        f"wall time: {timings['total_s']:.0f}s (mixtures {timings['mixtures_s']:.0f}s, base {timings['base_s']:.0f}s,"
        f" fine-tune + GRPO + eval {timings['finetune_and_eval_s']:.0f}s)"
    )
    stages = stage_seconds(store, rows)
    console.print("stage seconds (CPU / wall; the machine's load inflates wall): " + ", ".join(
        f"{k} {v['cpu_s']:.0f}/{v['wall_s']:.0f}" for k, v in stages.items()))
    console.print(f"open the dashboard: [bold]make dashboard[/bold]   (reads {default_db_path()})")
    summary = {"timings": timings, "stages": stages, "job_wall_s": job_wall, "base_run": base_run.run_id, "sweep_id": sweep_id, "trade_off": verdict,
               "rows": [{k: v for k, v in r.items()} for r in rows], "cores": len(os.sched_getaffinity(0))}
    (runs_dir() / "demo-summary.json").write_text(json.dumps(summary, indent=2, default=str))
    block = results_markdown(rows, tasks, verdict, wall_s=timings["total_s"], n_items=n_items,
                             seed=base_data["seed"], preset=base_data["model"].get("preset", "?"))
    (runs_dir() / "demo-results.md").write_text(block)
    console.print(f"markdown table: {runs_dir() / 'demo-results.md'}")
    if readme is not None:
        splice_readme(Path(readme), block)
        console.print(f"spliced into {readme}")
    return 0 if verdict["holds"] else 3


def demo_jobs(members: list[tuple[str, Path, list[str]]], invocations: dict[str, str], sweep_id: str,
              logs: Path) -> list[Job]:
    """The demo's job graph, in order of preference: the first two members' first stages, then the later stages
    (GRPO after the balanced SFT: the longest chain, so the balanced member comes first), then the other
    members' first stages, then every trained stage's eval (short: they fill both cores at the end)."""
    first, later, evals = [], [], []
    for member, path, stage_names in members:
        def job(kind: str, stage: str | None, **kw: Any) -> Job:
            return Job(f"{member}/{stage or 'rest'}/{kind}", kind, str(path), invocations[member], sweep_id,  # noqa: B023
                       stage=stage, log=str(logs / f"{member}.{stage or 'rest'}.{kind}.log"), **kw)  # noqa: B023

        head = job("train", stage_names[0])  # trains its first stage only (stop_after)
        first.append(head)
        evals.append(job("eval", stage_names[0], after=(head.id,)))
        if len(stage_names) > 1:
            rest = job("train", None, resume=True, after=(head.id,))  # every later stage, in one job
            later.append(rest)
            evals += [job("eval", stage, after=(rest.id,)) for stage in stage_names[1:]]
    return first[:2] + later + first[2:] + evals


def stage_seconds(store: Store, rows: list[dict[str, Any]]) -> dict[str, dict]:
    """Per trained stage: CPU and wall seconds of its training and of its eval (as the runner logged them)."""
    out = {}
    for r in rows:
        name = f"{(r['mixture'] or '-').removeprefix('demo-')}/{r['trainer']}"
        for phase in ("train", "eval"):
            cpu = store.last_train_metric(r["run_id"], f"{phase}_cpu_s")
            wall = store.last_train_metric(r["run_id"], f"{phase}_wall_s")
            if cpu and wall:
                out[f"{name} {phase}"] = {"cpu_s": cpu[0], "wall_s": wall[0]}
    return out


def machine_name() -> str:
    """The machine kind the numbers belong to (same seed + same kind = same numbers)."""
    return f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores"


def results_markdown(rows: list[dict[str, Any]], tasks: list[str], verdict: dict[str, Any], *, wall_s: float,
                     n_items: int, seed: int, preset: str) -> str:
    """The result table as markdown (best mean per column in bold), with the machine and the trade-off verdict."""
    import torch

    means = {t: [r["metrics"][t][0] for r in rows if t in r["metrics"]] for t in tasks}
    best = {t: max(v) if v and max(v) > min(v) else None for t, v in means.items()}  # no bold on a tie
    metric = {t: next((r["metrics"][t][4] for r in rows if t in r["metrics"]), "") for t in tasks}
    lines = [f"Measured by `mixlab demo` (preset `{preset}`, seed {seed}, {n_items} held-out items per task, greedy, "
             f"Wilson 95 % CIs) on {machine_name()}, torch {torch.__version__} (1 thread per process): "
             f"{wall_s:.0f} s wall.", "",
             "| mixture | trainer | " + " | ".join(f"{t} {metric[t]}" for t in tasks) + " |",
             "| --- | --- | " + " | ".join("---" for _ in tasks) + " |"]
    for r in rows:
        name = r["mixture"] or "-"
        if r["trainer"] == "grpo":
            name += f" (after {GRPO_AFTER.removeprefix('demo-')})"
        cells = []
        for t in tasks:
            m = r["metrics"].get(t)
            cell = "-" if m is None else f"{m[0]:.3f} [{m[1]:.3f}, {m[2]:.3f}]"
            cells.append(f"**{cell}**" if m is not None and m[0] == best[t] else cell)
        lines.append(f"| {name} | {r['trainer']} | " + " | ".join(cells) + " |")
    lines += [""] + [f"- {line}" if i else f"{line}." for i, line in enumerate(verdict["lines"])]
    return "\n".join(lines) + "\n"


def splice_readme(readme: Path, block: str) -> None:
    """Replace what lies between the demo-table markers of `readme` with `block` (written atomically)."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise MixlabError(f"{readme}: no demo-table markers ({README_START} ... {README_END})")
    new = text[: start + len(README_START)] + "\n" + block.rstrip("\n") + "\n" + text[end:]
    tmp = readme.with_name(f".{readme.name}.tmp-{os.getpid()}")
    tmp.write_text(new)
    os.replace(tmp, readme)


def trade_off(rows: list[dict[str, Any]], store: Store | None = None) -> dict[str, Any]:
    """Math-heavy vs chat-heavy SFT: each must beat the other on its own suite, shown by the lab's paired test
    (`stats.margin_test` over the items both evaluated: McNemar's exact one-sided test at alpha 0.05). Without
    per-item scores (no store) it falls back to disjoint 95 % CIs (`stats.clearly_better`)."""
    sft = {r["mixture"]: r for r in rows if r["trainer"] == "sft"}
    math_r, chat_r = sft.get("demo-math-heavy"), sft.get("demo-chat-heavy")
    checks = []
    for task, winner, loser in (("proc-math-l1", math_r, chat_r), ("proc-chat-l1", chat_r, math_r)):
        w = (winner or {}).get("metrics", {}).get(task)
        l = (loser or {}).get("metrics", {}).get(task)
        if not w or not l:
            checks.append((task, False, f"{task}: missing scores"))
            continue
        head = (f"{task}: {winner['mixture']} {w[0]:.3f} [{w[1]:.3f}, {w[2]:.3f}] vs "
                f"{loser['mixture']} {l[0]:.3f} [{l[1]:.3f}, {l[2]:.3f}] -> ")
        paired = None
        if store is not None:
            data = align(store, [winner["run_id"]], [loser["run_id"]], task, w[4] if len(w) > 4 else "accuracy")
            paired = stats.margin_test(data.a, data.b, 0.0) if data.items else None
        if paired is not None:
            ok = paired.passed
            checks.append((task, ok, head + f"{'better' if ok else 'NOT shown better'} ({paired.describe()})"))
        else:
            ok = bool(stats.clearly_better(w[1], l[2]))  # winner's lower CI bound above the loser's upper bound
            checks.append((task, ok, head + f"{'beyond the CIs' if ok else 'NOT separated'} (gap {w[0] - l[0]:+.3f})"))
    holds = all(ok for _, ok, _ in checks)
    lines = [("trade-off holds: " if holds else "trade-off NOT shown: ") +
             "math-heavy wins math, chat-heavy wins chat-format"] + [text for _, _, text in checks]
    return {"holds": holds, "lines": lines}

