"""Launchers: `mixlab run --nproc N` (torchrun, FSDP2) and the sweep launchers `local | ray | slurm`.

Sweep members never write to DuckDB from where they run. Each member is one `mixlab run` process that writes to a
store file of its own (`runs/sweeps/<sweep_id>/results/<member>-try<k>.duckdb`), on whatever machine it lands;
when the member ends, the one sweep process (the single writer of the main store) ingests that file
(`Store.ingest_from`: run rows, train metrics, eval rows, in one transaction). A member whose process fails, is
killed or pre-empted is started again up to `retries` times (the last try's run row and a `failed` mark are what
remain); a member that never produced a result file is recorded as a failed run row, so no member is dropped.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mixlab import procs
from mixlab.errors import MixlabError
from mixlab.recipes.distributed import DistContext, launch
from mixlab.recipes.runner import RecipeRunner
from mixlab.recipes.schema import load_recipe
from mixlab.store import RunRecord, Store

LAUNCHERS = ("local", "ray", "slurm")


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
        stages = runner.preflight()
        if dry_run:
            for st in stages:
                print(f"ok  stage {st.stage.name}: {st.stage.trainer} on {st.mixture_name} ({st.mixture_id}), "
                      f"{nproc * nnodes} processes (FSDP2)")
            return 0
        argv += [str(recipe), "--invocation", runner.invocation]
        if sweep_id:
            argv += ["--sweep-id", sweep_id]
    if quiet:
        argv.append("--quiet")
    code = launch(nproc, argv, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint)
    if code != 0 and node_rank == 0:
        _fail_orphaned_rows(resume or argv[argv.index("--invocation") + 1], code)
    return code


def _fail_orphaned_rows(run_or_invocation: str, code: int) -> None:
    """torchrun stops every rank when one dies; rank 0 killed by its signal cannot mark its run. Rows still
    `running` after torchrun exited are marked failed here, so no run is left looking alive."""
    store = Store()
    row = store.get_run(run_or_invocation)
    invocation = json.loads(row["config"] or "{}").get("invocation") if row else run_or_invocation
    for r in store.runs_of_invocation(invocation or run_or_invocation):
        if r["status"] == "running":
            store.fail_run(r["run_id"], f"torchrun exited with code {code} (a rank failed or was killed); "
                                        f"continue with `mixlab run --resume {r['run_id']} --nproc N`")


# ---------------------------------------------------------------------------------------------------------------
# sweep members: one job each, on this machine (local), a Ray cluster (ray) or Slurm through submitit (slurm)
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class MemberJob:
    """What a worker needs to run one sweep member; plain data, so Ray and submitit can ship it anywhere that
    sees the same filesystem (recipe YAML, mixtures, checkpoints and result file are paths)."""

    member: str
    recipe_path: str
    invocation: str
    sweep_id: str
    result_db: str  # the member's own DuckDB file; the sweep process ingests it into the main store
    log: str
    retries: int
    env: dict[str, str]


@dataclass
class MemberOutcome:
    member: str
    returncode: int
    tries: int
    result_db: str
    log: str
    host: str
    error: str | None = None


def _started(job: MemberJob) -> bool:
    """Whether an earlier try of this member already has a run row in its result file (then: resume it)."""
    if not Path(job.result_db).is_file():
        return False
    return bool(Store(job.result_db).runs_of_invocation(job.invocation))


def run_member(job: MemberJob) -> MemberOutcome:
    """Run one member with `mixlab run` writing to its own result file; a failed or killed try is tried again,
    resuming from its newest checkpoint, up to `retries` more times. Runs on the worker (any launcher)."""
    env = dict(os.environ, **job.env, MIXLAB_DB=job.result_db)
    code, tries = 1, 0
    Path(job.log).parent.mkdir(parents=True, exist_ok=True)
    with open(job.log, "a") as log:
        for tries in range(1, job.retries + 2):
            if _started(job):
                argv = ["run", "--resume", job.invocation, "--quiet"]
            else:
                argv = ["run", job.recipe_path, "--sweep-id", job.sweep_id, "--invocation", job.invocation,
                        "--quiet"]
            log.write(f"[sweep] try {tries}: mixlab {' '.join(argv)}\n")
            log.flush()
            code = procs.run(procs.mixlab_args(*argv), env_base=env, stdout=log, stderr=subprocess.STDOUT).returncode
            if code == 0:
                break
    return MemberOutcome(member=job.member, returncode=code, tries=tries, result_db=job.result_db, log=job.log,
                         host=socket.gethostname())


def _local(jobs: list[MemberJob], parallel: int, **_: Any) -> list[MemberOutcome | BaseException]:
    def call(job: MemberJob) -> MemberOutcome | BaseException:
        try:
            return run_member(job)
        except Exception as exc:  # noqa: BLE001 - recorded as the member's failure
            return exc

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(call, jobs))


def _ray(jobs: list[MemberJob], parallel: int, *, folder: Path, **_: Any) -> list[MemberOutcome | BaseException]:
    """Ray tasks on the cluster at RAY_ADDRESS (else a local one that ray.init starts). A task whose worker dies
    (node lost, pre-empted) is rescheduled by Ray (`max_retries`); the member's own retries resume its run."""
    try:
        import ray
    except ImportError:
        raise MixlabError("--launcher ray needs ray: pip install 'mixlab[scale]'") from None
    if not ray.is_initialized():
        init_ray(folder)
    remote = ray.remote(num_cpus=1, max_retries=2)(run_member)
    refs = [remote.remote(job) for job in jobs]
    out: list[MemberOutcome | BaseException] = []
    for ref in refs:
        try:
            out.append(ray.get(ref))
        except Exception as exc:  # noqa: BLE001 - a task Ray gave up on
            out.append(exc)
    return out


