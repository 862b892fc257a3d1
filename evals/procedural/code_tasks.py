"""Small Python function-writing tasks with unit tests, levels 1-3.

"Write add3(x) returning x+3" → "def add3(x):\n    return x + 3". The ground truth is the entry point plus
assert strings; `verify` runs the answer in mixlab's sandbox and the asserts in its tester process (`run_tests`). The function name encodes the
template and its parameters, and the split key is that pair, so every held-out prompt window names a held-out
function.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Callable

from mixlab.evals.sandbox import default_pool, run_many, run_tests

LEVELS = (1, 2, 3)


@dataclass(frozen=True)
class Template:
    name: str
    level: int
    params: Callable[[random.Random], tuple]
    fname: Callable[[tuple], str]
    prompt: Callable[[str, tuple], str]
    body: Callable[[str, tuple], str]  # full solution source
    inputs: Callable[[random.Random, tuple], list[tuple]]


def _ints(rng: random.Random, k: int = 3, lo: int = -50, hi: int = 200) -> list[tuple]:
    return [(rng.randint(lo, hi),) for _ in range(k)]


def _lists(rng: random.Random, k: int = 3) -> list[tuple]:
    return [([rng.randint(-20, 60) for _ in range(rng.randint(0, 7))],) for _ in range(k)]


def _words(rng: random.Random, k: int = 3) -> list[tuple]:
    alphabet = "abcdeilmnorst"
    return [("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))),) for _ in range(k)]


def _k(lo: int, hi: int) -> Callable[[random.Random], tuple]:
    return lambda rng: (rng.randint(lo, hi),)


def _unary(name: str, lo: int, hi: int, expr: str, text: str) -> Template:
    """Level 1: one expression in x with one constant k."""
    return Template(
        name,
        1,
        _k(lo, hi),
        lambda p: f"{name}{p[0]}",
        lambda f, p: f"Write {f}(x) returning {text.format(k=p[0])}",
        lambda f, p: f"def {f}(x):\n    return {expr.format(k=p[0])}",
        # Around the constant, so comparisons and max/min are tested on both sides of it.
        lambda rng, p: [(p[0] - 1,), (p[0],), (p[0] + 1,), (rng.randint(-50, 1100),)],
    )


TEMPLATES: list[Template] = [
    _unary("add", 1, 999, "x + {k}", "x+{k}"),
    _unary("sub", 1, 999, "x - {k}", "x-{k}"),
    _unary("mul", 2, 999, "x * {k}", "x*{k}"),
    _unary("mod", 2, 99, "x % {k}", "x%{k}"),
    _unary("div", 2, 99, "x // {k}", "x//{k}"),
    _unary("gt", 0, 999, "x > {k}", "x>{k}"),
    _unary("lt", 0, 999, "x < {k}", "x<{k}"),
    _unary("max", 0, 999, "max(x, {k})", "max(x, {k})"),
    _unary("min", 0, 999, "min(x, {k})", "min(x, {k})"),
    Template(
        "count_gt", 2, _k(0, 499), lambda p: f"count_gt{p[0]}",
        lambda f, p: f"Write {f}(xs) returning how many items of xs are greater than {p[0]}.",
        lambda f, p: f"def {f}(xs):\n    return sum(1 for x in xs if x > {p[0]})",
        lambda rng, p: _lists(rng),
    ),
    Template(
        "sum_times", 2, _k(2, 499), lambda p: f"sum_times{p[0]}",
        lambda f, p: f"Write {f}(xs) returning the sum of xs times {p[0]}.",
        lambda f, p: f"def {f}(xs):\n    return sum(xs) * {p[0]}",
        lambda rng, p: _lists(rng),
    ),
    Template(
        "add_each", 2, _k(1, 499), lambda p: f"add_each{p[0]}",
        lambda f, p: f"Write {f}(xs) returning a list with {p[0]} added to each item of xs.",
        lambda f, p: f"def {f}(xs):\n    return [x + {p[0]} for x in xs]",
        lambda rng, p: _lists(rng),
    ),
    Template(
        "keep_div", 2, _k(2, 99), lambda p: f"keep_div{p[0]}",
        lambda f, p: f"Write {f}(xs) returning the items of xs divisible by {p[0]}, in order.",
        lambda f, p: f"def {f}(xs):\n    return [x for x in xs if x % {p[0]} == 0]",
        lambda rng, p: _lists(rng),
    ),
    Template(
        "first", 2, _k(1, 99), lambda p: f"first{p[0]}",
        lambda f, p: f"Write {f}(xs) returning the first {p[0]} items of xs.",
        lambda f, p: f"def {f}(xs):\n    return xs[:{p[0]}]",
        lambda rng, p: [([rng.randint(0, 9) for _ in range(rng.randint(0, p[0] + 3))],) for _ in range(3)],
    ),
    Template(
        "repeat", 2, _k(2, 99), lambda p: f"repeat{p[0]}",
        lambda f, p: f"Write {f}(s) returning the string s repeated {p[0]} times.",
        lambda f, p: f"def {f}(s):\n    return s * {p[0]}",
        lambda rng, p: [(w[:4],) for (w,) in _words(rng)],
    ),
    Template(
        "fizz", 3, lambda rng: tuple(sorted(rng.sample(range(2, 30), 2))), lambda p: f"fizz{p[0]}_{p[1]}",
        lambda f, p: f"Write {f}(n): 'Fizz' if {p[0]} divides n, 'Buzz' if {p[1]} does, 'FizzBuzz' if both, else str(n).",
        lambda f, p: (
            f"def {f}(n):\n    if n % {p[0]} == 0 and n % {p[1]} == 0:\n        return 'FizzBuzz'\n"
            f"    if n % {p[0]} == 0:\n        return 'Fizz'\n    if n % {p[1]} == 0:\n        return 'Buzz'\n"
            f"    return str(n)"
        ),
        lambda rng, p: [(p[0] * p[1] * rng.randint(1, 4),), (p[0] * rng.randint(1, 9),), (p[1] * rng.randint(1, 9),),
                        (p[0] * p[1] * rng.randint(1, 9) + 1,)],
    ),
    Template(
        "digsum_mod", 3, _k(2, 97), lambda p: f"digsum_mod{p[0]}",
        lambda f, p: f"Write {f}(n) returning the sum of the decimal digits of n modulo {p[0]}.",
        lambda f, p: f"def {f}(n):\n    return sum(int(d) for d in str(n)) % {p[0]}",
        lambda rng, p: [(rng.randint(0, 10**6),) for _ in range(3)],
    ),
    Template(
        "count_char", 3, lambda rng: (rng.choice("abcdeilmnorst"), rng.randint(1, 9)),
        lambda p: f"has_{p[0]}{p[1]}",
        lambda f, p: f"Write {f}(s) returning True if '{p[0]}' occurs at least {p[1]} times in s.",
        lambda f, p: f"def {f}(s):\n    return s.count({p[0]!r}) >= {p[1]}",
        lambda rng, p: _words(rng, 4) + [(p[0] * p[1],)],
    ),
    Template(
        "clip", 3, lambda rng: tuple(sorted(rng.sample(range(-50, 100), 2))), lambda p: f"clip{p[0]}_{p[1]}".replace("-", "m"),
        lambda f, p: f"Write {f}(xs) returning xs with each item clipped to the range [{p[0]}, {p[1]}].",
        lambda f, p: f"def {f}(xs):\n    return [min(max(x, {p[0]}), {p[1]}) for x in xs]",
        lambda rng, p: _lists(rng),
    ),
    Template(
        "running_sum", 3, _k(1, 99), lambda p: f"running_sum{p[0]}",
        lambda f, p: f"Write {f}(xs) returning the running sums of xs, each plus {p[0]}.",
        lambda f, p: (
            f"def {f}(xs):\n    out = []\n    total = 0\n    for x in xs:\n        total += x\n"
            f"        out.append(total + {p[0]})\n    return out"
        ),
        lambda rng, p: _lists(rng),
    ),
]
BY_LEVEL = {lvl: [t for t in TEMPLATES if t.level == lvl] for lvl in LEVELS}
BY_NAME = {t.name: t for t in TEMPLATES}


def draw(level: int, rng: random.Random) -> tuple[str, dict[str, Any]]:
    template = rng.choice(BY_LEVEL[level])
    params = template.params(rng)
    return f"code|{template.name}|{'|'.join(map(str, params))}", {"template": template.name, "params": params}


def build(level: int, split: str, spec: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    template = BY_NAME[spec["template"]]
    params = tuple(spec["params"])
    fname = template.fname(params)
    source = template.body(fname, params)
    namespace: dict[str, Any] = {}
    exec(source, namespace)  # our own template source: computes the expected outputs of the unit tests
    # Test inputs depend only on the problem, so the same problem always has the same tests.
    test_rng = random.Random(f"tests|{fname}")
    tests = []
    for args in template.inputs(test_rng, params):
        expected = namespace[fname](*args)
        call = ", ".join(repr(a) for a in args)
        tests.append(f"assert {fname}({call}) == {expected!r}")
    return {
        "prompt": template.prompt(fname, params),
        "response": source,
        "ground_truth": {"entry_point": fname, "tests": tests},
        "verifier": "code",
    }


_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def extract_code(response: str) -> str:
    """The code in a response: fenced blocks if any, else the whole text."""
    blocks = _FENCE.findall(response or "")
    return "\n\n".join(blocks) if blocks else (response or "")


def _spec(ground_truth: Any, response: str) -> tuple[str, str, list[str]]:
    tests = ground_truth["tests"] if isinstance(ground_truth, dict) else list(ground_truth)
    entry = ground_truth.get("entry_point") if isinstance(ground_truth, dict) else None
    return extract_code(response), "\n".join(tests) + "\n", [entry] if entry else []


def verify_many(ground_truths: list[Any], responses: list[str], timeout_s: float = 10.0) -> list[float]:
    """`verify` for a batch (e.g. a GRPO step's completions), the programs running in parallel sandbox workers.
    A row whose ground truth is malformed scores 0 without running."""
    scores = [0.0] * len(responses)
    rows, specs = [], []
    for i, (gt, response) in enumerate(zip(ground_truths, responses, strict=True)):
        try:
            specs.append(_spec(gt, response))
        except (TypeError, KeyError, AttributeError):
            continue
        rows.append(i)
    results = run_many([c for c, _, _ in specs], workers=default_pool().max_workers, timeout_s=timeout_s,
                       tests=[t for _, t, _ in specs], entry_points=[e for _, _, e in specs]) if specs else []
    for i, result in zip(rows, results):
        scores[i] = 1.0 if result.passed else 0.0
    return scores


def verify(ground_truth: dict[str, Any], response: str, timeout_s: float = 10.0) -> float:
    """1.0 when the asserts, run in the sandbox's tester process against the answer's functions, all pass.

    The answer runs as the sandboxed program and never sees the asserts: exiting early, printing, atexit hooks or
    patched builtins in it cannot make this 1.0 (`mixlab.evals.sandbox.run_tests`)."""
    code, tests, entries = _spec(ground_truth, response)
    return 1.0 if run_tests(code, tests, entries, timeout_s=timeout_s).passed else 0.0
