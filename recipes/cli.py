"""`mixlab run`, `mixlab sweep`, `mixlab ladder`.

The recipes modules are imported inside the commands on purpose: they import torch, transformers and TRL (seconds),
which `mixlab --help` and every other command must not pay for. This CLI entry point is the one place they are lazy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from mixlab import procs
from mixlab.errors import MixlabError
from mixlab.recipes.optimise_cli import app as optimise_app


def run_cmd(
    recipe: Optional[Path] = typer.Argument(None, help="recipe YAML (or a name in recipes/registry)"),
    resume: Optional[str] = typer.Option(None, "--resume", help="continue run RUN_ID from its last checkpoint"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and preflight (mixtures, checkpoints) only"),
    sweep_id: Optional[str] = typer.Option(None, "--sweep-id", hidden=True),
    invocation: Optional[str] = typer.Option(None, "--invocation", hidden=True),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1,
                                        help="processes on this node, FSDP2 over torchrun (default: recipe devices)"),
    nnodes: int = typer.Option(1, "--nnodes", min=1, help="nodes (run the same command on each, see README)"),
    node_rank: int = typer.Option(0, "--node-rank", min=0),
    rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint", help="HOST:PORT of node 0 (multi-node)"),
) -> None:
    """Fine-tune a model with a recipe (TRL SFT / DPO / GRPO / KTO stages), evaluate it, record it in DuckDB."""
    from mixlab.recipes.report import print_results
    from mixlab.recipes.runner import RecipeRunner, resume as resume_run
    from mixlab.recipes.schema import load_recipe

    if (nproc or 1) * nnodes > 1 and "WORLD_SIZE" not in os.environ:
        from mixlab.recipes.launchers import launch_run

        code = launch_run(recipe, resume=resume, nproc=nproc or 1, nnodes=nnodes, node_rank=node_rank,
                          rdzv_endpoint=rdzv_endpoint, sweep_id=sweep_id, invocation=invocation, quiet=quiet,
                          dry_run=dry_run)
        if code:
            raise typer.Exit(code)
        return
    if resume:
        if recipe is not None:
            raise MixlabError("--resume RUN_ID takes the recipe from the run row; do not also pass a recipe")
        results = resume_run(resume, progress=not quiet)
    else:
        if recipe is None:
            raise MixlabError("give a recipe YAML, or --resume RUN_ID")
        loaded, text = load_recipe(recipe)
        runner = RecipeRunner(loaded, text, sweep_id=sweep_id, invocation=invocation, progress=not quiet)
        if dry_run:
            stages = runner.preflight()
            for s in stages:
                typer.echo(f"ok  stage {s.stage.name}: {s.stage.trainer} on {s.mixture_name} ({s.mixture_id})")
            return
        results = runner.run()
    if runner_is_main():
        print_results(results)


def runner_is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"

def sweep_cmd(
    sweep: Path = typer.Argument(..., help="sweep YAML: recipe × mixtures (or Dirichlet samples) × seeds"),
    parallel: Optional[int] = typer.Option(None, "--parallel", min=1, help="runs at once (processes)"),
    quiet: bool = typer.Option(False, "--quiet"),
    launcher: Optional[str] = typer.Option(None, "--launcher",
                                           help="local | ray | slurm: member jobs write result files that this "
                                                "process ingests; failed members are retried (README: scale-out)"),
    retries: int = typer.Option(1, "--retries", min=0, help="extra tries of a failed member (with --launcher)"),
) -> None:
    """Run a recipe across mixtures and seeds; each member is its own run row, tagged with the sweep id."""
    from mixlab.recipes.report import print_sweep
    from mixlab.recipes.sweep import run_sweep

    outcome = run_sweep(sweep, parallel=parallel, progress=not quiet, launcher=launcher, retries=retries)
    print_sweep(outcome["sweep_id"])
    if outcome["failures"]:
        raise MixlabError(
            f"sweep {outcome['sweep_id']}: {len(outcome['failures'])} member(s) failed: "
            + "; ".join(f"{k}: {v}" for k, v in outcome["failures"].items())
        )

def ladder_cmd(
    ladder: Path = typer.Argument(..., help="ladder YAML: rungs (presets) with promotion gates"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Scaling ladder: train mixtures at rung 1, promote those passing the gates against the baseline."""
    from mixlab.recipes.ladder import run_ladder
    from mixlab.recipes.report import print_ladder

    outcome = run_ladder(ladder, progress=not quiet)
    print_ladder(outcome["ladder_id"])


