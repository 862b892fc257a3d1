"""GSM8K and MATH-500: extraction, normalisation, math-verify off the main thread, reference checks on real data."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from mixlab.errors import MixlabError
from mixlab.evals.check import check_task
from mixlab.evals.tasks.base import EvalItem, get_task
from mixlab.evals.tasks.math import (
    extract_flexible,
    extract_strict,
    hendrycks_equal,
    last_boxed,
    math_equal,
    normalize_number,
)

from .junk import JUNK_OUTPUTS


@pytest.mark.parametrize(
    "raw,norm",
    [("1,234", "1234"), ("$18", "18"), ("18.", "18"), ("18.0", "18"), ("18.00", "18"), ("-3.50", "-3.5"),
     ("007", "7"), ("0.5", "0.5"), (".5", "0.5"), ("-0", "0"), ("$1,000.00.", "1000"), ("abc", "abc")],
)
def test_normalize_number(raw, norm):
    assert normalize_number(raw) == norm


def test_strict_and_flexible_extraction():
    assert extract_strict("so 9*2=18\n#### 18") == "18"
    assert extract_strict("#### $1,234.00") == "1234"
    assert extract_strict("####18") == "18"
    assert extract_strict("The answer is 18.") is None  # no marker: strict fails, flexible succeeds
    assert extract_flexible("The answer is 18.") == "18"
    assert extract_flexible("She pays $1,200 and then $35.50 in total.") == "35.5"
    assert extract_flexible("first #### 5 then 7") == "7"  # flexible = last number
    assert extract_strict("first #### 5 then #### 7") == "5"  # strict = first marker (OpenAI's rule)
    assert extract_flexible("no digits here") is None
    assert extract_flexible("-4 degrees") == "-4"


def _gsm_item(gold: str) -> EvalItem:
    return EvalItem("x", [{"role": "user", "content": "q"}], reference=gold,
                    meta={"question": "q", "solution": f"#### {gold}"})


def test_gsm8k_scores_strict_and_flexible_separately():
    task = get_task("gsm8k")
    s = task.score(_gsm_item("18"), "Janet sells 9 eggs at $2 each, so she makes $18.")
    assert s.values == {"exact_match_strict": 0.0, "exact_match_flexible": 1.0}
    s = task.score(_gsm_item("18"), "9*2 = 18\n#### 18")
    assert s.values == {"exact_match_strict": 1.0, "exact_match_flexible": 1.0}
    assert s.details["extracted_strict"] == "18"
    s = task.score(_gsm_item("18"), "#### 17")
    assert s.values == {"exact_match_strict": 0.0, "exact_match_flexible": 0.0}


def test_last_boxed():
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}") == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert last_boxed("so \\boxed 5 done") == "5"
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("\\boxed{unclosed {") is None
    assert last_boxed("no box") is None


@pytest.mark.parametrize(
    "gold,pred,equal",
    [("\\frac{1}{2}", "0.5", True), ("\\dfrac{9}{7}", "\\frac{9}{7}", True), ("\\frac{9}{7}", "9/7", True),
     ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True), ("10", "10.0", True),
     ("\\sqrt{2}", "2^{1/2}", True), ("3", "4", False), ("\\frac{1}{2}", "\\frac{1}{3}", False), ("5", "", False)],
)
def test_math_equal(gold, pred, equal):
    assert math_equal(gold, pred) is equal


@pytest.mark.parametrize(
    "gold,pred,equal",
    [("\\frac{1}{2}", "\\dfrac12", True), ("\\frac{1}{2}", "0.5", True), ("\\frac{1}{2}", "1/2", True),
     ("5", "5 \\text{ cm}", True), ("3", "k = 3", True), ("\\sqrt{2}", "\\sqrt2", True),
     ("(1,2)", "\\left( 1, 2 \\right)", True), ("90", "90^\\circ", True), ("2", "3", False),
     ("\\frac{1}{2}", "0.50", False), ("2", None, False)],
)
def test_hendrycks_string_equivalence(gold, pred, equal):
    assert hendrycks_equal(gold, pred) is equal


def test_math_verify_is_more_lenient_than_string_match():
    item = EvalItem("m", [{"role": "user", "content": "p"}], reference="\\frac{1}{2}", meta={})
    values = get_task("math500").score(item, "so \\boxed{0.50}").values
    assert values["accuracy"] == 1.0 and values["accuracy_hendrycks"] == 0.0


def test_math500_scorer_runs_in_worker_threads():
    """math-verify's own timeouts are signal-based (main thread only); ours must work from any thread."""
    task = get_task("math500")
    item = EvalItem("m", [{"role": "user", "content": "p"}], reference="\\frac{1}{2}", meta={"solution": ""})
    outputs = ["so \\boxed{\\frac{1}{2}}", "\\boxed{0.5}", "\\boxed{1/3}", "no answer"] * 4
    with ThreadPoolExecutor(max_workers=4) as pool:
        scores = list(pool.map(lambda o: task.score(item, o).values["accuracy"], outputs))
    assert scores == [1.0, 1.0, 0.0, 0.0] * 4
    results = []
    worker = threading.Thread(target=lambda: results.append(task.score(item, "\\boxed{\\tfrac12}").values))
    worker.start()
    worker.join(30)
    assert results and results[0]["accuracy"] == 1.0


