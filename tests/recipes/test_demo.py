"""`mixlab demo`: a shortened run on the tiny preset, twice, gives identical numbers (losses, metrics, weights);
its markdown table names the machine and splices into a README between the markers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mixlab import procs
from mixlab.recipes.demo import README_END, README_START, machine_name, results_markdown, splice_readme
from mixlab.store import Store

SHORT = ["--preset", "tiny", "--base-steps", "2", "--sft-steps", "2", "--grpo-steps", "1", "--eval-limit", "4",
         "--quiet"]


def _demo(runs: Path, *extra: str) -> dict:
    env = {**procs.env(), "MIXLAB_RUNS": str(runs), "MIXLAB_DB": str(runs / "mixlab.duckdb")}
    env.pop("PYTHONHASHSEED", None)  # the demo must fix it itself
    proc = procs.run(procs.mixlab_args("demo", *SHORT, *extra), env_base=env, capture_output=True, text=True,
                     timeout=1500)
    assert proc.returncode in (0, 3), proc.stdout[-3000:] + proc.stderr[-3000:]  # 3: trade-off not shown (tiny)
    summary = json.loads((runs / "demo-summary.json").read_text())
    store = Store(runs / "mixlab.duckdb")
    numbers = {}
    for row in summary["rows"]:
        ckpt = Path(store.get_run(row["run_id"])["checkpoint_path"])
        weights = hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
        numbers[f"{row['mixture']}/{row['trainer']}"] = (row["loss"], row["steps"], row["metrics"], weights)
    return {"numbers": numbers, "table": (runs / "demo-results.md").read_text()}


@pytest.mark.slow
@pytest.mark.timeout(3600)  # ~35 s a run on an idle 2-core box (2026-12-05), several minutes on a loaded one
def test_short_demo_twice_gives_identical_numbers(tmp_path):
    first = _demo(tmp_path / "a")
    second = _demo(tmp_path / "b")
    assert len(first["numbers"]) == 5  # four SFT mixtures + GRPO after the balanced one
    assert first["numbers"] == second["numbers"]
    assert machine_name() in first["table"]


def test_table_names_machine_bolds_winners_and_splices(tmp_path):
    rows = [{"mixture": "demo-math-heavy", "trainer": "sft",
             "metrics": {"proc-math-l1": (0.3, 0.2, 0.4, 300, "accuracy")}},
            {"mixture": "demo-chat-heavy", "trainer": "sft",
             "metrics": {"proc-math-l1": (0.1, 0.05, 0.15, 300, "accuracy")}},
            {"mixture": "demo-rl", "trainer": "grpo", "metrics": {}}]
    verdict = {"holds": True, "lines": ["trade-off holds: x", "proc-math-l1: y"]}
    block = results_markdown(rows, ["proc-math-l1"], verdict, wall_s=12.3, n_items=300, seed=0, preset="demo")
    assert machine_name() in block and "12 s wall" in block
    assert "| demo-math-heavy | sft | **0.300 [0.200, 0.400]** |" in block
    assert "| demo-chat-heavy | sft | 0.100 [0.050, 0.150] |" in block
    assert "| demo-rl (after balanced) | grpo | - |" in block
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{README_START}\nold table\n{README_END}\nafter\n")
    splice_readme(readme, block)
    splice_readme(readme, block)  # idempotent
    text = readme.read_text()
    assert "old table" not in text and text.count("**0.300") == 1
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{README_END}\nafter\n")
    readme.write_text("no markers\n")
    with pytest.raises(Exception, match="demo-table markers"):
        splice_readme(readme, block)
