"""Launchers: `mixlab run --nproc N` (torchrun, FSDP2) and the sweep launchers `local | ray | slurm`.

Sweep members never write to DuckDB from where they run. Each member is one `mixlab run` process that writes to a
store file of its own (`runs/sweeps/<sweep_id>/results/<member>-try<k>.duckdb`), on whatever machine it lands;
when the member ends, the one sweep process (the single writer of the main store) ingests that file
(`Store.ingest_from`: run rows, train metrics, eval rows, in one transaction). A member whose process fails, is
killed or pre-empted is started again up to `retries` times (the last try's run row and a `failed` mark are what
remain); a member that never produced a result file is recorded as a failed run row, so no member is dropped.
"""

from __future__ import annotations

from pathlib import Path

from mixlab.errors import MixlabError
from mixlab.recipes.distributed import DistContext, launch
from mixlab.recipes.runner import RecipeRunner
from mixlab.recipes.schema import load_recipe


def launch_run(recipe: Path | None, *, resume: str | None, nproc: int, nnodes: int = 1, node_rank: int = 0,
               rdzv_endpoint: str | None = None, sweep_id: str | None = None, invocation: str | None = None,
               quiet: bool = False, dry_run: bool = False) -> int:
    """Preflight here (mixtures built once, bad input fails before any process starts), then torchrun the ranks,
    which all get the same invocation id (the checkpoint folders every rank writes its shards into)."""
    if nnodes > 1 and not (invocation or resume):
        raise MixlabError("--nnodes > 1: pass the same --invocation NAME on every node (it names the shared "
                          "checkpoint folder)")
    argv = ["run"]
    if resume:
        if recipe is not None:
            raise MixlabError("--resume RUN_ID takes the recipe from the run row; do not also pass a recipe")
        argv += ["--resume", resume]
    else:
        if recipe is None:
            raise MixlabError("give a recipe YAML, or --resume RUN_ID")
        loaded, text = load_recipe(recipe)
        runner = RecipeRunner(loaded, text, sweep_id=sweep_id, invocation=invocation, progress=not quiet)
        runner.dist = DistContext(world_size=nproc * nnodes, launcher=True)
        runner.preflight()
        if dry_run:
            return 0
        argv += [str(recipe), "--invocation", runner.invocation]
        if sweep_id:
            argv += ["--sweep-id", sweep_id]
    if quiet:
        argv.append("--quiet")
    return launch(nproc, argv, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint)
