"""Recipe jobs (train some stages of a recipe, or evaluate one trained stage) run as a dependency graph over N
persistent worker processes.

`mixlab demo` uses it to keep both cores busy to the end: with one process per sweep member (train + eval, and the
GRPO stage after the balanced SFT), the last member's eval and the GRPO stage ran while the other core sat idle.
Here every fine-tune, its eval and the GRPO stage are jobs of their own, dispatched in the order given as soon as
the jobs they need have finished. Each worker imports torch/transformers/TRL once (the demo starts them while the
shared base trains) and then takes jobs over a pipe, one at a time, writing each job's output to its own log.

A job builds its own `RecipeRunner` from the recipe file and invocation id, and every stage resets the seeds as
`mixlab run` does, so a job's numbers do not depend on which worker ran it or on what that worker ran before
(tests/recipes/test_demo.py compares two demo runs' losses, metrics and checkpoint hashes).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import trl
from rich.console import Console

from mixlab import procs
from mixlab.errors import MixlabError
from mixlab.recipes.runner import RecipeRunner
from mixlab.recipes.schema import load_recipe
from mixlab.store import Store


@dataclass
class Job:
    id: str
    kind: str  # "train" | "eval"
    recipe: str  # path of the recipe YAML
    invocation: str  # the recipe's invocation id (its stages' run ids derive from it)
    sweep_id: str | None = None
    stage: str | None = None  # train: the last stage to run now (None: to the end); eval: the stage evaluated
    resume: bool = False  # train: skip the stages this invocation has completed
    after: tuple[str, ...] = ()  # ids of the jobs that must finish first
    log: str | None = None  # the job's output (workers only; in-process jobs print to the console)


def run_job(job: Job, store: Store | None = None, progress: bool = False) -> None:
    """One job in this process. Stages train with `defer_eval`: their final evals are eval jobs."""
    if job.kind not in ("train", "eval"):
        raise MixlabError(f"job {job.id}: unknown kind {job.kind!r} (train | eval)")
    recipe, text = load_recipe(Path(job.recipe))
    runner = RecipeRunner(recipe, text, store=store, invocation=job.invocation, sweep_id=job.sweep_id,
                          progress=progress, defer_eval=True)
    if job.kind == "train":
        runner.run(resume=job.resume, stop_after=job.stage)
    else:
        if job.stage is None:
            raise MixlabError(f"job {job.id}: an eval job names its stage")
        runner.evaluate_stage(job.stage)


def run_graph(jobs: list[Job], workers: list["Worker"] | None = None, *, store: Store | None = None,
              progress: bool = True, on_done: Callable[[Job, float], None] | None = None) -> dict[str, str]:
    """Run `jobs` (earlier in the list = preferred when several are ready) on `workers` (`start_workers`;
    closed at the end), or in this process without them. Returns {job id: error} for the jobs that failed or
    were skipped because a job they need failed. `on_done(job, wall seconds)` after each finished job."""
    ids = {j.id for j in jobs}
    for j in jobs:
        missing = [d for d in j.after if d not in ids]
        if missing:
            raise MixlabError(f"job {j.id}: needs unknown job(s) {missing}")
    failures: dict[str, str] = {}
    done: set[str] = set()
    pending = list(jobs)

    def next_ready() -> Job | None:
        for j in list(pending):
            bad = next((d for d in j.after if d in failures), None)
            if bad is not None:
                pending.remove(j)
                failures[j.id] = f"skipped: {bad} failed"
        return next((j for j in pending if all(d in done for d in j.after)), None)

    if not workers:
        store = store or Store()
        while (job := next_ready()) is not None:
            pending.remove(job)
            t0 = time.perf_counter()
            try:
                run_job(job, store, progress)
            except MixlabError as exc:
                failures[job.id] = str(exc)
                continue
            done.add(job.id)
            if on_done:
                on_done(job, time.perf_counter() - t0)
        return failures

    pool = workers
    running: dict[Worker, tuple[Job, float]] = {}
    try:
        while True:
            for w in pool:
                if w in running or not w.alive:
                    continue
                job = next_ready()
                if job is None:
                    break
                pending.remove(job)
                w.send(job)
                running[w] = (job, time.perf_counter())
            if not running:
                break
            ready, _, _ = select.select([w.stdout for w in running], [], [])
            for w in [w for w in running if w.stdout in ready]:
                job, t0 = running.pop(w)
                reply = w.receive()
                if reply is None:
                    failures[job.id] = f"worker died (exit {w.proc.poll()}); log {job.log}: {_tail(job.log)}"
                elif reply.get("error"):
                    failures[job.id] = reply["error"]
                else:
                    done.add(job.id)
                    if on_done:
                        on_done(job, time.perf_counter() - t0)
                if progress:
                    Console(stderr=True).print(f"[jobs] {job.id}: {'FAILED' if job.id in failures else 'done'} "
                                               f"({time.perf_counter() - t0:.0f}s, log {job.log})", markup=False)
        for j in pending:  # only left when every worker died
            failures.setdefault(j.id, "not run: no worker left")
    finally:
        for w in pool:
            w.close()
    return failures


class Worker:
    """A child interpreter running `worker_main`: one JSON job per line in, one JSON reply per line out."""

    def __init__(self, log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "w")
        self.proc = procs.popen(["-m", "mixlab.recipes.jobs"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=self._log, text=True, bufsize=1)
        self.stdout = self.proc.stdout

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, job: Job) -> None:
        self.proc.stdin.write(json.dumps(asdict(job)) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict[str, Any] | None:
        line = self.stdout.readline()
        return json.loads(line) if line else None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def start_workers(n: int, log_dir: Path) -> list[Worker]:
    return [Worker(log_dir / f"worker-{i}.log") for i in range(n)]


@contextlib.contextmanager
def _output_to(path: str | None) -> Iterator[None]:
    """fds 1 and 2 (Python's and C libraries' output alike) go to `path` while the job runs."""
    if path is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = os.dup(1), os.dup(2)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for s in saved:
            os.close(s)


def worker_main() -> None:
    """The worker loop: jobs from stdin, replies on the original stdout (job output goes to the job's log)."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints between jobs must not corrupt the reply channel
    # The demo's settings (its env is inherited): one thread, deterministic algorithms (the runner sets them too).
    torch.set_num_threads(int(os.environ.get("MIXLAB_THREADS") or torch.get_num_threads()))
    trl.SFTTrainer, trl.GRPOTrainer  # noqa: B018 - trl is lazy: load the trainer stack now, before any job
    store = Store()
    for line in sys.stdin:
        if not line.strip():
            continue
        job = Job(**{**json.loads(line), "after": ()})
        reply: dict[str, Any] = {"id": job.id}
        with _output_to(job.log):
            try:
                run_job(job, store, progress=False)
            except Exception as exc:  # noqa: BLE001 - the parent reports it; the worker takes the next job
                reply["error"] = str(exc) if isinstance(exc, MixlabError) else f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
        replies.write(json.dumps(reply) + "\n")


def _tail(path: str | None) -> str:
    if not path or not Path(path).exists():
        return ""
    lines = Path(path).read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


if __name__ == "__main__":
    worker_main()
