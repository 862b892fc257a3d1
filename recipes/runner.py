"""Run a recipe: preflight every input, then each stage through its TRL trainer, then the eval suite.

Every stage is one row in `runs` (trainer, stage, mixture id, seed, git sha, packages, device, status) and writes
its metrics to DuckDB while it trains. A stage's folder is `runs/checkpoints/<run_id>/`: step checkpoints
`checkpoint-N/` (model, optimizer, scheduler, RNG and data-sampler state; what `--resume` continues from) and, at the
end, `final/`, the full merged weights in the official format (`save_pretrained`; written to a temp folder and
renamed).

Resume. All stages of one invocation share an invocation id (recorded in `runs.config`). `resume(RUN_ID)` reloads
the recipe YAML from the run row, skips completed stages, and continues an unfinished stage from its newest step
checkpoint; the Trainer restores RNG state and skips the batches already seen, so the data order is the same as in
an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from huggingface_hub import snapshot_download
from rich.console import Console

from mixlab.device import check_device_count, device_kind, resolve_device, resolve_precision
from mixlab.errors import MixlabError
from mixlab.evals.runner import evaluate
from mixlab.evals.suites import suite_tasks
from mixlab.kernels.dispatch import backend_scope, check_backend
from mixlab.mixtures import build
from mixlab.model.loading import load_model_and_tokenizer
from mixlab.model.presets import PRESETS
from mixlab.model.training import RouterBiasCallback
from mixlab.paths import checkpoints_dir
from mixlab.recipes.callbacks import DuckDBLogger, PeriodicEval
from mixlab.recipes.data import keep_curriculum_order, load_stage_dataset
from mixlab.recipes.graph_step import bucket_multiple, graph_mode
from mixlab.recipes.distributed import (
    SUPPORTED_TRAINERS,
    CheckpointConfigCallback,
    DistContext,
    adopt_fsdp,
    fsdp_training_args,
    init_distributed,
    save_consolidated,
    shard_model,
)
from mixlab.recipes.schema import EvalSpec, Recipe, Stage, recipe_from_text
from mixlab.recipes.trainers import BuildContext
from mixlab.store import CostRecord, RunRecord, Store
from mixlab.yamlio import did_you_mean

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class StageResult:
    run_id: str
    stage: str
    trainer: str
    mixture_name: str
    status: str
    checkpoint: str | None = None
    final_loss: float | None = None
    steps: int = 0
    train_s: float = 0.0
    eval_s: float = 0.0
    metrics: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ResolvedStage:
    stage: Stage
    run_id: str
    mixture_id: str
    mixture_name: str
    mixture_family: str | None


def new_invocation_id(recipe_name: str) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{recipe_name}-{stamp}-{secrets.token_hex(2)}"


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete `checkpoint-N` (one with its trainer state written; a kill mid-save leaves none)."""
    if not output_dir.is_dir():
        return None
    found = []
    for child in output_dir.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and (child / "trainer_state.json").is_file():
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def _device(recipe: Recipe, ctx: DistContext) -> str:
    """The training device. Several devices need several processes: this rank's device under torchrun
    (`mixlab run --nproc N`), else a multi-device recipe is refused before anything trains."""
    if ctx.enabled:
        return init_distributed(ctx)
    try:
        check_device_count(recipe.devices)
    except MixlabError as exc:
        raise MixlabError(f"recipe {recipe.name}: {exc}") from None
    if recipe.devices > 1:
        # Multi-process launching (one rank per device, rank-0-only store writes) is not built yet: say so
        # before anything trains instead of silently using one device.
        raise MixlabError(
            f"recipe {recipe.name}: devices={recipe.devices}: launch one process per device with "
            f"`mixlab run RECIPE --nproc {recipe.devices}`"
        )
    return resolve_device("auto")


def _select_kernels(recipe: Recipe, device: str) -> str:
    """The kernel backend the recipe runs under (`run` and `evaluate_stage` set it for their duration). `auto`: on a
    GPU the kernels' fast path (grouped-GEMM MoE, mixlab's fused Triton kernels and KDA: the kernel backend "auto"),
    else the pure-torch ops. `triton` asks for fla-core's KDA instead (checked here)."""
    name = recipe.kernels
    if name == "auto":
        name = "auto" if device.startswith("cuda") else "torch"
    try:
        check_backend(name)
    except MixlabError as exc:
        raise MixlabError(f"recipe {recipe.name}: kernels: {exc}") from None
    return name


