"""HumanEval, MBPP and sanitized MBPP: real data (skipped when absent), real sandbox executions.

`eval check`-style proofs: each task's canonical solutions pass (>= 99 %), and the same solutions shuffled
across items score ~0. A 40-item subset runs by default; the full sets are `slow`.
"""

from __future__ import annotations

import pytest

from mixlab.errors import MixlabError
from mixlab.evals.check import check_task
from mixlab.evals.tasks.base import get_task, task_names
from mixlab.evals.tasks.code import extract_code, strip_main_guard

CODE_TASKS = ("humaneval", "mbpp", "mbpp-sanitized")
EXPECTED_SIZES = {"humaneval": 164, "mbpp": 500, "mbpp-sanitized": 257}


def test_tasks_are_registered():
    assert set(CODE_TASKS) <= set(task_names())
    for name in CODE_TASKS:
        task = get_task(name)
        assert task.metrics[0] == "pass@1" and task.category == "leaderboard"


# ------------------------------------------------------------------------------------------ extraction


def test_extract_fenced_blocks_prefers_the_one_defining_the_entry_point():
    answer = (
        "Here is an example of usage:\n```python\nprint(add(1, 2))\n```\n"
        "And the solution:\n```py\nimport math\n\ndef add(a, b):\n    return a + b\n```\nHope it helps."
    )
    assert extract_code(answer, "add") == "import math\n\ndef add(a, b):\n    return a + b"
    assert extract_code(answer) == "print(add(1, 2))"


def test_extract_handles_bare_unterminated_and_begin_done():
    assert extract_code("```\ndef f():\n    return 1\n```", "f") == "def f():\n    return 1"
    assert extract_code("```python\ndef f():\n    return 1", "f") == "def f():\n    return 1"
    assert extract_code("[BEGIN]\ndef f():\n    return 1\n[DONE] trailing", "f").strip() == "def f():\n    return 1"
    assert extract_code("```python\r\ndef f():\r\n    return 1\r\n```", "f") == "def f():\n    return 1"


def test_extract_raw_answer_trims_prose_to_what_compiles():
    answer = "Sure! The function is below.\ndef f(x):\n    return x * 2\nThis doubles x, as asked."
    assert extract_code(answer, "f") == "def f(x):\n    return x * 2"


def test_strip_main_guard_removes_demo_code_only():
    code = "def f():\n    return 1\n\nif __name__ == '__main__':\n    print(input())\n\nX = 2\n"
    stripped = strip_main_guard(code)
    assert "input()" not in stripped and "def f()" in stripped and "X = 2" in stripped
    assert strip_main_guard("def broken(:") == "def broken(:"
    demo = ("import sys\nsys.setrecursionlimit(5000)\ndef f(x):\n    assert x\n    return x\n"
            "assert f(1) == 2\nprint(f(3))\nf(4)\nimport unittest\nunittest.main()\nY = f(5)\n")
    kept = strip_main_guard(demo, "f")
    assert kept == ("import sys\nsys.setrecursionlimit(5000)\ndef f(x):\n    assert x\n    return x\n"
                    "import unittest\nY = f(5)\n")


# ------------------------------------------------------------------------------- scoring with real data


@pytest.fixture(scope="module")
def loaded(bench_slices):
    return {name: get_task(name).load(bench_slices) for name in CODE_TASKS}


def test_item_counts_and_prompts(data_root):
    loaded = {name: get_task(name).load(data_root) for name in CODE_TASKS}
    for name, items in loaded.items():
        assert len(items) == EXPECTED_SIZES[name], name
        assert len({it.item_id for it in items}) == len(items)
        assert all(it.messages[0]["role"] == "user" and "```python" in it.messages[0]["content"]
                   for it in items[:5])
    mbpp_prompt = loaded["mbpp"][0].messages[0]["content"]
    assert mbpp_prompt.startswith("You are an expert Python programmer, and here is your task:")
    assert "Your code should pass these tests:" in mbpp_prompt and "assert remove_Occ" in mbpp_prompt
    assert loaded["mbpp"][0].item_id == "mbpp/11" and loaded["mbpp"][-1].item_id == "mbpp/510"


