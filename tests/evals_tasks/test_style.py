"""Style statistics: each number on answers built to have (or lack) the property."""

from __future__ import annotations

import pytest

from mixlab.evals.style import brackets_balanced, is_refusal, repeated_ngram_ratio, style_stats, style_summary

from .junk import JUNK_OUTPUTS


def test_length_counts():
    s = style_stats("Hello world.\n\nSecond line here.")
    assert s["chars"] == len("Hello world.\n\nSecond line here.")
    assert s["words"] == 5 and s["lines"] == 2 and s["empty"] == 0.0
    assert style_stats("   ")["empty"] == 1.0


def test_repetition():
    assert repeated_ngram_ratio("a b c d e f".split()) == 0.0
    loop = ("I am a bot. " * 20).lower().replace(".", "").split()
    assert repeated_ngram_ratio(loop) > 0.9
    s = style_stats("same line\nsame line\nsame line\nother")
    assert s["repetition_line"] == pytest.approx(0.5)
    assert style_stats("The quick brown fox jumps over the lazy dog.")["repetition_3gram"] == 0.0


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that.",
    "I cannot assist with this request.",
    "As an AI language model, I do not have opinions.",
    "I must decline to answer.",
    "Sorry, I am afraid I won't be able to do that.",
])
def test_refusals_detected(text):
    assert is_refusal(text) and style_stats(text)["refusal"] == 1.0


@pytest.mark.parametrize("text", [
    "Sure! Here is a recipe for bread.",
    "The function cannot accept negative numbers, so we validate the input first.",
    "Here is the answer. " + "x " * 400 + "I cannot help but notice the pattern.",  # refusal phrase far from start
])
def test_non_refusals(text):
    assert not is_refusal(text)


def test_markdown_density():
    plain = style_stats("Just a sentence of prose with nine words in it.")
    md = style_stats("# Title\n\n- one\n- two\n1. three\n\n**bold** text\n\n| a | b |\n|---|---|\n")
    assert plain["markdown_density"] == 0.0
    assert md["md_headers"] == 1 and md["md_list_items"] == 3 and md["md_bold"] == 1 and md["md_table_rows"] == 2
    assert md["markdown_density"] > 50
    # Code inside fences is not markdown structure.
    code = style_stats("```python\n# comment\n- x\n```")
    assert code["md_headers"] == 0 and code["md_list_items"] == 0 and code["md_code_blocks"] == 1


def test_broken_format():
    good = style_stats("Here:\n```python\ndef f(x):\n    return [x, {'a': (1, 2)}]\n```\nDone (really).")
    assert good["broken_format"] == 0.0
    unclosed = style_stats("Here:\n```python\ndef f(x):\n    return x")
    assert unclosed["unclosed_code_fence"] == 1.0 and unclosed["broken_format"] == 1.0
    brackets = style_stats("```python\nprint((1, 2)\n```")
    assert brackets["unbalanced_brackets"] == 1.0 and brackets["unclosed_code_fence"] == 0.0
    truncated = style_stats('{"name": "mixlab", "scores": [1, 2')
    assert truncated["broken_json"] == 1.0 and truncated["broken_format"] == 1.0
    assert style_stats('```json\n{"a": 1}\n```')["broken_json"] == 0.0
    # List markers and emoticons are not unbalanced brackets.
    assert brackets_balanced("1) first\n2) second :)")
    assert not brackets_balanced("f(x]")


def test_summary_and_junk():
    summary = style_summary(["I'm sorry, but I can't help with that.", "# Hi\n- a\n- b"])
    assert summary["n"] == 2 and summary["refusal"] == 0.5
    assert style_summary([]) == {"n": 0.0}
    for junk in [*JUNK_OUTPUTS, None, 42]:
        stats = style_stats(junk)
        assert all(isinstance(v, float) for v in stats.values())