def _precision(recipe: Recipe, device: str) -> str:
    try:
        return resolve_precision(recipe.precision, device)
    except MixlabError as exc:
        raise MixlabError(f"recipe {recipe.name}: {exc}") from None


class RecipeRunner:
    def __init__(
        self,
        recipe: Recipe,
        recipe_yaml: str,
        *,
        store: Store | None = None,
        invocation: str | None = None,
        sweep_id: str | None = None,
        rung: str | None = None,
        progress: bool = True,
        data_root: str | None = None,
        defer_eval: bool = False,
    ):
        """`defer_eval`: train only; each stage's final eval runs later through `evaluate_stage` (`mixlab demo`
        schedules evals as jobs of their own to keep both cores busy)."""
        self.recipe = recipe
        self.defer_eval = defer_eval
        self.recipe_yaml = recipe_yaml
        self.store = store or Store()
        self.invocation = invocation or new_invocation_id(recipe.name)
        self.sweep_id = sweep_id
        self.rung = rung
        self.progress = progress
        self.data_root = data_root
        self._resolved: list[ResolvedStage] | None = None
        self._base_path: Path | None = None
        self.dist = DistContext.from_env()  # torchrun's ranks; only rank 0 writes to the store

    # -- preflight: everything that can fail before a single step trains ----------------------------------------

    def stage_run_id(self, stage: Stage) -> str:
        return f"{self.invocation}-{stage.name}"

    def preflight(self) -> list[ResolvedStage]:
        if self._resolved is not None:
            return self._resolved
        self.device = _device(self.recipe, self.dist)
        self.precision = _precision(self.recipe, self.device)
        self.kernels = _select_kernels(self.recipe, self.device)
        self._base_path = self._resolve_base_model()
        resolved = []
        for stage in self.recipe.stages:
            try:
                built = build(stage.mixture, data_root=self.data_root)
            except MixlabError as exc:
                raise MixlabError(f"recipe {self.recipe.name}, stage {stage.name}: mixture {stage.mixture!r}: {exc}") from None
            resolved.append(ResolvedStage(stage=stage, run_id=self.stage_run_id(stage), mixture_id=built.mixture_id,
                                          mixture_name=built.name, mixture_family=built.family))
        for stage in self.recipe.stages:
            spec = self.recipe.stage_eval(stage)
            if spec is not None:
                _check_suite(spec.suite, where=f"recipe {self.recipe.name}, stage {stage.name}")
            if self.dist.enabled:
                _check_distributed(self.recipe, stage, spec)
        self._resolved = resolved
        return resolved

    def _resolve_base_model(self) -> Path | None:
        spec = self.recipe.model
        if spec.preset:
            if spec.preset not in PRESETS:
                raise MixlabError(
                    f"recipe {self.recipe.name}: model.preset {spec.preset!r} is not a preset"
                    f"{did_you_mean(spec.preset, list(PRESETS))}; presets: {sorted(PRESETS)}"
                )
            return None
        if spec.path:
            return _check_checkpoint(Path(spec.path), f"recipe {self.recipe.name}: model.path")
        if spec.run:
            row = self.store.get_run(spec.run)
            if row is None:
                raise MixlabError(f"recipe {self.recipe.name}: model.run {spec.run!r} is not a run in {self.store.path}")
            if row["status"] != "completed" or not row["checkpoint_path"]:
                raise MixlabError(
                    f"recipe {self.recipe.name}: model.run {spec.run!r} has status {row['status']!r} and no final checkpoint"
                )
            return _check_checkpoint(Path(row["checkpoint_path"]), f"recipe {self.recipe.name}: model.run {spec.run}")
        # Hub id: only the local cache when offline; a clear error otherwise.
        try:
            folder = snapshot_download(spec.hub, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
        except Exception as exc:
            raise MixlabError(f"recipe {self.recipe.name}: model.hub {spec.hub!r} cannot be fetched: {exc}") from None
        return _check_checkpoint(Path(folder), f"recipe {self.recipe.name}: model.hub {spec.hub}")

    # -- running ----------------------------------------------------------------------------------------------

    def run(self, *, resume: bool = False, stop_after: str | None = None) -> list[StageResult]:
        """Run the recipe's stages (`resume`: skip the completed ones); `stop_after`: the last stage to run now."""
        resolved = self.preflight()
        if not self.progress:
            _quiet_libraries()
        with backend_scope(self.kernels):
            return self._run_stages(resolved, resume=resume, stop_after=stop_after)

    def _run_stages(self, resolved: list[ResolvedStage], *, resume: bool, stop_after: str | None) -> list[StageResult]:
        results: list[StageResult] = []
        previous: dict[str, Path] = {}
        parent: str | None = self.recipe.model.run  # a recipe started from an earlier run descends from it
        for item in resolved:
            stage = item.stage
            existing = self.store.get_run(item.run_id) if resume else None
            if existing and existing["status"] == "completed" and existing["checkpoint_path"] and Path(
                existing["checkpoint_path"]
            ).is_dir():
                previous[stage.name] = Path(existing["checkpoint_path"])
                results.append(self._result_from_store(item, existing))
                parent = item.run_id
                continue
            init = self._init_path(stage, previous)
            result = self._run_stage(item, init, parent, resume=existing is not None)
            results.append(result)
            previous[stage.name] = Path(result.checkpoint)  # type: ignore[arg-type]
            parent = item.run_id
            if stage.name == stop_after:
                break
        return results

    def _init_path(self, stage: Stage, previous: dict[str, Path]) -> Path | None:
        if stage.init == "base" or not previous:
            return self._base_path
        if stage.init == "previous":
            return list(previous.values())[-1]
        return previous[stage.init]

    def _run_stage(self, item: ResolvedStage, init: Path | None, parent: str | None, *, resume: bool) -> StageResult:
        stage = item.stage
        output_dir = checkpoints_dir() / item.run_id
        resume_from = latest_checkpoint(output_dir) if resume else None
        if not self.dist.is_main:
            pass  # rank 0 owns the run row
        elif resume:
            # Steps after the checkpoint are trained again; drop what the interrupted process logged for them.
            self.store.restart_run(item.run_id, after_step=int(resume_from.name.split("-")[1]) if resume_from else 0)
        else:
            self.store.start_run(self._run_record(item, init, parent, output_dir))  # provenance filled by the store
        _print(self.progress, f"[stage {stage.name}] run {item.run_id}: {stage.trainer} on {item.mixture_name}"
               + (f", resuming from {resume_from.name}" if resume_from else ""))
        try:
            result = self._train_and_evaluate(item, init, output_dir, resume_from)
        except BaseException as exc:  # noqa: BLE001 - every failure, including OOM and Ctrl-C, marks the run
            message = _describe_failure(exc)
            if self.dist.is_main:
                self.store.fail_run(item.run_id, message + "\n" + traceback.format_exc(limit=8)[-4000:])
            kept = latest_checkpoint(output_dir)
            hint = f"; checkpoint {kept} kept, continue with `mixlab run --resume {item.run_id}`" if kept else ""
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise MixlabError(f"run {item.run_id} (stage {stage.name}) failed: {message}{hint}") from exc
        if self.dist.is_main:
            self.store.finish_run(item.run_id)
            result.metrics = self.store.run_metrics(item.run_id)
        return result

    def _run_record(self, item: ResolvedStage, init: Path | None, parent: str | None, output_dir: Path) -> RunRecord:
        stage, recipe = item.stage, self.recipe
        return RunRecord(
            run_id=item.run_id,
            kind="train",
            name=f"{recipe.name}/{stage.name}",
            trainer=stage.trainer,
            stage=stage.name,
            recipe_name=recipe.name,
            recipe_yaml=self.recipe_yaml,
            mixture_id=item.mixture_id,
            mixture_name=item.mixture_name,
            mixture_family=recipe.family or item.mixture_family or item.mixture_name,
            base_model=str(init) if init else recipe.model.source,
            preset=recipe.model.preset,
            rung=self.rung,
            seed=recipe.seed,
            status="running",
            parent_run_id=parent,
            sweep_id=self.sweep_id,
            config={
                "invocation": self.invocation,
                "stage_index": recipe.stages.index(stage),
                "output_dir": str(output_dir),
                "init": str(init) if init else None,
                "model": recipe.model.model_dump(exclude_none=True),
                "kernels": self.kernels,
            },
        )

    def _train_and_evaluate(self, item: ResolvedStage, init: Path | None, output_dir: Path,
                            resume_from: Path | None) -> StageResult:
        stage = item.stage
        t0, c0 = time.perf_counter(), time.process_time()  # CPU seconds too: wall is noisy on a shared machine
        transformers.set_seed(self.recipe.seed)
        if os.environ.get("MIXLAB_DETERMINISTIC") == "1":  # set by `mixlab demo`: same seed, same numbers
            torch.use_deterministic_algorithms(True, warn_only=True)
            # Deterministic mode also NaN-fills every torch.empty; TRL's fused lm-head loss empties a 512 MB
            # [4096, 32768] tile buffer twice a step (17 % of a demo SFT step's CPU). Nothing reads it unwritten.
            torch.utils.deterministic.fill_uninitialized_memory = False
        model, tokenizer = self._load_model(init)
        trainer = self._build_trainer(item, model, tokenizer, output_dir)
        train_output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        step = trainer.state.global_step
        train_s = time.perf_counter() - t0
        final_dir = self._save_final(trainer, tokenizer, output_dir)
        final_loss = _final_loss(trainer, train_output)
        if self.dist.is_main:
            self.store.set_checkpoint(item.run_id, str(final_dir))
            self.store.log_train_metrics(item.run_id, step, {"train_wall_s": train_s,
                                                             "train_cpu_s": time.process_time() - c0})
            self._record_cost(item.run_id, "train", train_s, self.dist.world_size)
        del trainer, model
        t1 = time.perf_counter()
        if self.dist.is_main and not self.defer_eval:
            self._final_eval(item, final_dir, step)
        return StageResult(
            run_id=item.run_id, stage=stage.name, trainer=stage.trainer, mixture_name=item.mixture_name,
            status="completed", checkpoint=str(final_dir), final_loss=final_loss, steps=step, train_s=train_s,
            eval_s=time.perf_counter() - t1,
        )

    def _final_eval(self, item: ResolvedStage, final_dir: Path, step: int) -> None:
        spec = self.recipe.stage_eval(item.stage)
        if spec is None:
            return
        t1, c1 = time.perf_counter(), time.process_time()
        self._evaluate(final_dir, spec, item.run_id, step=None)
        self._record_cost(item.run_id, "eval", time.perf_counter() - t1, 1)  # rank 0 evaluates alone
        self.store.log_train_metrics(item.run_id, step, {"eval_wall_s": time.perf_counter() - t1,
                                                         "eval_cpu_s": time.process_time() - c1})

    def evaluate_stage(self, stage_name: str) -> None:
        """The final eval of a stage trained earlier (e.g. with `defer_eval`), on its stored final checkpoint."""
        item = next((i for i in self.preflight() if i.stage.name == stage_name), None)
        row = self.store.get_run(item.run_id) if item is not None else None
        if row is None or row["status"] != "completed" or not row["checkpoint_path"]:
            raise MixlabError(f"recipe {self.recipe.name}: stage {stage_name!r} has no completed run to evaluate "
                              f"in invocation {self.invocation}")
        last = self.store.last_train_metric(item.run_id, "train_wall_s")
        with backend_scope(self.kernels):
            self._final_eval(item, Path(row["checkpoint_path"]), last[1] if last else 0)

    def _record_cost(self, run_id: str, phase: str, wall_s: float, n_devices: int) -> None:
        """Device-seconds of a phase (wall time x devices held), so `mixlab optimise` can price a mixture."""
        self.store.record_cost(CostRecord(run_id=run_id, phase=phase, device_kind=device_kind(self.device),
                                          n_devices=n_devices, wall_s=wall_s, device_s=wall_s * n_devices))

    def _result_from_store(self, item: ResolvedStage, row: dict[str, Any]) -> StageResult:
        metrics = self.store.run_metrics(item.run_id)
        loss = self.store.last_train_metric(item.run_id, "loss")
        return StageResult(
            run_id=item.run_id, stage=item.stage.name, trainer=item.stage.trainer, mixture_name=item.mixture_name,
            status=row["status"], checkpoint=row["checkpoint_path"], final_loss=loss[0] if loss else None,
            steps=loss[1] if loss else 0, metrics=metrics,
        )

    # -- pieces -----------------------------------------------------------------------------------------------

    def _load_model(self, init: Path | None):
        """The stage's start weights (a fresh preset init, or a checkpoint) in fp32 on CPU: master weights stay fp32,
        bf16/fp16 are autocast by the Trainer, which also moves the model to the device."""
        spec = self.recipe.model
        source = spec.preset if init is None else init
        overrides = spec.overrides if init is None else None
        loaded = load_model_and_tokenizer(source, spec.tokenizer, device="cpu", dtype=torch.float32,
                                          overrides=overrides)
        return loaded.model, loaded.tokenizer

    def _trl_args(self, item: ResolvedStage, output_dir: Path) -> Any:
        """The method's TRL config: mixlab's defaults < the spec's defaults < the stage's `args` < settings mixlab
        owns (recipe fields) < the spec's stage-field values and required values."""
        stage, recipe, spec = item.stage, self.recipe, item.stage.spec
        kwargs: dict[str, Any] = {"logging_steps": 10, "per_device_train_batch_size": 8, "num_train_epochs": 1}
        kwargs.update(spec.defaults)
        kwargs.update(stage.args)
        kwargs.update(
            output_dir=str(output_dir),
            seed=recipe.seed,
            data_seed=recipe.seed,
            use_cpu=not self.device.startswith("cuda"),
            report_to="none",
            save_strategy="steps" if recipe.checkpoint_every else "no",
            save_steps=recipe.checkpoint_every or 500,
            save_total_limit=recipe.keep_checkpoints,
            save_only_model=False,  # optimizer, scheduler and RNG state are what makes resume exact
            disable_tqdm=not self.progress,
            eval_strategy="no",
            bf16=self.precision == "bf16",
            fp16=self.precision == "fp16",
        )
        kwargs.update(spec.stage_args(stage))
        if (spec.name == "sft" and self.device.startswith("cuda") and not self.dist.enabled and not stage.packing
                and graph_mode() == "auto" and "pad_to_multiple_of" not in stage.args):
            # The graph step (default on a GPU): padded batches in a few lengths, so its CUDA graphs replay all of them.
            kwargs["pad_to_multiple_of"] = bucket_multiple(kwargs.get("max_length", 1024))
        if self.dist.enabled:
            kwargs.update(fsdp_training_args(offload=recipe.fsdp.offload))
            # The model's own per-layer checkpointing (accelerate's FSDP AC skips a model that is already sharded).
            kwargs["activation_checkpointing"] = bool(recipe.fsdp.activation_checkpointing or kwargs.pop(
                "gradient_checkpointing", None) or kwargs.get("activation_checkpointing"))
        kwargs.update(spec.required)
        cls = spec.config_class()
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as exc:
            raise MixlabError(f"recipe {recipe.name}, stage {stage.name}: invalid TRL {cls.__name__}: {exc}") from None

    def _build_trainer(self, item: ResolvedStage, model, tokenizer, output_dir: Path):
        stage = item.stage
        args = self._trl_args(item, output_dir)
        data = load_stage_dataset(item.mixture_id, stage.spec)
        keep_curriculum_order(args, data.n_phases)
        callbacks: list[Any] = [
            RouterBiasCallback(self.recipe.router_bias_update_rate),  # None: the model config's rate
        ]
        if self.dist.is_main:
            callbacks.insert(0, DuckDBLogger(self.store, item.run_id))
        if self.dist.enabled:
            callbacks.append(CheckpointConfigCallback(model.config, tokenizer))
            model = shard_model(model, device=self.device, param_dtype=torch.bfloat16 if self.precision == "bf16"
                                else torch.float32, offload=self.recipe.fsdp.offload)
        spec = self.recipe.stage_eval(stage)
        if spec is not None and spec.every_n_steps:
            callbacks.append(
                PeriodicEval(spec.every_n_steps, lambda ckpt, step: self._evaluate(ckpt, spec, item.run_id, step=step),
                             tokenizer)
            )
        trainer = stage.spec.build(BuildContext(model=model, tokenizer=tokenizer, args=args, dataset=data.dataset,
                                                callbacks=callbacks, stage=stage))
        return adopt_fsdp(trainer) if self.dist.enabled else trainer

    def _save_final(self, trainer, tokenizer, output_dir: Path) -> Path:
        """Full merged weights, official names, written to a temp folder and renamed into place."""
        final = output_dir / "final"
        if self.dist.enabled:  # gathered to rank 0, official format
            return save_consolidated(trainer.model, tokenizer, final, self.dist)
        tmp = output_dir / f".final-tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model = trainer.accelerator.unwrap_model(trainer.model) if hasattr(trainer, "accelerator") else trainer.model
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final

    def _evaluate(self, checkpoint: Path, spec: EvalSpec, run_id: str, *, step: int | None) -> None:
        """The eval suite on a checkpoint; eval rows carry this run's id. Periodic evals (`step` given) also land
        in train_metrics as `eval/<task>/<metric>` at that step, so the dashboard can plot them over training."""
        gen = {"max_new_tokens": spec.max_new_tokens} if spec.max_new_tokens else None
        results = evaluate(
            str(checkpoint), spec.suite, store=self.store, run_id=run_id, limit=spec.limit, backend=spec.backend,
            gen_config=gen, chunk_size=spec.batch_size or 32, progress=self.progress,
        )
        failed = [t for t in results.tasks if t.status != "completed"]
        if failed:
            raise MixlabError("eval failed: " + "; ".join(f"{t.task}: {t.error}" for t in failed))
        if step is not None:
            self.store.log_train_metrics(run_id, step, {
                f"eval/{t.task}/{m.metric}": m.mean for t in results.tasks for m in t.metrics
            })


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def _quiet_libraries() -> None:
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _check_checkpoint(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise MixlabError(f"{what}: checkpoint folder {path} does not exist")
    if not (path / "config.json").is_file():
        raise MixlabError(f"{what}: {path} has no config.json (not a checkpoint folder)")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise MixlabError(f"{what}: {path} has no weight files (*.safetensors)")
    return path


def _check_suite(suite: str, where: str) -> None:
    try:
        suite_tasks(suite, allow_missing=False)
    except MixlabError as exc:
        raise MixlabError(f"{where}: eval: {exc}") from None


def _check_distributed(recipe: Recipe, stage: Stage, spec: EvalSpec | None) -> None:
    where = f"recipe {recipe.name}, stage {stage.name}"
    if stage.trainer not in SUPPORTED_TRAINERS:
        raise MixlabError(f"{where}: trainer {stage.trainer!r} does not run sharded yet (--nproc > 1 supports "
                          f"{', '.join(SUPPORTED_TRAINERS)}); run it in one process")
    if spec is not None and spec.every_n_steps:
        raise MixlabError(f"{where}: eval.every_n_steps is not supported with --nproc > 1 (the final eval is)")


def _final_loss(trainer, train_output) -> float | None:
    for entry in reversed(trainer.state.log_history):
        if "loss" in entry:
            return float(entry["loss"])
    return getattr(train_output, "training_loss", None)


def _describe_failure(exc: BaseException) -> str:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(exc).lower():
        return f"out of memory: {type(exc).__name__}: {exc}"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _print(enabled: bool, text: str) -> None:
    if enabled:
        Console(stderr=True).print(text, markup=False)


# ---------------------------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------------------------


def resume(run_id: str, *, store: Store | None = None, progress: bool = True) -> list[StageResult]:
    """Continue the invocation that `run_id` (a stage run id or an invocation id) belongs to."""
    store = store or Store()
    row = store.get_run(run_id)
    if row is None:
        rows = store.runs_of_invocation(run_id)
        if not rows:
            raise MixlabError(f"--resume {run_id}: no such run in {store.path}")
        row = rows[0]
    config = json.loads(row["config"] or "{}")
    invocation = config.get("invocation")
    if not invocation or not row["recipe_yaml"]:
        raise MixlabError(f"--resume {run_id}: the run row has no recipe or invocation id to resume from")
    recipe = recipe_from_text(row["recipe_yaml"], where=f"<recipe of run {row['run_id']}>")
    runner = RecipeRunner(
        recipe, row["recipe_yaml"], store=store, invocation=invocation, sweep_id=row["sweep_id"], rung=row["rung"],
        progress=progress,
    )
    return runner.run(resume=True)
