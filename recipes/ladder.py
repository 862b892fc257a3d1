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
seeds: [0, 1]                 # optional: k seeds per mixture (and baseline); default: the recipe's seed
gates:                        # all must pass for a promotion; each is a one-sided test at level alpha (0.05)
  - {task: proc-math, min_delta: 0.0}     # superiority: candidate - baseline > 0, shown by the data
  - {task: proc-chat, max_drop: 0.05}     # non-inferiority: candidate - baseline > -0.05, shown by the data
  - {task: proc-math, min: 0.10, alpha: 0.01}   # floor: the candidate's mean > 0.10, shown by the data
```
A gate passes only when the evidence supports it: the candidate and baseline are compared on the same items
(paired) and, with several seeds, over seeds too, by `mixlab.evals.stats.margin_test` / `floor_test` (McNemar's
exact test or Newcombe's paired interval for 0/1 scores of one seed, a paired bootstrap otherwise). "No evidence
either way" fails a gate: promotion spends the next rung's budget, so it must be earned.
Every decision is a row in `ladder_decisions` (rung, mixture, run, baseline run, gates, passed, reason); `gates`
holds each gate with its test, alpha, effect, confidence bound, p-value and the run ids compared.
"""

from __future__ import annotations

import copy
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mixlab.errors import MixlabError
from mixlab.evals import stats
from mixlab.evals.compare import align
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
    min_delta: float | None = Field(None, description="superiority: candidate - baseline > min_delta")
    max_drop: float | None = Field(None, ge=0, description="non-inferiority: candidate - baseline > -max_drop")
    min: float | None = Field(None, description="floor: the candidate's mean > min")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="one-sided significance level of the gate's test")

    @model_validator(mode="after")
    def _one(self) -> "Gate":
        if sum(x is not None for x in (self.min_delta, self.max_drop, self.min)) != 1:
            raise ValueError("a gate needs exactly one of min_delta, max_drop, min")
        return self

    @property
    def label(self) -> str:
        return f"{self.task}/{self.metric or 'primary'}"

    def decide(self, cand: np.ndarray, base: np.ndarray | None) -> tuple[bool, str, dict[str, Any]]:
        """(passed, reason, record) for per-item scores [seeds, items] of candidate and baseline on shared items."""
        if cand.size == 0:
            return False, f"{self.label}: no scored items", {"passed": False, "reason": "no scored items"}
        if self.min is not None:
            result = stats.floor_test(cand, self.min, alpha=self.alpha)
            rule = f"floor mean > {self.min:g}"
        else:
            if base is None or base.size == 0:
                return False, f"{self.label}: no items scored by both candidate and baseline", {
                    "passed": False, "reason": "no shared items"}
            margin = self.min_delta if self.min_delta is not None else -self.max_drop  # type: ignore[operator]
            result = stats.margin_test(cand, base, margin, alpha=self.alpha)
            rule = (f"superiority delta > {margin:+g}" if self.min_delta is not None
                    else f"non-inferiority drop < {self.max_drop:g}")
        record = {"rule": rule, "test": result.test, "alpha": self.alpha, "effect": result.effect,
                  "bound": result.bound, "p_value": result.p_value, "n_items": result.n_items,
                  "n_seeds": int(cand.shape[0]), "passed": result.passed}
        verdict = "pass" if result.passed else "FAIL"
        return result.passed, f"{self.label} {rule}: {verdict}, {result.describe()}", record


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
    seeds: list[int] | None = Field(None, min_length=1, description="k seeds per mixture (and baseline)")

    @model_validator(mode="after")
    def _seeds(self) -> "LadderSpec":
        if self.seed is not None and self.seeds is not None:
            raise ValueError("give seed or seeds, not both")
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be distinct")
        return self


def load_ladder(path: str | Path) -> LadderSpec:
    path = Path(path)
    data, lines = load_yaml(path)
    try:
        return LadderSpec.model_validate(data)
    except Exception as exc:
        _raise_validation(exc, path, lines, LadderSpec, _format_loc)
        raise


def gate_scores(store: Store, gate: Gate, cand_runs: list[str], base_runs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-item scores [seeds, items] of the gate's metric, on the items every candidate and baseline run scored
    (a floor gate uses the candidate's own items)."""
    metric = gate.metric or primary_metric(gate.task) or ""
    if gate.min is not None:
        data = align(store, cand_runs, cand_runs[:1], gate.task, metric)
        return data.a, data.a
    data = align(store, cand_runs, base_runs, gate.task, metric)
    return data.a, data.b


def decide(store: Store, gates: list[Gate], cand_runs: list[str], base_runs: list[str]) -> tuple[bool, str, list[dict]]:
    """All gates for one candidate: (passed, reason, per-gate records for `ladder_decisions.gates`)."""
    records, reasons, ok_all = [], [], True
    for gate in gates:
        cand, base = gate_scores(store, gate, cand_runs, base_runs)
        ok, reason, record = gate.decide(cand, base)
        ok_all &= ok
        reasons.append(reason)
        records.append({**gate.model_dump(exclude_none=True), **record, "runs": cand_runs, "baseline_runs": base_runs})
    return ok_all, "; ".join(reasons), records


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

    seeds: list[int | None] = list(spec.seeds) if spec.seeds else [spec.seed]

    def member(rung: Rung, mixture: str, seed: int | None) -> RecipeRunner:
        data = copy.deepcopy(base)
        tokenizer = data.get("model", {}).get("tokenizer") if isinstance(data.get("model"), dict) else None
        data["model"] = {"preset": rung.preset, **({"overrides": rung.overrides} if rung.overrides else {}),
                         **({"tokenizer": tokenizer} if tokenizer else {})}
        data["stages"][idx]["mixture"] = mixture
        data["stages"][idx]["args"] = {**data["stages"][idx].get("args", {}), **rung.args}
        if seed is not None:
            data["seed"] = seed
        data["name"] = f"{base['name']}-{rung.name}-{mixture}" + (f"-s{seed}" if spec.seeds else "")
        data["family"] = mixture
        file = out_dir / f"{data['name']}.yaml"
        file.write_text(yaml.safe_dump(data, sort_keys=False))
        parse_recipe(data, where=str(file))
        recipe, text = load_recipe(file)
        return RecipeRunner(recipe, text, store=store, rung=rung.name, sweep_id=ladder_id, progress=progress)

    def train(rung: Rung, mixture: str) -> list[str]:
        return [member(rung, mixture, seed).run()[-1].run_id for seed in seeds]

    # Preflight every rung (mixtures, presets) before training anything.
    for rung in spec.rungs:
        for mixture in [spec.baseline, *spec.mixtures]:
            member(rung, mixture, seeds[0]).preflight()

    store.start_run(RunRecord(run_id=ladder_id, kind="ladder", name=spec.name, recipe_name=spec.recipe,
                               recipe_yaml=Path(path).read_text(), status="running", sweep_id=ladder_id,
                               config=spec.model_dump()))
    alive = list(spec.mixtures)
    history: list[dict[str, Any]] = []
    for i, rung in enumerate(spec.rungs):
        baseline_runs = train(rung, spec.baseline)
        promoted = []
        for mixture in alive:
            cand_runs = train(rung, mixture)
            passed, reason, records = decide(store, spec.gates, cand_runs, baseline_runs)
            if i == len(spec.rungs) - 1:
                reason += " (top rung)"
            store.record_ladder_decision(LadderDecision(
                ladder_id=ladder_id, rung=rung.name, mixture_name=mixture, run_id=cand_runs[0],
                baseline_run_id=baseline_runs[0], gates=records, passed=passed, reason=reason,
            ))
            history.append({"rung": rung.name, "mixture": mixture, "run_id": cand_runs[0], "run_ids": cand_runs,
                            "baseline_run_ids": baseline_runs, "passed": passed, "reason": reason})
            if passed:
                promoted.append(mixture)
        alive = promoted
        if not alive:
            break
    store.finish_run(ladder_id)
    return {"ladder_id": ladder_id, "decisions": history, "survivors": alive}
