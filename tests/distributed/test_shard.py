"""`shard_model` in torchrun CPU processes against the unsharded model on the same global batch: fp32, activation
checkpointing and CPU offload agree to float rounding; bf16 parameters keep the KDA blocks as fp32 groups; the
router bias, updated from the all-reduced expert load, is bit-identical in every mode."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mixlab import procs

WORKER = Path(__file__).with_name("shard_worker.py")


def _run(tmp_path: Path, mode: str, nproc: int) -> dict:
    out = tmp_path / f"{mode}-{nproc}.json"
    done = procs.run(["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(WORKER), mode,
                      str(out)], env_base={**os.environ, "OMP_NUM_THREADS": "1"},
                     capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.dist
@pytest.mark.parametrize("mode,nproc", [("fp32", 2), ("ac", 2), ("offload", 2), ("fp32", 4)])
def test_sharded_matches_unsharded(tmp_path, mode, nproc):
    r = _run(tmp_path, mode, nproc)
    assert r["losses"] == pytest.approx(r["ref_losses"], rel=1e-5)
    assert r["max_param_diff"] < 1e-5
    assert r["max_bias_diff"] == 0.0 and r["bias_moved"] > 0


@pytest.mark.dist
def test_bf16_parameters_keep_kda_in_fp32_groups(tmp_path):
    r = _run(tmp_path, "bf16", 2)
    assert r["kda_fp32_groups"] == 3  # the tiny preset's three KDA layers
    assert r["losses"] == pytest.approx(r["ref_losses"], rel=1e-3)  # bf16 compute against the fp32 model
    assert r["max_bias_diff"] == 0.0
