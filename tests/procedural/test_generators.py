"""Procedural generators: determinism, disjoint splits, level-1 size, references verify, wrong answers fail."""

from __future__ import annotations

import json
import re

import pytest

from mixlab.errors import MixlabError
from mixlab.evals.procedural import KINDS, LEVELS, generate, split_of, verify
from mixlab.evals.procedural import chat_format, code_tasks, math_problems
from mixlab.evals.procedural.constraints import CONSTRAINT_TYPES, check

_TOKEN = re.compile(r"\w+")


def _ngrams(text: str, n: int = 13) -> set[tuple[str, ...]]:
    toks = _TOKEN.findall(text.lower())
    return {tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)}


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_per_seed_and_seed_matters(kind):
    a = generate(kind, "train", 50, seed=3)
    assert a == generate(kind, "train", 50, seed=3)
    b = generate(kind, "train", 50, seed=4)
    assert [x["prompt"] for x in a] != [x["prompt"] for x in b]
    for item in a:
        assert set(item) == {"id", "kind", "level", "prompt", "response", "ground_truth", "verifier"}
        json.dumps(item["ground_truth"])  # JSON-serialisable
        assert item["kind"] == kind and item["level"] in LEVELS[kind]
    assert len({x["prompt"] for x in a}) == 50  # unique within a call


@pytest.mark.parametrize("kind", KINDS)
def test_splits_are_disjoint_in_problems_and_13gram_text(kind):
    train = generate(kind, "train", 1500, seed=0)
    heldout = generate(kind, "heldout", 300, seed=0)
    assert not {x["prompt"] for x in train} & {x["prompt"] for x in heldout}
    assert not {x["id"] for x in train} & {x["id"] for x in heldout}
    held_grams = set().union(*(_ngrams(x["prompt"]) for x in heldout))
    train_text = [x["prompt"] + "\n" + x["response"] for x in train]
    overlap = [g for t in train_text for g in _ngrams(t) if g in held_grams]
    assert overlap == []
    # Short held-out prompts (< 13 words) are matched whole by the gate: none may equal a train prompt.
    train_norm = {" ".join(_TOKEN.findall(x["prompt"].lower())) for x in train}
    assert not {" ".join(_TOKEN.findall(x["prompt"].lower())) for x in heldout} & train_norm


def test_split_hash_is_stable_and_about_twenty_percent():
    keys = [f"math|L1|add|{a}|{b}" for a in range(10, 100) for b in range(10, 100)]
    share = sum(split_of(k) == "heldout" for k in keys) / len(keys)
    assert 0.17 < share < 0.23
    assert split_of("math|L1|add|37|45") == split_of("math|L1|add|37|45")


def test_level1_math_is_short_two_digit_add_sub():
    items = generate("math", "train", 2000, level=1)
    assert max(len(x["prompt"]) for x in items) <= 25
    assert all(re.fullmatch(r"What is \d\d (plus|minus) \d\d\?", x["prompt"]) for x in items)
    for x in items:
        m = re.fullmatch(r"(\d\d)([+-])(\d\d)=(\d+)\. Answer: (\d+)", x["response"])
        assert m, x["response"]
        a, op, b, c, ans = m.groups()
        assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b)) == int(ans) == int(x["ground_truth"])


@pytest.mark.parametrize("level", [2, 3, 4])
def test_higher_math_levels_have_worked_steps_that_are_correct(level):
    for x in generate("math", "heldout", 100, level=level):
        steps = re.findall(r"(?<![\d*/])(\d+)([+\-*/])(\d+)=(\d+)", x["response"])
        assert len(steps) >= 2
        for a, op, b, c in steps:
            a, b, c = int(a), int(b), int(c)
            assert {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else None}[op] == c
            if op == "/":
                assert a % b == 0
        assert int(x["ground_truth"]) >= 0


def test_math_verify():
    item = generate("math", "heldout", 1, level=2)[0]
    gt = item["ground_truth"]
    assert verify(item, response=item["response"]) == 1.0
    assert verify(gt, "math", f"so the result is {gt}") == 1.0
    assert verify(gt, "math", f"Answer: {int(gt) + 1}") == 0.0
    assert verify(gt, "math", "no idea") == 0.0
    assert math_problems.extract_answer("1+2=3. Answer: 1,234") == "1234"