@pytest.mark.parametrize("name", CODE_TASKS)
def test_eval_check_subset(name, bench_slices):
    refs = check_task(name, data_root=bench_slices, limit=40)
    assert refs.n == 40 and refs.primary >= 0.99, refs.failures
    shuffled = check_task(name, data_root=bench_slices, limit=40, shuffle=True)
    assert shuffled.primary <= 0.05, shuffled.failures


@pytest.mark.slow
@pytest.mark.parametrize("name", CODE_TASKS)
def test_eval_check_full(name, data_root):
    refs = check_task(name, data_root=data_root)
    assert refs.n == EXPECTED_SIZES[name] and refs.primary >= 0.99, refs.failures
    shuffled = check_task(name, data_root=data_root, shuffle=True)
    assert shuffled.primary <= 0.02, shuffled.failures


def test_humaneval_completion_style_and_helpers(loaded):
    task = get_task("humaneval")
    item = loaded["humaneval"][0]
    body_only = item.reference["canonical"]  # raw continuation of the prompt, as a base model writes it
    assert task.score(item, body_only).values["pass@1"] == 1.0
    dedented = "\n".join(line[4:] for line in body_only.split("\n"))  # a body the model forgot to indent
    assert task.score(item, dedented).values["pass@1"] == 1.0
    # HumanEval/38's prompt defines the helper encode_cyclic; an answer with only decode_cyclic still passes.
    cyclic = next(it for it in loaded["humaneval"] if it.reference["entry_point"] == "decode_cyclic")
    answer = "```python\ndef decode_cyclic(s: str):\n    return encode_cyclic(encode_cyclic(s))\n```"
    assert task.score(cyclic, answer).values["pass@1"] == 1.0


def test_cheats_and_malformed_outputs_score_zero_without_raising(loaded):
    for name in CODE_TASKS:
        task = get_task(name)
        task.timeout_s = 2.0  # the infinite loop below need not cost the default 10 s
        item = loaded[name][1]
        reference = task.reference_output(item)
        outputs = [
            None, "", "```", "```python\n```", "\x00\x01binary\xff", "def f(:\n", "🙂" * 1000, "x" * 1_000_000,
            "import os\nos._exit(0)", "import sys\nsys.exit(0)", "```python\nimport os\nos._exit(0)\n```",
            reference.replace("```python", "```python\nimport sys; sys.exit(0)"),
            "while True:\n    pass",
        ]
        scores = task.score_batch([item] * len(outputs), outputs)
        assert [s.values["pass@1"] for s in scores] == [0.0] * len(outputs), (name, [s.details for s in scores])
        assert task.score(item, reference).values["pass@1"] == 1.0


def test_unbiased_pass_at_k_over_samples(loaded):
    task = get_task("mbpp-sanitized")
    item = loaded["mbpp-sanitized"][0]
    good, bad = task.reference_output(item), "```python\ndef nothing():\n    pass\n```"
    score = task.score_samples(item, [good, bad, good, bad])
    assert score.values["pass@1"] == pytest.approx(0.5)
    assert score.values["pass@2"] if "pass@2" in score.values else True
    assert "pass@5" not in score.values  # k > n is undefined
    three = task.score_samples(item, [good, bad, bad, bad, bad, bad], ks=(1, 2, 5))
    assert three.values["pass@1"] == pytest.approx(1 / 6)
    assert three.values["pass@2"] == pytest.approx(1 - 10 / 15)  # 1 - C(5,2)/C(6,2)
    assert three.values["pass@5"] == pytest.approx(1 - 1 / 6)  # 1 - C(5,5)/C(6,5)
    assert three.details["n"] == 6 and three.details["c"] == 1


def test_missing_data_names_task_and_path(tmp_path):
    for name, rel in (("humaneval", "humaneval/HumanEval.jsonl.gz"), ("mbpp", "mbpp/mbpp.jsonl"),
                      ("mbpp-sanitized", "mbpp/sanitized-mbpp.json")):
        with pytest.raises(MixlabError) as info:
            get_task(name).load(tmp_path)
        message = str(info.value)
        assert f"task {name}" in message and str(tmp_path / rel) in message
        assert "openai/openai_humaneval" in message or "google-research-datasets/mbpp" in message
