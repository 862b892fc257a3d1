"""Sweeps: one recipe × mixtures (a list, or Dirichlet samples over a mixture's component weights) × seeds.

```yaml
name: demo-sweep
recipe: demo-sft            # registry name or path (relative to this file)
stage: sft                  # the stage whose mixture varies (default: the last one)
mixtures: [demo-math-heavy, demo-chat-heavy]
# or: dirichlet: {base: demo-balanced, samples: 4, alpha: 1.0, seed: 0}
seeds: [0]
parallel: 1                 # N runs at once, each its own process
overrides: {eval: {limit: 100}}   # deep-merged into the recipe
```

Every member is a normal recipe run (its own run rows, tagged with the sweep id); the sweep itself is a run row
of kind `sweep`. Members are expanded into recipe YAML files under `runs/sweeps/<sweep_id>/`, so each is
reproducible (and resumable) on its own.
"""

from __future__ import annotations

import copy
import os
import secrets
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich.console import Console

from mixlab import procs
from mixlab.errors import MixlabError
from mixlab.mixtures import component_weights, write_variant
from mixlab.paths import runs_dir
from mixlab.recipes.launchers import LAUNCHERS, launch_members, member_jobs
from mixlab.recipes.runner import RecipeRunner
from mixlab.recipes.schema import _format_loc, load_recipe, parse_recipe
from mixlab.store import RunRecord, Store
from mixlab.validation import file_error
from mixlab.yamlio import Where, did_you_mean, load_yaml

REGISTRY = Path(__file__).parent / "registry"


class DirichletSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: str = Field(description="mixture whose component weights are resampled")
    samples: int = Field(ge=1)
    alpha: float | list[float] = Field(1.0, description="concentration (scalar or one per component)")
    seed: int = 0


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    recipe: str
    stage: str | None = None
    mixtures: list[str] | None = None
    dirichlet: DirichletSpec | None = None
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    parallel: int = Field(1, ge=1)
    overrides: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> "SweepSpec":
        if bool(self.mixtures) == bool(self.dirichlet):
            raise ValueError("give either `mixtures` (a list) or `dirichlet` (samples over a mixture's weights)")
        return self


def resolve_recipe_path(ref: str, relative_to: Path | None = None) -> Path:
    candidates = [Path(ref)]
    if relative_to is not None:
        candidates.append(relative_to / ref)
    candidates += [REGISTRY / ref, REGISTRY / f"{ref}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    raise MixlabError(f"recipe {ref!r} not found (looked in {', '.join(str(c) for c in candidates)})"
                      f"{did_you_mean(ref, [p.stem for p in REGISTRY.glob('*.yaml')])}")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_sweep(path: str | Path) -> tuple[SweepSpec, Path]:
    path = Path(path)
    data, lines = load_yaml(path)
    try:
        return SweepSpec.model_validate(data), path
    except Exception as exc:
        _raise_validation(exc, path, lines, SweepSpec, _format_loc)
        raise


def _raise_validation(exc: Exception, path: Path, lines: Where, model: type[BaseModel], fmt) -> None:
    if not isinstance(exc, ValidationError):
        raise exc
    raise file_error(exc, model, str(path), lines, fmt=fmt) from None


def dirichlet_mixtures(spec: DirichletSpec, out_dir: Path) -> list[str]:
    """Write `samples` mixture YAML variants of `base` with Dirichlet-sampled component weights; return their paths."""
    names, _ = zip(*component_weights(spec.base))
    alpha = spec.alpha if isinstance(spec.alpha, list) else [spec.alpha] * len(names)
    if len(alpha) != len(names):
        raise MixlabError(f"dirichlet.alpha has {len(alpha)} values, mixture {spec.base} has {len(names)} components")
    rng = np.random.default_rng(spec.seed)
    paths = []
    for i in range(spec.samples):
        weights = rng.dirichlet(alpha)
        variant = f"{spec.base}-dir{spec.seed}-{i}"
        paths.append(str(write_variant(spec.base, variant, dict(zip(names, map(float, weights))), out_dir)))
    return paths


def expand(spec: SweepSpec, sweep_file: Path | None, sweep_id: str) -> list[tuple[str, Path]]:
    """(member name, expanded recipe YAML path) for every mixture × seed."""
    recipe_path = resolve_recipe_path(spec.recipe, sweep_file.parent if sweep_file else None)
    base_data, _ = load_yaml(recipe_path)
    base_data = deep_merge(base_data, spec.overrides)
    parse_recipe(base_data, where=f"{recipe_path} (with sweep overrides)")
    stages = base_data["stages"]
    stage_names = [s["name"] for s in stages]
    stage_index = len(stages) - 1 if spec.stage is None else None
    if spec.stage is not None:
        if spec.stage not in stage_names:
            raise MixlabError(f"sweep {spec.name}: stage {spec.stage!r} is not in recipe {recipe_path}"
                              f"{did_you_mean(spec.stage, stage_names)}")
        stage_index = stage_names.index(spec.stage)
    out_dir = runs_dir() / "sweeps" / sweep_id
    out_dir.mkdir(parents=True, exist_ok=True)
    mixtures = spec.mixtures or dirichlet_mixtures(spec.dirichlet, out_dir)  # type: ignore[arg-type]
    members = []
    for mixture in mixtures:
        label = Path(mixture).stem if mixture.endswith((".yaml", ".yml")) else mixture
        for seed in spec.seeds:
            data = copy.deepcopy(base_data)
            data["stages"][stage_index]["mixture"] = mixture
            data["seed"] = seed
            data["name"] = f"{base_data['name']}-{label}-s{seed}"
            data.setdefault("family", label)
            path = out_dir / f"{data['name']}.yaml"
            path.write_text(yaml.safe_dump(data, sort_keys=False))
            parse_recipe(data, where=str(path))
            members.append((data["name"], path))
    return members


