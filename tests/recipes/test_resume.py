"""Failure handling: SIGKILL mid-training then `mixlab run --resume RUN_ID` ends with the same final loss as an
uninterrupted run (same seed, same data order); an interrupt marks the run failed and keeps its checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mixlab import procs
from mixlab.store import Store

from .helpers import REPO, mixlab, write_recipe

STEPS = 8
ARGS = {"max_steps": STEPS, "per_device_train_batch_size": 4, "max_length": 96, "logging_steps": 1,
        "learning_rate": 2e-3, "lr_scheduler_type": "cosine"}


def _recipe(tmp_path: Path, name: str) -> Path:
    return write_recipe(tmp_path, name, [{"name": "sft", "trainer": "sft", "mixture": "demo-math-heavy",
                                          "args": ARGS}], checkpoint_every=2)


def _losses(store: Store, run_id: str) -> dict[int, float]:
    rows = store.query("SELECT step, value FROM train_metrics WHERE run_id = ? AND name = 'loss' ORDER BY step",
                       [run_id])
    return {r["step"]: r["value"] for r in rows}


def _only_run(store: Store) -> dict:
    rows = store.query("SELECT * FROM runs WHERE kind = 'train'")
    assert len(rows) == 1
    return rows[0]


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, isolated_runs):
    # Uninterrupted reference (in this process, its own database).
    from mixlab.recipes.runner import RecipeRunner
    from mixlab.recipes.schema import load_recipe

    ref_store = Store(tmp_path / "ref.duckdb")
    recipe, text = load_recipe(_recipe(tmp_path, "ref"))
    RecipeRunner(recipe, text, store=ref_store, progress=False).run()
    reference = _losses(ref_store, _only_run(ref_store)["run_id"])
    assert sorted(reference) == list(range(1, STEPS + 1))

    # The same recipe, killed with SIGKILL once a mid-run checkpoint is on disk.
    recipe = _recipe(tmp_path, "killed")
    child = procs.popen(procs.mixlab_args("run", str(recipe), "--quiet"), cwd=REPO,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoints = Path(os.environ["MIXLAB_RUNS"]) / "checkpoints"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        done = list(checkpoints.glob("killed-*/checkpoint-4/trainer_state.json"))
        if done or child.poll() is not None:
            break
        time.sleep(0.05)
    assert child.poll() is None, "the run ended before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.wait()
    store = Store()
    killed = _only_run(store)
    assert killed["status"] == "running"  # nothing could mark it: that is what SIGKILL means
    assert not (checkpoints / killed["run_id"] / "final").exists()

    proc = mixlab("run", "--resume", killed["run_id"], "--quiet", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    resumed = _only_run(store)
    assert resumed["status"] == "completed" and resumed["run_id"] == killed["run_id"]
    losses = _losses(store, killed["run_id"])
    assert sorted(losses) == list(range(1, STEPS + 1)), "each step logged once (re-trained steps replaced)"
    assert losses[STEPS] == pytest.approx(reference[STEPS], rel=1e-5, abs=1e-6)
    assert Path(resumed["checkpoint_path"]).name == "final"


@pytest.mark.slow
def test_interrupt_marks_failed_keeps_checkpoints_and_resumes(tmp_path):
    recipe = _recipe(tmp_path, "interrupted")
    child = procs.popen(procs.mixlab_args("run", str(recipe), "--quiet"), cwd=REPO,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoints = Path(os.environ["MIXLAB_RUNS"]) / "checkpoints"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not list(checkpoints.glob("*/checkpoint-2/trainer_state.json")):
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=300)
    assert child.returncode != 0
    store = Store()
    run = _only_run(store)
    assert run["status"] == "failed" and "interrupted" in run["error"]
    assert list((checkpoints / run["run_id"]).glob("checkpoint-*"))
    proc = mixlab("run", "--resume", run["run_id"], "--quiet", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _only_run(store)["status"] == "completed"
