"""Judge templates, verdict parsing and the judgement cache key."""

from __future__ import annotations

import pytest

from mixlab.errors import MixlabError
from mixlab.evals.judges.llm import JudgeRequest, LLMJudge
from mixlab.evals.judges.parse import outcome_for, parse_pairwise, parse_rating
from mixlab.evals.judges.rubric import RubricJudge
from mixlab.evals.judges.templates import JudgeTemplate, get_template, single_template


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Solid answer. Grade: [[7]]", 7.0),
        ("[[3]] at first, but on reflection [[8.5]]", 8.5),
        ("Rating: [9]", 9.0),
        ("I'd say [[7/10]]", 7.0),
        ("Score: 6", 6.0),
        ("[[11]]", None),  # off the scale
        ("[[0]]", None),
        ("no verdict here", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_rating(text, expected):
    assert parse_rating(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A is clearly better. [[A>>B]]", "A>>B"),
        ("[[ B > A ]]", "B>A"),
        ("tie [[A=B]]", "A=B"),
        ("[[A<B]]", "B>A"),
        ("first [[A>B]] then I changed my mind: [[B>>A]]", "B>>A"),
        ("[B>A]", "B>A"),
        ("A is better", None),
        ("[[C]]", None),
    ],
)
def test_parse_pairwise(text, expected):
    assert parse_pairwise(text) == expected


def test_outcomes_follow_the_models_position():
    assert outcome_for("A>B", "A") == 1.0 and outcome_for("A>B", "B") == 0.0
    assert outcome_for("B>>A", "B") == 1.0 and outcome_for("A=B", "B") == 0.5
    assert outcome_for(None, "A") is None


def test_templates_render_what_the_judge_needs():
    single = single_template(multi_turn=False, with_reference=False).render(["What is 2+2?"], ["4"])
    assert single[0]["role"] == "system" and "[[" in single[1]["content"]
    assert "What is 2+2?" in single[1]["content"] and "<assistant_answer>\n4\n" in single[1]["content"]
    assert "reference" not in single[1]["content"].lower()
    ref = single_template(multi_turn=True, with_reference=True).render(
        ["Q1", "Q2"], ["A1", "A2"], reference=["R1", "R2"]
    )[1]["content"]
    assert "ONLY the assistant's final turn" in ref and "R2" in ref and "R1" not in ref
    assert ref.index("Q1") < ref.index("A1") < ref.index("Q2") < ref.index("A2")
    pair = get_template("pairwise").render(["Prompt"], ["first"], answers_b=["second"])[1]["content"]
    assert "<answer_A>\nfirst\n</answer_A>" in pair and "<answer_B>\nsecond\n</answer_B>" in pair
    with pytest.raises(MixlabError, match="needs a reference"):
        get_template("single-ref").render(["q"], ["a"])
    with pytest.raises(MixlabError, match="did you mean 'pairwise'"):
        get_template("pairwse")


def test_cache_key_depends_on_judge_template_version_prompt_and_answer(llama_model, chat_tokenizer):
    from mixlab.evals.backends import get_backend

    backend = get_backend("torch", llama_model, chat_tokenizer)
    judge = LLMJudge(backend, "local:a")
    base = JudgeRequest(get_template("single"), ["q"], ["a"])
    key = judge.cache_key(base)
    assert key == judge.cache_key(JudgeRequest(get_template("single"), ["q"], ["a"]))
    assert key != judge.cache_key(JudgeRequest(get_template("single"), ["q"], ["b"]))
    assert key != judge.cache_key(JudgeRequest(get_template("single"), ["q2"], ["a"]))
    assert key != LLMJudge(backend, "local:b").cache_key(base)
    assert key != judge.cache_key(JudgeRequest(JudgeTemplate("single", 2, "single"), ["q"], ["a"]))
    # Swapping A and B is a different game.
    ab = JudgeRequest(get_template("pairwise"), ["q"], ["x"], answers_b=["y"])
    ba = JudgeRequest(get_template("pairwise"), ["q"], ["y"], answers_b=["x"])
    assert judge.cache_key(ab) != judge.cache_key(ba)


def test_rubric_judge_uses_the_ifeval_and_procedural_checkers():
    judge = RubricJudge()
    ifeval = {"instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"], "kwargs": [{}, {}]}
    good = judge.grade_rubric(ifeval, "all lowercase and no commas here")
    bad = judge.grade_rubric(ifeval, "Mixed Case, with a comma")
    assert good.score == 1.0 and good.verdict == "2/2"
    assert bad.score == 0.0 and "FAIL change_case:english_lowercase" in bad.raw
    procedural = [{"type": "no_commas"}, {"type": "include_word", "word": "banana"}]
    half = judge.grade_rubric(procedural, "I like apples, truly")
    assert half.verdict == "0/2"
    assert judge.grade_rubric(procedural, "a banana a day").score == 1.0
    with pytest.raises(MixlabError, match="rubric"):
        judge.grade_rubric("be nice", "ok")
