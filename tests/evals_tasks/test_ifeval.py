"""IFEval: every instruction checker on hand-made positive and negative answers, loose variants, the metrics,
the real dataset (every instruction id has a checker), and junk outputs."""

from __future__ import annotations

import collections

import pytest

from mixlab.errors import MixlabError
from mixlab.evals import ifeval_instructions as ifi
from mixlab.evals.tasks.base import EvalItem, get_task

from .junk import JUNK_OUTPUTS

LONG_EN = "This is a plain English sentence about the weather and the sea. " * 3

# (instruction id, kwargs, a response that follows it, a response that does not)
CASES = [
    ("keywords:existence", {"keywords": ["ocean", "blue"]}, "The Ocean is BLUE today.", "The ocean is green."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 3, "relation": "at least"}, "cat cat Cat", "cat cat"),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"}, "one cat", "cat and cat"),
    ("keywords:forbidden_words", {"forbidden_words": ["bad", "ugly"]}, "A badge is fine.", "That is Bad."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"}, "zzZ", "zz"),
    ("keywords:letter_frequency", {"letter": "a", "let_frequency": 2, "let_relation": "less than"}, "bob", "banana"),
    ("keywords:key_sentences", {"key_sentences": ["For now, this is fine."], "num_sentences": 1},
     "Hello there. For now, this is fine.", "Hello there."),
    ("language:response_language", {"language": "fr"},
     "Bonjour, je suis très content de vous voir aujourd'hui. Il fait beau et nous allons nous promener.",
     LONG_EN),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "One sentence. Two sentences.", "One. Two. Three. Four."),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"},
     "Dr. Smith arrived. He sat down! Was he tired?", "Dr. Smith arrived at 3.5 p.m. today. He sat down."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "One.\n***\nTwo.\n***\nThree.",
     "One.\n***\n\n***\nThree."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "one two three four five",
     "one two three four"),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "one two", "a b c d e f"),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "First we go.\n\n\"Then, we stop.", "First we go.\n\nAfter that we stop."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address].",
     "Dear [name], at home."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\n\nP.S. see you", "Hi. PS see you"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP.P.S. later", "Hi.\nP.S. later"),
    ("detectable_content:rephrase_paragraph", {"original_paragraph": "the cat sat on the mat", "low": 2, "high": 4},
     "the dog sat on a rug", "the cat sat on the mat"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", "* one\n* two\n- three"),
    ("detectable_format:constrained_response", {}, "My answer is maybe.", "Maybe."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**",
     "*one* and ** **"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nfoo\nSection 2\nbar", "Section 1\nfoo"),
    ("detectable_format:json_format", {}, '```json\n{"a": [1, 2]}\n```', '{"a": [1, 2]'),
    ("detectable_format:title", {}, "<<Poem of Joy>>\nla la", "<< >> Poem of Joy"),
    ("detectable_format:rephrase", {"original_message": "I *like* tea."}, "I *love* tea.", "You *like* tea."),
    ("combination:two_responses", {}, "Answer one.\n******\nAnswer two.", "Answer one.\n******\nAnswer one."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."}, "write a poem. Roses are red.",
     "Sure! Write a poem. Roses are red."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, 'Done. Any other questions?"',
     "Any other questions? Yes."),
    ("startend:quotation", {}, '  "wrapped"  ', '"not wrapped'),
    ("multi-turn:constrained_start", {"starter": "My answer is"}, "My answer is 4.", "I think 4."),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "The U.S. is BIG and WELL-KNOWN.", "The US is big."),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"},
     "Only ONE shout.", "SO MANY SHOUTS."),
    ("change_case:english_capital", {}, LONG_EN.upper(), LONG_EN),
    ("change_case:english_lowercase", {}, LONG_EN.lower(), LONG_EN),
    ("punctuation:no_comma", {}, "No commas here.", "One, two."),
]


