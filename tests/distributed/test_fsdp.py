"""`mixlab run --nproc N` on CPU processes (gloo): FSDP2 under TRL's SFT trainer matches one process on the same
global batch, the router bias follows the same trajectory, sharded checkpoints resume identically, and the
consolidated checkpoint reloads with the same logits."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from mixlab import procs
from mixlab.model.loading import load_model_and_tokenizer
from mixlab.recipes.distributed import consolidate_checkpoint
from mixlab.store import Store

from ..recipes.helpers import REPO, mixlab, write_recipe

STEPS = 20
GLOBAL_BATCH = 8
RATE = 1e-2  # router-bias update rate: non-zero, so the bias moves every step
LOSS_RTOL = 2e-3  # measured agreement is ~1e-6; fp32 sums reduce in another order across ranks


def _recipe(tmp_path: Path, name: str, nproc: int) -> Path:
    args = {"max_steps": STEPS, "per_device_train_batch_size": GLOBAL_BATCH // nproc, "max_length": 64,
            "logging_steps": 1, "learning_rate": 2e-3, "lr_scheduler_type": "cosine"}
    return write_recipe(tmp_path, name, [{"name": "sft", "trainer": "sft", "mixture": "demo-math-heavy",
                                          "args": args}], checkpoint_every=10, router_bias_update_rate=RATE)


def _env(tmp_path: Path) -> dict[str, str]:
    return {"MIXLAB_RUNS": str(tmp_path / "runs"), "MIXLAB_DB": str(tmp_path / "db.duckdb"),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _train(tmp_path: Path, name: str, nproc: int) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    recipe = _recipe(tmp_path, name, nproc)
    extra = ["--nproc", str(nproc)] if nproc > 1 else []
    done = mixlab("run", str(recipe), "--quiet", *extra, env=_env(tmp_path), timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    store = Store(tmp_path / "db.duckdb")
    row = store.query("SELECT * FROM runs WHERE kind = 'train' AND recipe_name = ?", [name])
    assert len(row) == 1 and row[0]["status"] == "completed"
    return {"row": row[0], "store": store, "metrics": _metrics(store, row[0]["run_id"]),
            "dir": Path(json.loads(row[0]["config"])["output_dir"])}


def _metrics(store: Store, run_id: str) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for r in store.query("SELECT name, step, value FROM train_metrics WHERE run_id = ?", [run_id]):
        out.setdefault(r["name"], {})[r["step"]] = r["value"]
    return out


def _logits(folder: Path) -> torch.Tensor:
    model = load_model_and_tokenizer(folder, None, device="cpu", dtype=torch.float32).model.eval()
    x = torch.arange(48).reshape(2, 24) * 7 % 1000
    with torch.no_grad():
        return model(x).logits


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same recipe and global batch in one process and in two (module-scoped: the dist tests reuse them)."""
    tmp = tmp_path_factory.mktemp("fsdp")
    return {"one": _train(tmp / "one", "g1", 1), "two": _train(tmp / "two", "g2", 2), "tmp": tmp}


@pytest.mark.timeout(1800)  # two training runs (one of them torchrun) in the module fixture
def test_two_processes_match_one_on_the_same_global_batch(runs):
    one, two = runs["one"], runs["two"]
    l1, l2 = one["metrics"]["loss"], two["metrics"]["loss"]
    assert sorted(l1) == sorted(l2) == list(range(1, STEPS + 1))
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], rel=LOSS_RTOL), step
    assert l1[STEPS] < l1[1]  # it trained
    # Router bias: the same trajectory (drift after every step) and the same final bias, since the expert load is
    # all-reduced before each update (sign updates of integer counts: equal, not merely close).
    drift = [k for k in one["metrics"] if k.startswith("router_bias_drift_l2/")]
    assert drift
    for name in drift:
        assert two["metrics"][name] == pytest.approx(one["metrics"][name], abs=1e-6), name
        assert max(one["metrics"][name].values()) > 0
    w1, w2 = load_file(one["dir"] / "final" / "model.safetensors"), load_file(two["dir"] / "final" / "model.safetensors")
    biases = [k for k in w1 if "e_score_correction_bias" in k]
    assert biases
    for k in biases:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=0)
    # The consolidated final checkpoint (gathered from the shards at the end) and an offline consolidation of the
    # last sharded step checkpoint are the same weights, and close to the one-process model.
    offline = consolidate_checkpoint(two["dir"] / f"checkpoint-{STEPS}", runs["tmp"] / "consolidated")
    final2 = _logits(two["dir"] / "final")
    torch.testing.assert_close(_logits(offline), final2, rtol=0, atol=0)
    torch.testing.assert_close(final2, _logits(one["dir"] / "final"), rtol=1e-3, atol=1e-3)


