"""The recipe schema: what to train (base model), on what (mixture per stage), how (a TRL trainer and its
hyperparameters), and what to measure afterwards (an eval suite).

A recipe is a list of stages that chain: each stage starts from the previous stage's final checkpoint unless it says
`init: base` or names an earlier stage. Trainer hyperparameters live in `args` and are checked against the fields of
TRL's own config dataclass (`SFTConfig`, `GRPOConfig`, `DPOConfig`, ...: one registered spec per method in
`trainers.py`), so every TRL option is available and a typo gets
the closest valid name. Settings mixlab owns (output dir, seed, precision, checkpointing, packing) are recipe fields,
not `args`, so they are recorded uniformly in DuckDB.

```yaml
name: sft-math
seed: 0
model: {preset: demo, overrides: {hidden_size: 128}}
precision: auto            # auto | fp32 | bf16 | fp16
checkpoint_every: 100      # steps; `mixlab run --resume RUN_ID` continues from the last one
eval: {suite: procedural, limit: 200, every_n_steps: null}
stages:
  - name: sft
    trainer: sft
    mixture: demo-math-heavy
    packing: true
    args: {learning_rate: 2.0e-3, max_steps: 600, per_device_train_batch_size: 32, lr_scheduler_type: cosine}
  - name: grpo
    trainer: grpo
    mixture: demo-rl
    args: {max_steps: 20, num_generations: 4, max_completion_length: 48}
```
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from mixlab.errors import MixlabError
from mixlab.recipes.trainers import TRAINERS, TrainerSpec, get_trainer
from mixlab.validation import LocatedError, file_error
from mixlab.yamlio import Where, did_you_mean, load_yaml, read_yaml_text

# TrainingArguments fields that mixlab sets itself from recipe fields; a recipe naming them in `args` is told where
# the setting lives instead.
RESERVED_ARGS: dict[str, str] = {
    "output_dir": "mixlab writes each run under runs/checkpoints/<run_id>",
    "overwrite_output_dir": "mixlab writes each run under runs/checkpoints/<run_id>",
    "seed": "use the recipe field `seed`",
    "data_seed": "use the recipe field `seed` (data order follows it)",
    "use_cpu": "mixlab picks the device; use the recipe field `devices`",
    "no_cuda": "mixlab picks the device; use the recipe field `devices`",
    "bf16": "use the recipe field `precision`",
    "fp16": "use the recipe field `precision`",
    "save_steps": "use the recipe field `checkpoint_every`",
    "save_strategy": "use the recipe field `checkpoint_every`",
    "save_total_limit": "use the recipe field `keep_checkpoints`",
    "packing": "use the stage field `packing`",
    "padding_free": "use the stage field `packing`",
    "assistant_only_loss": "use the stage field `assistant_only_loss`",
    "report_to": "mixlab logs every metric to DuckDB",
    "logging_dir": "mixlab logs every metric to DuckDB",
    "run_name": "the run id is set by mixlab",
    "resume_from_checkpoint": "use `mixlab run --resume RUN_ID`",
    "push_to_hub": "checkpoints are written locally in the official format",
    "eval_strategy": "use the recipe field `eval.every_n_steps`",
    "eval_steps": "use the recipe field `eval.every_n_steps`",
}


@functools.cache
def trl_config_fields(cls: type) -> dict[str, Any]:
    """name -> resolved type hint (or None when it cannot be resolved) of every init field of a TRL config class."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # exotic forward references: names only, no type checks
        hints = {}
    return {f.name: hints.get(f.name) for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}


