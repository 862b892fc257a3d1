"""Fixtures for mixture tests: a temp folder for YAML files and small real data files."""

from __future__ import annotations

import gzip
import json
import textwrap
from pathlib import Path

import pytest


@pytest.fixture
def mixdir(tmp_path: Path) -> Path:
    d = tmp_path / "mixes"
    d.mkdir()
    return d


@pytest.fixture
def write_mix(mixdir: Path):
    def write(name: str, text: str, extra: str = "") -> Path:
        path = mixdir / f"{name}.yaml"
        path.write_text(textwrap.dedent(text).lstrip() + extra)
        return path

    return write


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def local_data(tmp_path: Path) -> Path:
    """A small data root with alpaca / sharegpt / gsm8k / code / math / preference files in several formats."""
    root = tmp_path / "data"
    alpaca = [{"instruction": f"Name a colour number {i} for the painting of the old barn", "input": "",
               "output": f"Colour {i} would be a deep shade of red with hints of orange {i}."} for i in range(40)]
    _jsonl(root / "alpaca" / "part-0.jsonl", alpaca[:20])
    _jsonl(root / "alpaca" / "part-1.jsonl", alpaca[20:])
    (root / "alpaca_list.json").write_text(json.dumps(alpaca[:10]))
    with gzip.open(root / "alpaca.jsonl.gz", "wt") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in alpaca[:5]))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(alpaca[:7]), root / "alpaca.parquet")
    sharegpt = [{"id": f"conv{i}", "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": f"What is {i} plus {i}?"},
        {"from": "gpt", "value": f"It is {2 * i}."},
        {"from": "human", "value": "Thanks!"},
        {"from": "gpt", "value": "You are welcome."}]} for i in range(12)]
    (root / "sharegpt.json").write_text(json.dumps(sharegpt))
    prefs = [{"conversations": [{"from": "human", "value": f"Say hello number {i}"}],
              "chosen": {"from": "gpt", "value": f"Hello {i}!"}, "rejected": {"from": "gpt", "value": "No."}}
             for i in range(8)]
    (root / "prefs.json").write_text(json.dumps(prefs))
    gsm = [{"question": f"Tom has {i + 3} apples and eats 2. How many are left?",
            "answer": f"Tom has {i + 3}-2=<<{i + 3}-2={i + 1}>>{i + 1} apples left.\n#### {i + 1}"} for i in range(30)]
    _jsonl(root / "gsm" / "train.jsonl", gsm)
    math_rows = [{"problem": f"Compute {i}^2.", "solution": f"We have {i}^2 = \\boxed{{{i * i}}}."} for i in range(10)]
    _jsonl(root / "math.jsonl", math_rows)
    mbpp = [{"task_id": 900 + i, "text": f"Write a function add_{i}(x) that adds {i} to x.",
             "code": f"def add_{i}(x):\n    return x + {i}", "test_list": [f"assert add_{i}(1) == {1 + i}"],
             "test_setup_code": ""} for i in range(6)]
    _jsonl(root / "mbpp.jsonl", mbpp)
    humaneval = [{"task_id": "HumanEval/x", "prompt": "def inc(x):\n    \"\"\"Return x + 1.\"\"\"\n",
                  "canonical_solution": "    return x + 1\n", "test": "def check(f):\n    assert f(1) == 2\n",
                  "entry_point": "inc"}]
    _jsonl(root / "humaneval.jsonl", humaneval)
    custom = [{"q": f"Translate word {i}", "a": f"Word {i} translated.", "good": f"Good {i}", "bad": "Bad",
               "truth": {"x": i}} for i in range(10)]
    _jsonl(root / "custom.jsonl", custom)
    return root