def test_code_references_pass_their_tests_and_wrong_code_fails():
    """Executes references + asserts in-process (our own template code); the sandbox path is tested below."""
    for x in generate("code", "train", 120, seed=1) + generate("code", "heldout", 60, seed=1):
        gt = x["ground_truth"]
        assert x["response"].startswith(f"def {gt['entry_point']}(")
        assert len(gt["tests"]) >= 3 and all(t.startswith(f"assert {gt['entry_point']}(") for t in gt["tests"])
        exec(x["response"] + "\n" + "\n".join(gt["tests"]), {})
    x = generate("code", "heldout", 1, level=1)[0]
    wrong = x["response"].replace("return ", "return 1 + ")
    with pytest.raises(AssertionError):
        exec(wrong + "\n" + "\n".join(x["ground_truth"]["tests"]), {})


def test_code_verify_runs_in_the_sandbox():
    pytest.importorskip("mixlab.evals.sandbox", reason="sandbox not landed yet")
    x = generate("code", "heldout", 1, level=2)[0]
    assert verify(x, response=x["response"]) == 1.0
    assert verify(x, response="```python\n" + x["response"] + "\n```") == 1.0
    assert verify(x["ground_truth"], "code", x["response"].replace("return ", "return 1 + ")) == 0.0
    assert verify(x["ground_truth"], "code", "def nothing(): pass") == 0.0


def test_chat_references_satisfy_constraints_and_violations_fail():
    items = generate("chat", "train", 400, seed=2) + generate("chat", "heldout", 200, seed=2)
    seen_types = {c["type"] for x in items for c in x["ground_truth"]}
    assert seen_types == set(CONSTRAINT_TYPES)
    for x in items:
        assert verify(x, response=x["response"]) == 1.0
    level1 = [x for x in items if x["level"] == 1]
    assert {c["type"] for x in level1 for c in x["ground_truth"]} == set(chat_format.LEVEL1_TYPES)
    assert all(len(x["ground_truth"]) == 1 and len(x["prompt"]) <= 70 for x in level1)
    assert all(len(x["ground_truth"]) == x["level"] for x in items)


@pytest.mark.parametrize(
    "constraint,good,bad",
    [
        ({"type": "lowercase"}, "all quiet here", "All quiet"),
        ({"type": "uppercase"}, "LOUD NOISES", "LOUD noises"),
        ({"type": "bullets", "n": 2}, "- a\n- b", "- a\n- b\n- c"),
        ({"type": "ends_with", "phrase": "Hope this helps."}, "Fine. Hope this helps.", "Hope this helps. Bye."),
        ({"type": "starts_with", "phrase": "Sure."}, "Sure. Yes.", "Yes. Sure."),
        ({"type": "include_word", "word": "swim"}, "They Swim fast", "They swimming fast"),
        ({"type": "forbid_word", "word": "swim"}, "They float", "they swim"),
        ({"type": "json"}, '```json\n{"answer": "x"}\n```', '{"answer": x}'),
        ({"type": "max_words", "n": 3}, "one two three", "one two three four"),
        ({"type": "min_words", "n": 3}, "one two three", "one two"),
        ({"type": "sentences", "n": 2}, "One here. Two here!", "Just one here."),
        ({"type": "no_commas"}, "a b c", "a, b"),
        ({"type": "quoted"}, '"quoted text"', 'quoted "text"'),
    ],
)
def test_each_constraint_checker(constraint, good, bad):
    assert check(constraint, good) is True
    assert check(constraint, bad) is False
    assert verify([constraint], "format", good) == 1.0 and verify([constraint], "format", bad) == 0.0


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(MixlabError, match="did you mean 'math'"):
        generate("maths", "train", 3)
    with pytest.raises(MixlabError, match="split"):
        generate("math", "test", 3)
    with pytest.raises(MixlabError, match="level"):
        generate("chat", "train", 3, level=9)
    with pytest.raises(MixlabError, match="verifier"):
        verify("1", "nope", "1")


def test_exhausting_a_small_split_fails_instead_of_looping():
    with pytest.raises(MixlabError, match="distinct problems"):
        generate("chat", "heldout", 100000, level=1)


def test_code_tasks_cover_every_template():
    names = {t.name for t in code_tasks.TEMPLATES}
    got = {x["ground_truth"]["entry_point"] for x in generate("code", "train", 600, seed=5)}
    assert {n for n in names if any(re.fullmatch(rf"{n}[\dm_]+", g) or g.startswith(n) for g in got)} >= names - {"count_char"}