def _check_arg_type(cls: type, name: str, value: Any, hint: Any) -> str | None:
    if hint is None:
        return None
    try:
        adapter = TypeAdapter(hint)
    except Exception:
        return None
    try:
        adapter.validate_python(value, strict=False)
    except ValidationError as exc:
        first = exc.errors()[0]
        return f"{first['msg']} (TRL {cls.__name__}.{name}: {value!r})"
    except Exception:
        return None
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ModelSpec(_Strict):
    """The base model: exactly one of `preset` (fresh init), `path` (local official-format checkpoint folder),
    `hub` (a Hugging Face id, needs network or the hub cache) or `run` (the final checkpoint of an earlier run)."""

    preset: str | None = None
    path: str | None = None
    hub: str | None = None
    run: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict, description="config fields changed on a preset")
    tokenizer: str | None = Field(None, description="tokenizer name or folder; default: the checkpoint's, else mixlab-bpe")

    @model_validator(mode="after")
    def _exactly_one(self) -> "ModelSpec":
        given = [k for k in ("preset", "path", "hub", "run") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of preset, path, hub, run (got {given or 'none'})")
        if self.overrides and not self.preset:
            raise ValueError("`overrides` applies to a fresh `preset` init only")
        return self

    @property
    def source(self) -> str:
        return self.preset or self.path or self.hub or f"run:{self.run}"


class EvalSpec(_Strict):
    suite: str = "procedural"
    limit: int | None = Field(None, ge=1, description="items per task (None = the whole suite)")
    every_n_steps: int | None = Field(None, ge=1, description="also evaluate during training")
    backend: str = "torch"
    batch_size: int | None = Field(None, ge=1)
    max_new_tokens: int | None = Field(None, ge=1)


class Stage(_Strict):
    name: str
    trainer: str = Field(description="a registered training method (recipes/trainers.py): sft, dpo, grpo, kto, ...")
    mixture: str = Field(description="mixture name (mixtures/registry), YAML path, or built mixture id")
    init: str = Field("previous", description="'previous' (default), 'base', or an earlier stage's name")
    packing: bool = Field(False, description="SFT: boundary-safe BFD packing (the model resets state per sample)")
    assistant_only_loss: bool = Field(True, description="SFT: loss on assistant tokens only (chat template markers)")
    rewards: list[Literal["math", "code", "format"]] | None = Field(
        None, description="GRPO: verifiers to reward with (default: all; chosen per row by the `verifier` column)"
    )
    eval: EvalSpec | Literal[False] | None = Field(None, description="override the recipe's eval (false = none)")
    args: dict[str, Any] = Field(default_factory=dict, description="hyperparameters of TRL's config class")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "-_." for c in v):
            raise ValueError(f"stage name {v!r} must be non-empty and use only letters, digits, '-', '_', '.'")
        return v

    @field_validator("trainer")
    @classmethod
    def _registered(cls, v: str) -> str:
        if v not in TRAINERS:
            raise ValueError(f"unknown trainer {v!r}{did_you_mean(v, TRAINERS)}; trainers: {', '.join(TRAINERS)}")
        return v

    @property
    def spec(self) -> TrainerSpec:
        return get_trainer(self.trainer)

    @model_validator(mode="after")
    def _check_args(self) -> "Stage":
        spec = self.spec
        config_class = spec.config_class()
        fields = trl_config_fields(config_class)
        for key, value in self.args.items():
            if key in RESERVED_ARGS:
                raise _ArgError(key, f"set by mixlab: {RESERVED_ARGS[key]}")
            if key not in fields:
                raise _ArgError(key, f"not a field of TRL's {config_class.__name__}{did_you_mean(key, fields)}")
            if key in spec.required and value != spec.required[key]:
                raise _ArgError(key, f"must be {spec.required[key]!r} for the hybrid model (got {value!r})")
            problem = _check_arg_type(config_class, key, value, fields[key])
            if problem:
                raise _ArgError(key, problem)  # noqa: B904
        if self.packing and not spec.packing:
            raise ValueError(f"packing applies to {_methods_with('packing')} stages, not {self.trainer}")
        if self.rewards is not None and not spec.rewards:
            raise ValueError(f"`rewards` applies to {_methods_with('rewards')} stages only")
        return self