def init_ray(folder: Path, **kwargs: Any) -> None:
    """`ray.init` (RAY_ADDRESS, else a new local cluster) from `folder`: Ray puts the driver's working directory on
    every worker's sys.path, and the repo root there would shadow PyPI packages (see mixlab/procs.py)."""
    import ray

    cwd = os.getcwd()
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)
    try:
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=False, include_dashboard=False,
                 **kwargs)
    finally:
        os.chdir(cwd)


def _slurm(jobs: list[MemberJob], parallel: int, *, folder: Path, **_: Any) -> list[MemberOutcome | BaseException]:
    """One Slurm job per member through submitit (`MIXLAB_SLURM_CLUSTER=local` runs them as local processes, as
    the tests do; `MIXLAB_SLURM_PARTITION`, `MIXLAB_SLURM_GPUS`, `MIXLAB_SLURM_TIMEOUT_MIN` set the request)."""
    try:
        import submitit
    except ImportError:
        raise MixlabError("--launcher slurm needs submitit: pip install 'mixlab[scale]'") from None
    executor = submitit.AutoExecutor(folder=str(folder), cluster=os.environ.get("MIXLAB_SLURM_CLUSTER") or None)
    params: dict[str, Any] = {"timeout_min": int(os.environ.get("MIXLAB_SLURM_TIMEOUT_MIN", "240"))}
    if executor.cluster == "slurm":
        params.update(slurm_array_parallelism=parallel, gpus_per_node=int(os.environ.get("MIXLAB_SLURM_GPUS", "1")))
        if os.environ.get("MIXLAB_SLURM_PARTITION"):
            params["slurm_partition"] = os.environ["MIXLAB_SLURM_PARTITION"]
    executor.update_parameters(**params)
    submitted = executor.map_array(run_member, jobs)
    out: list[MemberOutcome | BaseException] = []
    for job in submitted:
        try:
            out.append(job.result())
        except Exception as exc:  # noqa: BLE001 - a job Slurm killed or that raised
            out.append(exc)
    return out


_BACKENDS: dict[str, Callable[..., list[MemberOutcome | BaseException]]] = {
    "local": _local, "ray": _ray, "slurm": _slurm,
}


def launch_members(launcher: str, jobs: list[MemberJob], *, parallel: int, store: Store, folder: Path,
                   progress: bool = True) -> dict[str, str]:
    """Run every member job on `launcher`, then ingest each member's result file into `store` (this process is
    the only writer of the main store). Returns {member: error} for the members that failed; every one of those
    has a failed run row (its own, or one recorded here when the worker never wrote any)."""
    if launcher not in _BACKENDS:
        raise MixlabError(f"--launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    t0 = time.perf_counter()
    outcomes = _BACKENDS[launcher](jobs, parallel, folder=folder)
    failures: dict[str, str] = {}
    for job, outcome in zip(jobs, outcomes):
        if isinstance(outcome, BaseException):
            error = f"{launcher} job failed: {type(outcome).__name__}: {(str(outcome).strip().splitlines() or [''])[-1]}"
        elif outcome.returncode != 0:
            error = f"failed after {outcome.tries} tries (exit {outcome.returncode}, log {outcome.log})"
        else:
            error = None
        if Path(job.result_db).is_file():
            store.ingest_store(job.result_db)
        rows = store.runs_of_invocation(job.invocation)
        if error is not None:
            failures[job.member] = error
            for row in rows:  # a worker killed mid-run left its row running; a failed row keeps its own error
                if row["status"] == "running":
                    store.fail_run(row["run_id"], error)
            if not rows:  # the worker never got as far as a run row: record one, so the member is not lost
                store.start_run(RunRecord(run_id=f"{job.invocation}-failed", kind="train", name=job.member,
                                          status="running", sweep_id=job.sweep_id,
                                          config={"invocation": job.invocation, "launcher": launcher}))
                store.fail_run(f"{job.invocation}-failed", error)
        elif not rows or any(r["status"] != "completed" for r in rows):
            failures[job.member] = f"exit 0 but its result file has no completed run ({job.result_db})"
        if progress:
            print(f"[sweep] {job.member}: {'done' if job.member not in failures else 'FAILED'}"
                  f" ({launcher}, log {job.log})", flush=True)
    if progress:
        print(f"[sweep] {len(jobs)} member(s) on {launcher} in {time.perf_counter() - t0:.0f}s", flush=True)
    return failures


def member_jobs(members: list[tuple[str, Path, str]], sweep_id: str, folder: Path, retries: int,
                threads: int) -> list[MemberJob]:
    """(member, recipe path, invocation) -> jobs with their result files under `folder/results/`."""
    env = {k: os.environ[k] for k in ("MIXLAB_RUNS", "MIXLAB_DATA", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                      "MIXLAB_THREADS") if k in os.environ}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONSAFEPATH="1")
    return [MemberJob(member=m, recipe_path=str(Path(p).resolve()), invocation=inv, sweep_id=sweep_id,
                      result_db=str((folder / "results" / f"{m}.duckdb").resolve()),
                      log=str((folder / f"{m}.log").resolve()), retries=retries, env=env)
            for m, p, inv in members]
