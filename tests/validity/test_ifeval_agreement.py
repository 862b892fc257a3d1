"""mixlab's IFEval checkers against the reference implementation (lm-eval's copy of Google's
instruction_following_eval), on 600+ responses covering all 25 instruction types, adversarial ones included.

Runs where the reference is installed (`pip install -e '.[validity]'`), skips otherwise. Every disagreement must be
one of DOCUMENTED (differences on purpose, explained in evals/ifeval_instructions.py); everything else must agree,
strict and loose. A summary of per-instruction agreement is written to the test log.
"""

from __future__ import annotations

from collections import Counter

import pytest

from mixlab.evals import ifeval_instructions as ifi

from . import ifeval_reference as ref
from .ifeval_cases import REGEX_KEYWORDS, cases

pytestmark = pytest.mark.skipif(ref.available() is not None, reason=str(ref.available()))

# (instruction id, predicate over kwargs) of differences on purpose; see the module docstring of ifeval_instructions.
DOCUMENTED = {
    # The reference matches keywords as regular expressions; mixlab matches them literally.
    "regex keyword": lambda case: case["note"].startswith("regex keyword"),
    # The reference replaces an nth_paragraph beyond num_paragraphs by a random one; mixlab fails the instruction.
    "random kwargs": lambda case: case["id"] == "length_constraints:nth_paragraph_first_word"
    and case["kwargs"]["nth_paragraph"] > case["kwargs"]["num_paragraphs"],
}
REFERENCE_INSTRUCTIONS = 25


def _documented(case) -> str | None:
    return next((name for name, rule in DOCUMENTED.items() if rule(case)), None)


def _reference_loose(case) -> bool:
    r = case["response"].split("\n")
    variants = [case["response"], case["response"].replace("*", ""), "\n".join(r[1:]).strip(),
                "\n".join(r[:-1]).strip(), "\n".join(r[1:-1]).strip()]
    variants += [v.replace("*", "") for v in variants[2:]]
    return any(v.strip() and ref.reference_follows(case["id"], case["kwargs"], v) for v in variants)


def test_agreement_with_the_reference_checkers():
    all_cases = cases()
    ids = {c["id"] for c in all_cases}
    assert len(all_cases) >= 500
    assert ids == set(ref.registry()) and len(ids) == REFERENCE_INSTRUCTIONS  # every reference instruction covered
    total, agree, documented, unexplained = Counter(), Counter(), Counter(), []
    for case in all_cases:
        ours_strict = ifi.check_instruction(case["id"], case["kwargs"], case["response"])
        theirs_strict = ref.reference_follows(case["id"], case["kwargs"], case["response"])
        ours_loose = ifi.follows([case["id"]], [case["kwargs"]], case["response"])[1][0]
        theirs_loose = _reference_loose(case)
        total[case["id"]] += 1
        if ours_strict == theirs_strict and ours_loose == theirs_loose:
            agree[case["id"]] += 1
        elif _documented(case):
            documented[_documented(case)] += 1
        else:
            unexplained.append((case["id"], case["kwargs"], case["response"][:80], ours_strict, theirs_strict,
                                ours_loose, theirs_loose))
    for iid in sorted(total):
        print(f"{iid:48s} {agree[iid]:3d}/{total[iid]:3d}")
    print(f"documented differences: {dict(documented)}")
    assert not unexplained, unexplained
    for iid in total:
        explained = sum(1 for c in all_cases if c["id"] == iid and _documented(c))
        assert agree[iid] / (total[iid] - explained) >= 0.99, iid
    # Each documented difference shows up ("c++" agrees: Python >= 3.11 reads "++" as a possessive quantifier).
    assert documented == Counter({"regex keyword": len(REGEX_KEYWORDS) - 1, "random kwargs": 1})


def test_documented_differences_are_what_mixlab_does():
    # Literal keywords: "a.c" is not in "abc" for mixlab; the reference would say it is.
    assert not ifi.check_instruction("keywords:existence", {"keywords": ["a.c"]}, "The abc song.")
    assert ref.reference_follows("keywords:existence", {"keywords": ["a.c"]}, "The abc song.")
    assert not ifi.check_instruction("length_constraints:nth_paragraph_first_word",
                                     {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "a"}, "A.\n\nB.")