@pytest.mark.parametrize("instruction_id,kwargs,good,bad", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_checker_positive_and_negative(instruction_id, kwargs, good, bad):
    assert ifi.check_instruction(instruction_id, kwargs, good) is True
    assert ifi.check_instruction(instruction_id, kwargs, bad) is False


def test_every_checker_has_hand_cases():
    assert {c[0] for c in CASES} == set(ifi.CHECKERS)


def test_language_checks_are_deterministic_and_count_undetectable_as_followed():
    text = "Ciao, come stai? Oggi il tempo è bellissimo e andiamo al mare."
    verdicts = {ifi.check_instruction("language:response_language", {"language": "it"}, text) for _ in range(5)}
    assert verdicts == {True}
    assert ifi.check_instruction("language:response_language", {"language": "de"}, "12345 !!!") is True
    assert ifi.check_instruction("change_case:english_lowercase", {}, "bonjour, je suis très content de vous "
                                 "voir aujourd'hui et nous allons nous promener.") is False


def test_sentence_and_word_utilities():
    assert ifi.split_sentences("Dr. Smith went home. He met Mr. J. K. Rowling at 3.5 p.m. today! Was it fun?") == [
        "Dr. Smith went home.", "He met Mr. J. K. Rowling at 3.5 p.m. today!", "Was it fun?"]
    assert ifi.count_sentences("Yes... it was. Then we left") == 2
    assert ifi.count_sentences("") == 0
    assert ifi.count_words("Hello, world - it's 2024!") == 5  # \w+ runs, as IFEval counts
    # nltk.word_tokenize, as the reference counts capital words: punctuation is a token (never upper-case).
    assert ifi.word_tokens("U.S. is WELL-KNOWN, END.") == ["U.S.", "is", "WELL-KNOWN", ",", "END", "."]


def test_empty_response_follows_nothing():
    assert ifi.check_instruction("punctuation:no_comma", {}, "   ") is False


def test_loose_variants_and_strict_vs_loose():
    assert ifi.loose_variants("a*\nb\nc*") == ["a*\nb\nc*", "b\nc*", "a*\nb", "b", "a\nb\nc", "b\nc", "a\nb", "b"]
    # A chatty preamble line breaks strict "wrap in quotes" but loose (first line removed) accepts it.
    strict, loose = ifi.follows(["startend:quotation"], [{}], 'Sure, here it is:\n"All wrapped."')
    assert strict == [False] and loose == [True]
    # Markdown bold breaks an exact end phrase strictly; loose removes the asterisks.
    strict, loose = ifi.follows(["startend:end_checker"], [{"end_phrase": "Is there anything else I can help with?"}],
                                "Done. **Is there anything else I can help with?**")
    assert strict == [False] and loose == [True]


def _item(ids, kwargs, prompt="p"):
    return EvalItem("t", [{"role": "user", "content": prompt}],
                    reference={"instruction_id_list": ids, "kwargs": kwargs}, meta={})


def test_task_metrics_and_instruction_level_ratio():
    task = get_task("ifeval")
    a = task.score(_item(["punctuation:no_comma", "startend:quotation"], [{}, {}]), '"no commas"')
    b = task.score(_item(["punctuation:no_comma"], [{}]), "one, two")
    c = task.score(_item(["punctuation:no_comma", "startend:quotation", "detectable_format:title"], [{}, {}, {}]),
                   "plain text")
    assert a.values == {"prompt_level_strict_acc": 1.0, "inst_level_strict_acc": 1.0,
                        "prompt_level_loose_acc": 1.0, "inst_level_loose_acc": 1.0,
                        "inst_level_strict_acc/punctuation": 1.0, "inst_level_strict_acc/startend": 1.0}
    assert b.values["prompt_level_strict_acc"] == 0.0 and c.values["inst_level_strict_acc"] == pytest.approx(1 / 3)
    agg = task.aggregate([a, b, c])
    assert agg["prompt_level_strict_acc"][0] == pytest.approx(1 / 3)
    # Instruction level is followed / total = (2 + 0 + 1) / 6, not the mean of per-prompt fractions (0.444).
    assert agg["inst_level_strict_acc"][0] == pytest.approx(3 / 6)
    low, high = agg["inst_level_strict_acc"][1:3]
    assert 0.0 <= low <= 0.5 <= high <= 1.0
    # Per-group: punctuation followed in a and c (2/3), startend in a only (1/2), detectable_format 0/1.
    assert agg["inst_level_strict_acc/punctuation"][0] == pytest.approx(2 / 3)
    assert agg["inst_level_strict_acc/startend"][0] == pytest.approx(1 / 2)
    assert agg["inst_level_strict_acc/detectable_format"][0] == 0.0
    assert list(agg)[:4] == list(task.metrics)


def test_scorer_survives_junk():
    task = get_task("ifeval")
    ids = sorted(ifi.CHECKERS)
    kwargs = [dict(kw) for kw in (next(c[1] for c in CASES if c[0] == i) for i in ids)]
    item = _item(ids, kwargs)
    for junk in [*JUNK_OUTPUTS, None, 3.5]:
        score = task.score(item, junk)
        assert set(task.metrics) <= set(score.values)
        assert all(0.0 <= v <= 1.0 for v in score.values.values())


def test_missing_data_error(tmp_path):
    with pytest.raises(MixlabError, match=r"ifeval.*ifeval/input_data.jsonl.*google/IFEval"):
        get_task("ifeval").load(tmp_path)


def test_real_dataset_loads_and_every_instruction_has_a_checker(data_root):
    items = get_task("ifeval").load(data_root)
    assert len(items) == 541
    counts = collections.Counter(i for item in items for i in item.reference["instruction_id_list"])
    assert sum(counts.values()) == 834 and len(counts) == 25
    assert set(counts) <= set(ifi.CHECKERS)
    # Every instruction instance builds and runs on a real-looking answer without error.
    task = get_task("ifeval")
    for item in items:
        score = task.score(item, "Here is my answer.\n\n" + item.prompt_text)
        assert "error" not in score.details, (item.item_id, score.details)