@pytest.mark.parametrize("task_name", ["gsm8k", "math500"])
def test_scorers_survive_junk(task_name):
    task = get_task(task_name)
    gold = "18" if task_name == "gsm8k" else "\\frac{1}{2}"
    item = EvalItem("j", [{"role": "user", "content": "q"}], reference=gold,
                    meta={"question": "q", "solution": "", "problem": "q"})
    for junk in [*JUNK_OUTPUTS, None, 12345]:
        score = task.score(item, junk)
        assert set(score.values) == set(task.metrics)
        assert all(0.0 <= v <= 1.0 for v in score.values.values())


@pytest.mark.parametrize("task_name,path,hub", [("gsm8k", "gsm8k/test.jsonl", "openai/gsm8k"),
                                                ("math500", "math500/test.jsonl", "HuggingFaceH4/MATH-500")])
def test_missing_data_names_task_path_and_hub(tmp_path, task_name, path, hub):
    with pytest.raises(MixlabError) as err:
        get_task(task_name).load(tmp_path)
    message = str(err.value)
    assert task_name in message and str(tmp_path / path) in message and hub in message


def test_real_data_loads(data_root):
    gsm = get_task("gsm8k").load(data_root)
    assert len(gsm) == 1319 and gsm[0].reference == "18"
    math = get_task("math500").load(data_root)
    assert len(math) == 500 and math[0].meta["subject"] == "Precalculus"
    assert "\\boxed{}" in math[0].messages[0]["content"] and "####" in gsm[0].messages[0]["content"]
    assert len(get_task("gsm8k").load(data_root, limit=7)) == 7


@pytest.mark.parametrize("task_name", ["gsm8k", "math500"])
def test_check_subset(bench_slices, task_name):
    own = check_task(task_name, data_root=bench_slices, limit=60)
    assert own.n == 60
    if task_name == "math500":  # per-subject and per-level breakdowns, each over its own items
        assert {"accuracy/subject:Algebra", "accuracy/level:5"} <= set(own.metrics)
    assert all(summary.mean >= 0.99 for summary in own.metrics.values()), own.failures
    shuffled = check_task(task_name, data_root=bench_slices, limit=60, shuffle=True)
    assert shuffled.primary <= 0.05, shuffled.failures
    # Every shuffled match is a donor with the same gold answer: the scorer accepts nothing else.
    assert round(shuffled.primary * shuffled.n) == shuffled.identical_gold_pairs


@pytest.mark.slow
@pytest.mark.parametrize("task_name,n", [("gsm8k", 1319), ("math500", 500)])
def test_check_full_set(data_root, task_name, n):
    own = check_task(task_name, data_root=data_root)
    assert own.n == n and own.primary >= 0.99, own.failures
    shuffled = check_task(task_name, data_root=data_root, shuffle=True)
    assert shuffled.primary <= 0.03, shuffled.failures
    assert round(shuffled.primary * shuffled.n) == shuffled.identical_gold_pairs


def test_runaway_sympy_is_killed_and_the_pool_recovers():
    """9^{9^{9^{9^9}}} keeps sympy inside one C call (no thread or signal can stop it): the worker is killed."""
    start = time.monotonic()
    assert math_equal("\\frac{1}{2}", "9^{9^{9^{9^{9}}}}", timeout_s=1.0) is False
    assert time.monotonic() - start < 20
    assert math_equal("\\frac{1}{2}", "0.5") is True
