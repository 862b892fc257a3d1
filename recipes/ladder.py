"""The scaling ladder: screen mixtures on a small model, promote only those that pass gates to the next size.

This is how Kimi Linear was scaled: compare candidates against a baseline at each rung, and spend the bigger
budget only on what survived.

```yaml
name: demo-ladder
recipe: demo-sft              # registry name or path; `stage` picks the stage whose mixture varies (default: last)
baseline: demo-balanced       # trained at every rung; candidates are compared with it
mixtures: [demo-math-heavy, demo-chat-heavy]
rungs:
  - {name: r1, preset: tiny, args: {max_steps: 100}}
  - {name: r2, preset: small, overrides: {num_hidden_layers: 4}}
gates:                        # all must pass for a promotion
  - {task: proc-math, min_delta: 0.0}     # candidate - baseline >= 0
  - {task: proc-chat, max_drop: 0.05}     # baseline - candidate <= 0.05
  - {task: proc-math, min: 0.10}          # absolute floor
```
Every decision is a row in `ladder_decisions` (rung, mixture, run, baseline run, gates, passed, reason).
"""

from __future__ import annotations

import copy
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mixlab.errors import MixlabError
from mixlab.paths import runs_dir
from mixlab.recipes.report import primary_metric
from mixlab.recipes.runner import RecipeRunner
from mixlab.recipes.schema import _format_loc, load_recipe, parse_recipe
from mixlab.recipes.sweep import _raise_validation, resolve_recipe_path
from mixlab.yamlio import load_yaml
from mixlab.store import LadderDecision, RunRecord, Store


class Rung(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    preset: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    args: dict[str, Any] = Field(default_factory=dict, description="merged into the varying stage's args")


class Gate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str
    metric: str | None = Field(None, description="default: the task's primary metric")
    min_delta: float | None = None
    max_drop: float | None = None
    min: float | None = None

    @model_validator(mode="after")
    def _one(self) -> "Gate":
        if sum(x is not None for x in (self.min_delta, self.max_drop, self.min)) != 1:
            raise ValueError("a gate needs exactly one of min_delta, max_drop, min")
        return self

    def check(self, cand: float | None, base: float | None) -> tuple[bool, str]:
        label = f"{self.task}/{self.metric or 'primary'}"
        if cand is None:
            return False, f"{label}: no score"
        if self.min is not None:
            return cand >= self.min, f"{label} {cand:.3f} {'>=' if cand >= self.min else '<'} min {self.min}"
        if base is None:
            return False, f"{label}: baseline has no score"
        delta = cand - base
        if self.min_delta is not None:
            ok = delta >= self.min_delta
            return ok, f"{label} delta {delta:+.3f} {'>=' if ok else '<'} {self.min_delta}"
        ok = -delta <= self.max_drop  # type: ignore[operator]
        return ok, f"{label} drop {-delta:.3f} {'<=' if ok else '>'} {self.max_drop}"


class LadderSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    recipe: str
    stage: str | None = None
    baseline: str
    mixtures: list[str] = Field(min_length=1)
    rungs: list[Rung] = Field(min_length=1)
    gates: list[Gate] = Field(min_length=1)
    seed: int | None = None


def load_ladder(path: str | Path) -> LadderSpec:
    path = Path(path)
    data, lines = load_yaml(path)
    try:
        return LadderSpec.model_validate(data)
    except Exception as exc:
        _raise_validation(exc, path, lines, LadderSpec, _format_loc)
        raise


def _metric(store: Store, run_id: str, task: str, metric: str | None) -> float | None:
    return store.metric_mean(run_id, task, metric or primary_metric(task))


def run_ladder(path: str | Path, *, store: Store | None = None, progress: bool = True) -> dict[str, Any]:
    spec = load_ladder(path)
    store = store or Store()
    ladder_id = f"{spec.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    recipe_path = resolve_recipe_path(spec.recipe, Path(path).parent)
    base, _ = load_yaml(recipe_path)
    stage_names = [s["name"] for s in base["stages"]]
    idx = len(stage_names) - 1 if spec.stage is None else stage_names.index(spec.stage) if spec.stage in stage_names else None
    if idx is None:
        raise MixlabError(f"ladder {spec.name}: stage {spec.stage!r} is not in recipe {recipe_path}")
    out_dir = runs_dir() / "ladders" / ladder_id
    out_dir.mkdir(parents=True, exist_ok=True)

    def member(rung: Rung, mixture: str) -> RecipeRunner:
        data = copy.deepcopy(base)
        tokenizer = data.get("model", {}).get("tokenizer") if isinstance(data.get("model"), dict) else None
        data["model"] = {"preset": rung.preset, **({"overrides": rung.overrides} if rung.overrides else {}),
                         **({"tokenizer": tokenizer} if tokenizer else {})}
        data["stages"][idx]["mixture"] = mixture
        data["stages"][idx]["args"] = {**data["stages"][idx].get("args", {}), **rung.args}
        if spec.seed is not None:
            data["seed"] = spec.seed
        data["name"] = f"{base['name']}-{rung.name}-{mixture}"
        data["family"] = mixture
        file = out_dir / f"{data['name']}.yaml"
        file.write_text(yaml.safe_dump(data, sort_keys=False))
        parse_recipe(data, where=str(file))
        recipe, text = load_recipe(file)
        return RecipeRunner(recipe, text, store=store, rung=rung.name, sweep_id=ladder_id, progress=progress)

    # Preflight every rung (mixtures, presets) before training anything.
    for rung in spec.rungs:
        for mixture in [spec.baseline, *spec.mixtures]:
            member(rung, mixture).preflight()

    store.start_run(RunRecord(run_id=ladder_id, kind="ladder", name=spec.name, recipe_name=spec.recipe,
                               recipe_yaml=Path(path).read_text(), status="running", sweep_id=ladder_id,
                               config=spec.model_dump()))
    alive = list(spec.mixtures)
    history: list[dict[str, Any]] = []
    for i, rung in enumerate(spec.rungs):
        baseline_run = member(rung, spec.baseline).run()[-1].run_id
        promoted = []
        for mixture in alive:
            cand_run = member(rung, mixture).run()[-1].run_id
            verdicts = [g.check(_metric(store, cand_run, g.task, g.metric), _metric(store, baseline_run, g.task, g.metric))
                        for g in spec.gates]
            passed = all(ok for ok, _ in verdicts)
            reason = "; ".join(text for _, text in verdicts)
            if i == len(spec.rungs) - 1:
                reason += " (top rung)"
            store.record_ladder_decision(LadderDecision(
                ladder_id=ladder_id, rung=rung.name, mixture_name=mixture, run_id=cand_run,
                baseline_run_id=baseline_run, gates=[g.model_dump(exclude_none=True) for g in spec.gates],
                passed=passed, reason=reason,
            ))
            history.append({"rung": rung.name, "mixture": mixture, "run_id": cand_run, "passed": passed,
                            "reason": reason})
            if passed:
                promoted.append(mixture)
        alive = promoted
        if not alive:
            break
    store.finish_run(ladder_id)
    return {"ladder_id": ladder_id, "decisions": history, "survivors": alive}