@pytest.mark.dist
@pytest.mark.timeout(1800)
def test_resume_from_a_sharded_checkpoint_continues_identically(runs):
    two = runs["two"]
    run_id, out = two["row"]["run_id"], two["dir"]
    reference = _logits(out / "final")
    # A run killed between step 10 and 20: its newest sharded checkpoint is checkpoint-10, its row is failed.
    shutil.rmtree(out / f"checkpoint-{STEPS}")
    shutil.rmtree(out / "final")
    two["store"].fail_run(run_id, "killed (test)")
    env = _env(runs["tmp"] / "two")
    done = mixlab("run", "--resume", run_id, "--nproc", "2", "--quiet", env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    resumed = _metrics(two["store"], run_id)
    for step in range(11, STEPS + 1):
        assert resumed["loss"][step] == pytest.approx(two["metrics"]["loss"][step], rel=1e-5), step
    assert two["store"].get_run(run_id)["status"] == "completed"
    # Same losses; the weights agree to float32 rounding (measured max |logit diff| 4e-5 after 10 resumed steps).
    torch.testing.assert_close(_logits(out / "final"), reference, rtol=1e-3, atol=2e-4)


@pytest.mark.dist
@pytest.mark.timeout(1800)
def test_four_processes_match_one(runs, tmp_path):
    one, four = runs["one"], _train(tmp_path, "g4", 4)
    for step, loss in one["metrics"]["loss"].items():
        assert four["metrics"]["loss"][step] == pytest.approx(loss, rel=LOSS_RTOL), step
    for name in (k for k in one["metrics"] if k.startswith("router_bias_drift_l2/")):
        assert four["metrics"][name] == pytest.approx(one["metrics"][name], abs=1e-6), name


@pytest.mark.dist
@pytest.mark.timeout(1800)
def test_a_killed_rank_fails_the_run_and_resume_finishes_it(tmp_path):
    """Pre-emption of one rank: torchrun stops the others, the launcher marks the run failed (rank 0 cannot), and
    `--resume --nproc 2` continues from the newest sharded checkpoint to the end."""
    recipe = _recipe(tmp_path, "gk", 2)
    env = {**os.environ, **_env(tmp_path)}
    proc = procs.popen(procs.mixlab_args("run", str(recipe), "--quiet", "--nproc", "2"), env_base=env, cwd=REPO,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900
    while not list(tmp_path.glob("runs/checkpoints/*/checkpoint-10/trainer_state.json")):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.5)
    ranks = [c for c in psutil.Process(proc.pid).children(recursive=True)
             if c.environ().get("LOCAL_RANK") == "1"]
    assert ranks
    os.kill(ranks[0].pid, signal.SIGKILL)
    assert proc.wait(timeout=600) != 0
    store = Store(tmp_path / "db.duckdb")
    (row,) = store.query("SELECT * FROM runs WHERE kind = 'train'")
    assert row["status"] == "failed" and "torchrun exited" in row["error"]
    done = mixlab("run", "--resume", row["run_id"], "--nproc", "2", "--quiet", env=_env(tmp_path), timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert store.get_run(row["run_id"])["status"] == "completed"
    assert sorted(_metrics(store, row["run_id"])["loss"]) == list(range(1, STEPS + 1))
