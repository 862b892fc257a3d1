"""Arithmetic word problems with worked steps and a final answer, levels 1-4.

Level 1 is what a ~1M-parameter model learns in two CPU minutes: 2-digit addition/subtraction asked in one fixed
short sentence ("What is 37 plus 45?") with the response "37+45=82. Answer: 82". (Measured: a 0.83M-parameter
char-level transformer, 600 steps at 80 % math, reached 8.5 % held-out exact match with this form against 1.7 %
with 50-character "Ann has 37 pens and gets 45 more." word problems: the numbers must be easy to find.)
Levels 2-4 are word problems chaining 2-4 operations (×, ÷ exact, %) with worked steps.
The split key is the operation and numbers. Level-1 prompts are shorter than 13 words, so the gate matches them
whole; from level 2 the person's name comes from a split-partitioned pool and recurs at least every 12 words, so
no 13-word window of a held-out prompt appears in train text.
"""

from __future__ import annotations

import random
import re
from typing import Any

from mixlab.evals.procedural._split import partition

LEVELS = (1, 2, 3, 4)

NAMES = (
    "Ann Ben Cara Dan Eve Finn Gia Hugo Ivy Jack Kate Leo Mia Ned Olga Paul Quin Rosa Sam Tara Uma Vic Wes Xena "
    "Yara Zoe Abe Bea Cole Dora Eli Faye Gus Hana Ian Jill Kai Lena Max Nora Otto Pia Ray Sara Tom Una Vera Will "
    "Yuri Zack Amir Bo Chen Dina Emil Fern Gil Hal Iris Joel Kira Liam Mona Nils Omar Pete Rhea Seth Tess Ulla"
).split()
OBJECTS = "apples pens cards coins books shells stamps beads eggs cups toys rocks seeds hats balls bricks".split()
NAME_POOLS = partition(NAMES, "math-name")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _draw(level: int, rng: random.Random) -> tuple[str, list[int]]:
    """Draw a canonical problem: (template id, numbers)."""
    if level == 1:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if rng.random() < 0.5:
            return "add", [a, b]
        return "sub", [max(a, b), min(a, b)]
    if level == 2:
        b, c = rng.randint(2, 9), rng.randint(2, 12)
        if rng.random() < 0.5:
            return "buy_packs", [rng.randint(20, 200), b, c]
        return "give_each", [rng.randint(b * c + 1, b * c + 150), b, c]
    if level == 3:
        if rng.random() < 0.5:
            a, b = rng.randint(3, 12), rng.randint(6, 24)
            d = rng.randint(2, 9)
            q = rng.randint(1, max(1, (a * b - 1) // d))
            return "box_split", [a, b, a * b - d * q, d]  # c ≥ 1 and the rest divides evenly
        a, b = rng.randint(5, 60), rng.randint(2, 14)
        return "earn_spend", [a, b, rng.randint(1, a * b - 1), rng.randint(5, 90)]
    # level 4: percentage then purchase
    pct = rng.choice([10, 20, 25, 40, 50, 60, 75, 80])
    base = {10: 10, 20: 5, 25: 4, 40: 5, 50: 2, 60: 5, 75: 4, 80: 5}[pct]
    a = base * rng.randint(4, 60)
    return "sell_pct", [a, pct, rng.randint(2, 9), rng.randint(2, 15)]


def _render(template: str, nums: list[int], name: str, obj: str) -> tuple[str, str, str]:
    """(prompt, worked response, final answer)."""
    n = name
    if template == "add":
        a, b = nums
        return f"What is {a} plus {b}?", f"{a}+{b}={a + b}. Answer: {a + b}", str(a + b)
    if template == "sub":
        a, b = nums
        return f"What is {a} minus {b}?", f"{a}-{b}={a - b}. Answer: {a - b}", str(a - b)
    if template == "buy_packs":
        a, b, c = nums
        r = a + b * c
        return (
            f"{n} has {a} {obj}. {n} buys {b} packs of {c}. How many {obj} now?",
            f"{b}*{c}={b * c}. {a}+{b * c}={r}. Answer: {r}",
            str(r),
        )
    if template == "give_each":
        a, b, c = nums
        r = a - b * c
        return (
            f"{n} has {a} {obj}. {n} gives {b} to each of {c} friends. How many are left?",
            f"{b}*{c}={b * c}. {a}-{b * c}={r}. Answer: {r}",
            str(r),
        )
    if template == "box_split":
        a, b, c, d = nums
        total, rest = a * b, a * b - c
        q = rest // d
        return (
            f"{n} buys {a} boxes of {b} {obj}. {n} gives away {c}. "
            f"{n} splits the rest evenly into {d} bags. How many {obj} per bag?",
            f"{a}*{b}={total}. {total}-{c}={rest}. {rest}/{d}={q}. Answer: {q}",
            str(q),
        )
    if template == "earn_spend":
        a, b, c, d = nums
        e = a * b
        r = e - c + d
        return (
            f"{n} earns {a} dollars a day for {b} days. {n} spends {c} and then earns {d} more. "
            f"How many dollars does {n} have?",
            f"{a}*{b}={e}. {e}-{c}={e - c}. {e - c}+{d}={r}. Answer: {r}",
            str(r),
        )
    if template == "sell_pct":
        a, pct, b, c = nums
        sold = a * pct // 100
        left = a - sold
        r = left + b * c
        return (
            f"{n} has {a} {obj}. {n} sells {pct}% of them. {n} then buys {b} packs of {c}. "
            f"How many {obj} does {n} have?",
            f"{pct}% of {a} is {a}*{pct}/100={sold}. {a}-{sold}={left}. {b}*{c}={b * c}. "
            f"{left}+{b * c}={r}. Answer: {r}",
            str(r),
        )
    raise ValueError(template)


def draw(level: int, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """One candidate problem: (split key, renderer kwargs). The caller decides the split from the key."""
    template, nums = _draw(level, rng)
    return f"math|L{level}|{template}|{'|'.join(map(str, nums))}", {"template": template, "nums": nums}


def build(level: int, split: str, spec: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    name = rng.choice(NAME_POOLS[split])
    obj = rng.choice(OBJECTS)
    prompt, response, answer = _render(spec["template"], spec["nums"], name, obj)
    return {"prompt": prompt, "response": response, "ground_truth": answer, "verifier": "math"}


_ANSWER = re.compile(r"answer\s*(?:is)?\s*[:=]?\s*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*|-?\.\d+")


def extract_answer(response: str) -> str | None:
    """The final answer: the last "Answer: X", else the last number in the text."""
    found = _ANSWER.findall(response)
    if found:
        return found[-1].replace(",", "")
    numbers = _NUMBER.findall(response)
    return numbers[-1].replace(",", "").rstrip(".") if numbers else None


def verify(ground_truth: Any, response: str) -> float:
    got = extract_answer(response or "")
    if got is None:
        return 0.0
    try:
        return float(abs(float(got) - float(str(ground_truth).replace(",", ""))) < 1e-9)
    except ValueError:
        return float(got.strip() == str(ground_truth).strip())