def run_sweep(path: str | Path, *, parallel: int | None = None, store: Store | None = None,
              progress: bool = True, launcher: str | None = None, retries: int = 1) -> dict[str, Any]:
    spec, sweep_file = load_sweep(path)
    if launcher is not None and launcher not in LAUNCHERS:
        raise MixlabError(f"--launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    sweep_id = new_sweep_id(spec.name)
    members = expand(spec, sweep_file, sweep_id)
    return run_members(spec.name, sweep_id, members, parallel=parallel or spec.parallel, store=store,
                       progress=progress, sweep_yaml=Path(path).read_text(), recipe_ref=spec.recipe,
                       launcher=launcher, retries=retries)


def new_sweep_id(name: str) -> str:
    return f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def run_members(name: str, sweep_id: str, members: list[tuple[str, Path]], *, parallel: int = 1,
                store: Store | None = None, progress: bool = True, sweep_yaml: str | None = None,
                recipe_ref: str | None = None, launcher: str | None = None, retries: int = 1) -> dict[str, Any]:
    """Run expanded member recipes as one sweep row: sequentially in-process, or `parallel` subprocesses, or
    through a launcher (local | ray | slurm: member jobs write result files that this process ingests, failed
    members are retried `retries` times; recipes/launchers.py)."""
    store = store or Store()
    # Preflight every member before any trains: a missing mixture fails the sweep up front.
    runners = {}
    for member, recipe_path in members:
        recipe, text = load_recipe(recipe_path)
        runner = RecipeRunner(recipe, text, store=store, sweep_id=sweep_id, progress=progress)
        runner.preflight()
        runners[member] = (runner, recipe_path)
    store.start_run(RunRecord(
        run_id=sweep_id, kind="sweep", name=name, recipe_name=recipe_ref, recipe_yaml=sweep_yaml, status="running",
        sweep_id=sweep_id, config={"members": [m for m, _ in members], "parallel": parallel,
                                   "invocations": {m: r.invocation for m, (r, _) in runners.items()},
                                   "launcher": launcher, "retries": retries if launcher else None},
    ))
    failures: dict[str, str] = {}
    t0 = time.perf_counter()
    if launcher is not None:
        folder = runs_dir() / "sweeps" / sweep_id
        threads = int(os.environ.get("MIXLAB_THREADS") or max(1, _usable_cores() // parallel))
        jobs = member_jobs([(m, p, r.invocation) for m, (r, p) in runners.items()], sweep_id, folder, retries,
                           threads)
        failures = launch_members(launcher, jobs, parallel=parallel, store=store, folder=folder, progress=progress)
    elif parallel == 1:
        for member, (runner, _) in runners.items():
            try:
                runner.run()
            except MixlabError as exc:
                failures[member] = str(exc)
    else:
        failures = _run_parallel(
            [(member, recipe_path, runner.invocation) for member, (runner, recipe_path) in runners.items()],
            parallel, sweep_id, progress,
        )
    store.finish_run(sweep_id, error="; ".join(f"{k}: {v}" for k, v in failures.items()) or None)
    return {"sweep_id": sweep_id, "members": [m for m, _ in members], "failures": failures,
            "invocations": {m: r.invocation for m, (r, _) in runners.items()},
            "wall_s": time.perf_counter() - t0}


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _run_parallel(jobs: list[tuple[str, Path, str]], parallel: int, sweep_id: str,
                  progress: bool = True) -> dict[str, str]:
    """N member runs at once, each a `mixlab run` subprocess; torch threads split across them (tiny models use
    one thread poorly-parallel anyway, so N processes x 1 thread beats 1 process x N threads on a small CPU)."""
    # MIXLAB_THREADS fixes the count (`mixlab demo`: float sums in one order on any core count).
    threads = int(os.environ.get("MIXLAB_THREADS") or max(1, _usable_cores() // parallel))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    pending = list(jobs)
    running: list[tuple[str, subprocess.Popen, Path]] = []
    failures: dict[str, str] = {}
    logs = runs_dir() / "sweeps" / sweep_id
    while pending or running:
        while pending and len(running) < parallel:
            name, recipe_path, invocation = pending.pop(0)
            log = logs / f"{name}.log"
            cmd = procs.mixlab_args("run", str(recipe_path), "--sweep-id", sweep_id, "--invocation", invocation,
                                    "--quiet")
            handle = open(log, "w")
            running.append((name, procs.popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env_base=env), log))
        time.sleep(0.5)
        for entry in list(running):
            name, proc, log = entry
            if proc.poll() is not None:
                running.remove(entry)
                if progress:
                    Console(stderr=True).print(f"[sweep] {name}: {'done' if proc.returncode == 0 else 'FAILED'}"
                                               f" (log {log})", markup=False)
                if proc.returncode != 0:
                    tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
                    failures[name] = f"exit {proc.returncode}: {tail[0] if tail else ''} (log {log})"
    return failures