def _methods_with(flag: str) -> str:
    return ", ".join(name for name, spec in TRAINERS.items() if getattr(spec, flag))


def _ArgError(key: str, message: str) -> LocatedError:
    return LocatedError(("args", key), message)


class FsdpSpec(_Strict):
    """Settings of a multi-process run (`mixlab run --nproc N`, FSDP2; recipes/distributed.py). Ignored in one process."""

    offload: bool = Field(False, description="keep sharded params, grads and optimizer state in CPU memory")
    activation_checkpointing: bool = Field(False, description="recompute each decoder layer in backward")


class Recipe(_Strict):
    name: str
    description: str = ""
    seed: int = 0
    model: ModelSpec
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    devices: int = Field(1, ge=1, description="number of accelerators (1 on CPU)")
    kernels: Literal["auto", "torch", "triton"] = "auto"
    router_bias_update_rate: float | None = Field(
        None, ge=0, description="aux-loss-free MoE balancing step per optimizer step (None: the model config's)"
    )
    checkpoint_every: int | None = Field(None, ge=1, description="save a resumable checkpoint every N steps")
    keep_checkpoints: int | None = Field(None, ge=1, description="keep only the newest N step checkpoints")
    fsdp: FsdpSpec = Field(default_factory=FsdpSpec)
    eval: EvalSpec | None = None
    family: str | None = Field(None, description="label for the dashboard (default: the last stage's mixture)")
    stages: list[Stage] = Field(min_length=1)

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, v: Any) -> Any:
        # `model: demo` is a preset; `model: ./runs/x` or `model: org/name` need the explicit mapping.
        return {"preset": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _chain(self) -> "Recipe":
        seen: list[str] = []
        for i, stage in enumerate(self.stages):
            if stage.name in seen:
                raise LocatedError(("stages", i, "name"), f"duplicate stage name {stage.name!r}")
            if stage.init not in ("previous", "base") and stage.init not in seen:
                raise LocatedError(
                    ("stages", i, "init"),
                    f"{stage.init!r} is not an earlier stage"
                    f"{did_you_mean(stage.init, seen + ['previous', 'base'])}",
                )
            seen.append(stage.name)
        return self

    def stage_eval(self, stage: Stage) -> EvalSpec | None:
        if stage.eval is False:
            return None
        return stage.eval or self.eval


# ---------------------------------------------------------------------------------------------------------------
# Loading with file/line/field errors
# ---------------------------------------------------------------------------------------------------------------


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_recipe(data: Any, *, where: str = "<recipe>", lines: Where | None = None) -> Recipe:
    """Validate plain data into a `Recipe`; errors are one line: `file:line: field: message`."""
    lines = lines or Where()
    if not isinstance(data, dict):
        raise MixlabError(f"{where}: a recipe must be a YAML mapping, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise file_error(exc, Recipe, where, lines, fmt=_format_loc) from None


def load_recipe(path: str | Path) -> tuple[Recipe, str]:
    """Load and validate a recipe file. Returns the recipe and its YAML text (recorded with every run)."""
    path = Path(path)
    if not path.is_file():
        hint = ""
        registry = Path(__file__).parent / "registry"
        if registry.is_dir() and not path.suffix:
            candidate = registry / f"{path.name}.yaml"
            if candidate.is_file():
                return load_recipe(candidate)
            hint = did_you_mean(path.name, [p.stem for p in registry.glob("*.yaml")])
        raise MixlabError(f"{path}: recipe file not found{hint}")
    text = read_yaml_text(path)  # size-capped, UTF-8 checked
    data, lines = load_yaml(path, text=text)
    return parse_recipe(data, where=str(path), lines=lines), text


def recipe_from_text(text: str, where: str = "<recipe>") -> Recipe:
    data, lines = load_yaml(where, text=text)
    return parse_recipe(data, where=where, lines=lines)