def plan_cmd(
    recipe: Optional[Path] = typer.Argument(None, help="recipe YAML (or a name in recipes/registry)"),
    gpus: str = typer.Option("8xH100", "--gpus", help="COUNTxNAME, e.g. 8xH100"),
    tokens: Optional[int] = typer.Option(None, "--tokens", min=1,
                                         help="tokens per GPU micro-batch (default: the recipe's last stage "
                                              "per_device_train_batch_size x max_length)"),
    activation_checkpointing: Optional[bool] = typer.Option(None, "--activation-checkpointing/--no-activation-checkpointing",
                                                            help="default: the recipe's fsdp.activation_checkpointing"),
    host_gib: float = typer.Option(256, "--host-gib", help="host RAM per GPU (offload)"),
    as_json: bool = typer.Option(False, "--json"),
    validate: bool = typer.Option(False, "--validate", help="compare the plan with the measured one-GPU peaks"),
) -> None:
    """Per-GPU memory (params, grads, optimizer, activations) of a recipe under FSDP2, with and without offload,
    and the minimum GPU count, computed from the model config."""
    import json

    from mixlab.model.info import resolve_config
    from mixlab.recipes.plan import format_plan, parse_gpus, plan, validate as validate_plan
    from mixlab.recipes.schema import load_recipe
    from mixlab.recipes.sweep import resolve_recipe_path

    if validate:
        rows = validate_plan()
        typer.echo(json.dumps(rows, indent=1) if as_json else "\n".join(
            f"{r['preset']} {r['tokens']} tok, {r['kernels']} on {r['gpu']}: measured {r['peak_gib']} GiB, "
            f"plan {r['plan_gib']} GiB ({r['error_pct']:+.1f} %)" for r in rows))
        return
    if recipe is None:
        raise MixlabError("give a recipe YAML (or --validate)")
    loaded, _ = load_recipe(resolve_recipe_path(str(recipe)))
    source = loaded.model.preset or loaded.model.path
    if source is None:
        raise MixlabError(f"recipe {loaded.name}: model: plan needs a preset or a local path")
    config, _ = resolve_config(source)
    n, gpu = parse_gpus(gpus)
    if tokens is None:
        args = loaded.stages[-1].args
        tokens = int(args.get("per_device_train_batch_size", 8)) * int(args.get("max_length", 1024))
    ac = loaded.fsdp.activation_checkpointing if activation_checkpointing is None else activation_checkpointing
    result = plan(config, source, gpus=n, gpu=gpu, tokens=tokens, activation_checkpointing=ac,
                  host_gib_per_gpu=host_gib)
    typer.echo(json.dumps(result.as_dict(), indent=1) if as_json else format_plan(result))


def consolidate_cmd(
    checkpoint: Path = typer.Argument(..., help="a sharded step checkpoint of `mixlab run --nproc N` (checkpoint-N/)"),
    out: Path = typer.Argument(..., help="output folder (official single-folder format)"),
) -> None:
    """Gather a sharded (FSDP2 / torch distributed checkpoint) step checkpoint into one official-format folder."""
    from mixlab.recipes.distributed import consolidate_checkpoint

    typer.echo(str(consolidate_checkpoint(checkpoint, out)))


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
    app.command("plan")(plan_cmd)
    app.command("consolidate")(consolidate_cmd)
    app.command("sweep")(sweep_cmd)
    app.command("ladder")(ladder_cmd)
    app.add_typer(optimise_app, name="optimise")

    @app.command("demo")
    def demo_cmd(
        base_steps: Optional[int] = typer.Option(None, "--base-steps", min=1,
                                                 help="shared-base SFT steps (default: demo-base.yaml)"),
        sft_steps: Optional[int] = typer.Option(None, "--sft-steps", min=1,
                                                help="per-mixture SFT steps (default: demo-sft.yaml)"),
        grpo_steps: Optional[int] = typer.Option(None, "--grpo-steps", min=1, help="GRPO steps (default: demo-grpo.yaml)"),
        eval_limit: Optional[int] = typer.Option(None, "--eval-limit", min=1,
                                                 help="held-out items per task (default: demo-sft.yaml)"),
        parallel: int = typer.Option(2, "--parallel", min=1, help="fine-tuning runs at once (processes)"),
        precision: Optional[str] = typer.Option(None, "--precision",
                                                help="auto, fp32 or bf16: override the recipes' precision "
                                                     "(auto = bf16 on a GPU, fp32 on CPU)"),
        quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
        preset: Optional[str] = typer.Option(None, "--preset", help="model preset of the shared base (default: demo)"),
        seed: Optional[int] = typer.Option(None, "--seed", help="seed of every run (default: the recipes' seed, 0)"),
        readme: Optional[Path] = typer.Option(None, "--readme",
                                              help="splice the result table into this file between its demo-table "
                                                   "markers (`make demo-readme` passes README.md)"),
        splice_from: Optional[Path] = typer.Option(None, "--splice-from",
                                                   help="only splice this earlier output (runs/demo-results.md) "
                                                        "into --readme; no run"),
    ) -> None:
        """The whole lab on a laptop CPU: build mixtures, train, fine-tune per mixture, GRPO, evaluate, compare.
        Same seed on the same machine kind, same numbers."""
        from mixlab.recipes.demo import main as demo_main

        if precision not in (None, "auto", "fp32", "bf16"):
            raise MixlabError(f"--precision {precision!r}: expected auto, fp32 or bf16")
        if readme is not None and not readme.is_file():
            raise MixlabError(f"--readme {readme}: no such file")
        if splice_from is not None:
            from mixlab.recipes.demo import splice_readme

            if readme is None or not splice_from.is_file():
                raise MixlabError("--splice-from FILE needs an existing FILE and --readme README")
            splice_readme(readme, splice_from.read_text())
            typer.echo(f"spliced {splice_from} into {readme}")
            return
        if os.environ.get("PYTHONHASHSEED") != "0":
            # String hashing (set order) is fixed only at interpreter start: run again with it fixed.
            options = {"--base-steps": base_steps, "--sft-steps": sft_steps, "--grpo-steps": grpo_steps,
                       "--eval-limit": eval_limit, "--parallel": parallel, "--precision": precision,
                       "--preset": preset, "--seed": seed, "--readme": readme}
            argv = [x for k, v in options.items() if v is not None for x in (k, str(v))] + (["--quiet"] * quiet)
            procs.exec_(procs.mixlab_args("demo", *argv), env_base={**os.environ, "PYTHONHASHSEED": "0"})
        code = demo_main(base_steps=base_steps, sft_steps=sft_steps, grpo_steps=grpo_steps, eval_limit=eval_limit,
                         parallel=parallel, precision=precision, quiet=quiet, preset=preset, seed=seed,
                         readme=readme)
        if code:
            raise typer.Exit(code)
