"""Expert parallelism on CPU processes: the tiny model's experts split over 2 and 4 ranks (all_to_all dispatch)
give the one-process model's loss and gradients on the same global batch, over two SGD steps."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mixlab import procs

WORKER = Path(__file__).with_name("ep_worker.py")


@pytest.mark.dist
@pytest.mark.parametrize("nproc", [2, 4])
def test_expert_parallel_matches_one_process(tmp_path, nproc):
    out = tmp_path / "ep.json"
    done = procs.run(["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(WORKER),
                      str(out)], env_base={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                     timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["losses"] == pytest.approx(r["ref_losses"], rel=1e-5)
    assert r["max_grad_diff"] < 1e-5 and r["max_expert_grad_diff"] < 1e-5
