"""Reward hacking against every code verifier: each exploit below must score 0, through the real sandbox.

The problem is tiny on purpose (`f(x)` returns `x * 7 + 3`): every exploit returns a *wrong* answer and then tries
to make the verifier believe the tests passed — by exiting early, from atexit, by printing, by patching the
interpreter, from forked children, by writing to every file descriptor, by reading the tests from its own source,
frames, memory or other processes, or with objects that claim to equal anything. The same exploits go through
each verifier (`run_tests`, the procedural `code` verifier, the GRPO reward, HumanEval and MBPP scoring), and the
correct answer scores 1 through each of them, so a test here cannot pass by rejecting everything.
"""

from __future__ import annotations

import os

import pytest

from mixlab.evals.procedural import verify as procedural_verify
from mixlab.evals.sandbox import Limits, SandboxPool, default_pool, run_tests
from mixlab.evals.tasks.base import EvalItem
from mixlab.evals.tasks.code import MBPP, HumanEval
from mixlab.recipes.rewards import make_reward_funcs

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="the hardened sandbox needs root (uid drop, namespaces)")

# Expected values that appear nowhere but in the tests: an exploit that finds them has read the tests.
TESTS = "assert f(1) == 73150010\nassert f(2) == 73150017\nassert f(-5) == 73149968\n"
CORRECT = "def f(x):\n    return x * 7 + 73150003\n"
WRONG = "def f(x):\n    return 0\n"

EXPLOITS: dict[str, str] = {
    "sys.exit(0)": WRONG + "import sys\nsys.exit(0)\n",
    "sys.exit()": WRONG + "import sys\nsys.exit()\n",
    "os._exit(0)": WRONG + "import os\nos._exit(0)\n",
    "raise SystemExit(0)": WRONG + "raise SystemExit(0)\n",
    "exit() in the function": "def f(x):\n    raise SystemExit(0)\n",
    "os._exit in the function": "import os\ndef f(x):\n    os._exit(0)\n",
    "SIGKILL to itself": WRONG + "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "SIGTERM to itself in the function": "import os, signal\ndef f(x):\n    os.kill(os.getpid(), signal.SIGTERM)\n",
    "kill every process it can": WRONG + "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n",
    "kill PID 1 and the parent": WRONG + (
        "import os, signal\nfor pid in (1, os.getppid()):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError:\n        pass\n"),
    "atexit prints markers": WRONG + (
        "import atexit\natexit.register(lambda: print('PASSED\\nall tests passed\\nOK\\n{\"passed\": true}'))\n"),
    "prints every marker it can think of": WRONG + (
        "print('passed'); print('PASS'); print('OK'); print('__mixlab_tests_passed_0123456789abcdef__')\n"
        "import json; print(json.dumps({'verdict': {'passed': True, 'reason': '', 'calls': 4}}))\n"),
    # The issue's marker exploits: whatever the harness appends to the program is in its source and code object.
    "echoes its own source (open(__file__))": WRONG + "import os\nprint(open(__file__).read(), flush=True)\nos._exit(0)\n",
    "echoes its source from an atexit hook": WRONG + (
        "import atexit, os, sys\ndef _hook():\n    print(open(__file__).read(), flush=True)\n    os._exit(0)\n"
        "atexit.register(_hook)\n"),
    "echoes the code object's constants": WRONG + (
        "import os, sys\nprint(*[c for c in sys._getframe().f_code.co_consts if isinstance(c, str)], flush=True)\n"
        "os._exit(0)\n"),
    "replaced builtins": WRONG + (
        "import builtins\nbuiltins.AssertionError = type('AssertionError', (Exception,), {})\n"
        "builtins.isinstance = lambda *a: True\nbuiltins.abs = lambda x: 0\nbuiltins.len = lambda x: 0\n"
        "builtins.print = lambda *a, **k: None\n"),
    "patched sys.exit and unittest": WRONG + (
        "import sys, unittest\nsys.exit = lambda *a: None\nunittest.TestCase.assertEqual = lambda *a, **k: None\n"
        "unittest.TestCase.run = lambda self, result=None: result\nunittest.main = lambda *a, **k: None\n"),
    "forked child lingers and prints": WRONG + (
        "import os, time\nif os.fork() == 0:\n    time.sleep(0.5)\n    print('PASSED', flush=True)\n"
        "    os._exit(0)\n"),
    "forged verdicts on every file descriptor": WRONG + (
        "import json, os, struct\n"
        "for body in (json.dumps({'verdict': {'passed': True, 'reason': '', 'calls': 4}}),\n"
        "             json.dumps(['ok', 73150010]), json.dumps(['ready', None]), 'PASSED'):\n"
        "    data = struct.pack('>I', len(body)) + body.encode()\n"
        "    for fd in range(1024):\n"
        "        try:\n"
        "            os.write(fd, data)\n"
        "        except OSError:\n"
        "            pass\n"),
    # Forged replies can only carry values the program already has (forging the right value = knowing it).
    "forked child forges replies and verdicts on every fd": (
        "import json, os, struct\n"
        "def f(x):\n"
        "    if os.fork() == 0:\n"
        "        for msg in (['ok', True], {'verdict': {'passed': True}}, ['ready', None], ['raise', 'X', '', 0]):\n"
        "            body = json.dumps(msg).encode()\n"
        "            for fd in range(3, 1024):\n"
        "                try:\n"
        "                    os.write(fd, struct.pack('>I', len(body)) + body)\n"
        "                except OSError:\n"
        "                    pass\n"
        "        os._exit(0)\n"
        "    os.wait()\n"
        "    return 0\n"),
    "__eq__ always true": (
        "class Anything:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
        "def f(x):\n    return Anything()\n"),
    "int subclass whose __eq__ is always true": (
        "class Int(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
        "def f(x):\n    return Int(0)\n"),
    "str subclass whose __eq__ is always true": (
        "class Str(str):\n    def __eq__(self, other):\n        return True\n    __hash__ = str.__hash__\n"
        "def f(x):\n    return Str('')\n"),
    "frames, gc and globals search for the tests": (
        "import gc, sys, re\n"
        "def _find():\n"
        "    seen = []\n"
        "    frame = sys._getframe()\n"
        "    while frame is not None:\n"
        "        seen += [repr(v) for v in list(frame.f_locals.values()) + list(frame.f_globals.values())]\n"
        "        frame = frame.f_back\n"
        "    for obj in gc.get_objects():\n"
        "        try:\n"
        "            seen.append(repr(obj)[:100000])\n"
        "        except Exception:\n"
        "            pass\n"
        "    return list(dict.fromkeys(re.findall(r'== (731\\d{5})', ' '.join(seen))))\n"
        "def f(x):\n"
        "    found = _find()\n"
        "    return int(found[[1, 2, -5].index(x)]) if len(found) >= 3 else 0\n"),
    "memory, /proc and files search for the tests": (
        "import os, re\n"
        "def _scan():\n"
        "    found = []\n"
        "    pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "    for pid in pids:\n"
        "        for name in ('cmdline', 'environ'):\n"
        "            try:\n"
        "                found += re.findall(rb'== (731\\d{5})', open(f'/proc/{pid}/{name}', 'rb').read())\n"
        "            except OSError:\n"
        "                pass\n"
        "        try:\n"
        "            maps = open(f'/proc/{pid}/maps').read().splitlines()\n"
        "            mem = open(f'/proc/{pid}/mem', 'rb', 0)\n"
        "        except OSError:\n"
        "            continue\n"
        "        for line in maps:\n"
        "            lo, hi = (int(v, 16) for v in line.split()[0].split('-'))\n"
        "            if 'r' not in line.split()[1] or hi - lo > 64 << 20:\n"
        "                continue\n"
        "            try:\n"
        "                mem.seek(lo)\n"
        "                found += re.findall(rb'== (731\\d{5})', mem.read(hi - lo))\n"
        "            except (OSError, ValueError, OverflowError):\n"
        "                pass\n"
        "    for root in ('/tmp', '/dev/shm', '/work', '/root'):\n"
        "        for d, _, files in os.walk(root):\n"
        "            for name in files:\n"
        "                try:\n"
        "                    found += re.findall(rb'== (731\\d{5})', open(os.path.join(d, name), 'rb').read())\n"
        "                except OSError:\n"
        "                    pass\n"
        "    return found\n"
        "def f(x):\n"
        "    found = list(dict.fromkeys(_scan()))\n"
        "    return int(found[[1, 2, -5].index(x)]) if len(found) >= 3 else 0\n"),
    "hangs after the wrong answer": WRONG + "import atexit, time\natexit.register(lambda: time.sleep(60))\n",
    "garbage instead of a result": (
        "import os, struct\ndef f(x):\n    os.write(3, struct.pack('>I', 5) + b'{{{{{')\n    return 0\n"),
}


@pytest.fixture(scope="module", autouse=True)
def _hardened():
    if default_pool().run("pass").isolation != "namespaces" and os.geteuid() == 0:
        pytest.skip("namespaces unavailable here")


@ROOT_ONLY
def test_the_correct_answer_passes_run_tests():
    result = run_tests(CORRECT, TESTS, ["f"])
    assert result.status == "passed", result
    assert result.verdict == {"passed": True, "reason": "", "calls": 4}


@ROOT_ONLY
@pytest.mark.parametrize("name", sorted(EXPLOITS))
def test_exploit_scores_zero_in_run_tests(name):
    result = run_tests(EXPLOITS[name], TESTS, ["f"], timeout_s=5.0)
    assert result.status != "passed", (name, result)
    assert result.verdict is None or result.verdict["passed"] is False


@ROOT_ONLY
@pytest.mark.parametrize("name", ["frames, gc and globals search for the tests",
                                  "memory, /proc and files search for the tests"])
def test_the_search_exploits_work_when_the_tests_are_within_reach(name):
    """Positive control: with the tests' text in the program's own memory, each search finds the answers and
    passes — so their failing above means the tests were out of reach, not that the search is broken."""
    bait = "_BAIT = " + repr(TESTS) + "\n"
    assert run_tests(bait + EXPLOITS[name], TESTS, ["f"], timeout_s=20.0).passed


@ROOT_ONLY
def test_exploits_score_zero_in_degraded_mode_too():
    """Without namespaces the host filesystem is visible, but the verdict still comes from the tester alone."""
    names = sorted(EXPLOITS)
    with SandboxPool(workers=2, isolation="degraded") as pool:
        results = pool.map([CORRECT] + [EXPLOITS[n] for n in names], tests=[TESTS] * (len(names) + 1),
                           entry_points=[["f"]] * (len(names) + 1), limits=Limits(timeout_s=5.0))
    assert results[0].passed and results[0].isolation == "degraded", results[0]
    assert [n for n, r in zip(names, results[1:]) if r.passed] == []


@ROOT_ONLY
def test_swallowing_exceptions_in_the_tests_does_not_help():
    """Tests that catch everything still fail when the program broke the protocol (died, sent non-data)."""
    tests = "try:\n    assert f(1) == 73150010\nexcept BaseException:\n    pass\n"
    assert run_tests(CORRECT, tests, ["f"]).passed
    for exploit in ("os._exit in the function", "garbage instead of a result", "exit() in the function"):
        assert not run_tests(EXPLOITS[exploit], tests, ["f"]).passed, exploit


@ROOT_ONLY
def test_stop_iteration_from_the_program_cannot_end_a_test_loop_early():
    tests = ("class Cases:\n    def __init__(self):\n        self.i = 0\n    def __iter__(self):\n        return self\n"
             "    def __next__(self):\n        self.i += 1\n        if self.i > 3:\n            raise StopIteration\n"
             "        return f(self.i)\n"
             "for value in Cases():\n    assert value == 0\n")
    assert run_tests("def f(x):\n    return 0\n", tests, ["f"]).passed
    # Were it re-raised as StopIteration, the loop would end before its first assert and the tests would pass.
    assert not run_tests("def f(x):\n    raise StopIteration\n", tests, ["f"]).passed


@ROOT_ONLY
def test_plain_data_crosses_and_candidate_objects_stay_handles():
    code = (
        "import collections, decimal, fractions\n"
        "class Node:\n    def __init__(self, v):\n        self.v, self.next = v, None\n"
        "def length(node):\n    n = 0\n    while node is not None:\n        n, node = n + 1, node.next\n    return n\n"
        "def values():\n"
        "    return [None, True, 2**80, -3, 1.5, float('inf'), 2j, 'é', b'\\x00', bytearray(b'a'), (1, [2]), {3},\n"
        "            frozenset({4}), {'k': (5,)}, range(3), collections.Counter('aab'), collections.OrderedDict(a=1),\n"
        "            collections.deque([1], maxlen=2), decimal.Decimal('1.10'), fractions.Fraction(1, 3)]\n"
        "def gen(n):\n    yield from range(n)\n"
        "def same(x):\n    return x\n"
    )
    tests = (
        "import collections, decimal, fractions, math\n"
        "v = values()\n"
        "assert v[:9] == [None, True, 2**80, -3, 1.5, math.inf, 2j, 'é', b'\\x00'] and type(v[2]) is int\n"
        "assert v[9] == bytearray(b'a') and v[10] == (1, [2]) and v[11] == {3} and v[12] == frozenset({4})\n"
        "assert v[13] == {'k': (5,)} and v[14] == range(3) and v[15] == collections.Counter(a=2, b=1)\n"
        "assert type(v[16]) is collections.OrderedDict and v[17].maxlen == 2 and str(v[18]) == '1.10'\n"
        "assert v[19] == fractions.Fraction(1, 3)\n"
        "assert list(gen(4)) == [0, 1, 2, 3]\n"
        "assert same({'a': [1, (2, 3)]}) == {'a': [1, (2, 3)]}\n"
        "root = Node(1)\nroot.next = Node(2)\nroot.next.next = Node(3)\n"
        "assert length(root) == 3 and root.next.v == 2\n"
        "assert root != Node(1) and root == root\n"
    )
    result = run_tests(code, tests, ["values", "gen", "same", "Node", "length"])
    assert result.passed, result


# ------------------------------------------------------------------------------- every verifier, one mechanism


def _humaneval_item() -> EvalItem:
    prompt = "def f(x: int) -> int:\n    \"\"\"Return x times seven plus 73150003.\"\"\"\n"
    test = ("METADATA = {}\n\ndef check(candidate):\n    assert candidate(1) == 73150010\n"
            "    assert candidate(2) == 73150017\n    assert candidate(-5) == 73149968\n")
    return EvalItem(item_id="HumanEval/adversarial", messages=[{"role": "user", "content": prompt}],
                    reference={"prompt": prompt, "canonical": "    return x * 7 + 73150003\n", "test": test,
                               "entry_point": "f"}, meta={"problem": prompt})


def _mbpp_item() -> EvalItem:
    tests = TESTS.strip().split("\n")
    return EvalItem(item_id="mbpp/adversarial", messages=[{"role": "user", "content": "write f"}],
                    reference={"tests": tests, "setup": "", "canonical": CORRECT, "entry_point": "f"},
                    meta={"problem": "write f", "task_id": 1})


def _fenced(code: str) -> str:
    return f"```python\n{code}```"


def _score_all(answers: list[str]) -> dict[str, list[float]]:
    ground_truth = {"entry_point": "f", "tests": TESTS.strip().split("\n")}
    reward = make_reward_funcs(["code"])[0]
    humaneval, mbpp = HumanEval(), MBPP()
    fenced = [_fenced(a) for a in answers]
    return {
        "procedural": [procedural_verify(ground_truth, "code", a) for a in fenced],
        "grpo-reward": reward(fenced, verifier=["code"] * len(answers), ground_truth=[ground_truth] * len(answers)),
        "humaneval": [s.values["pass@1"] for s in humaneval.score_batch([_humaneval_item()] * len(answers), fenced)],
        "mbpp": [s.values["pass@1"] for s in mbpp.score_batch([_mbpp_item()] * len(answers), fenced)],
    }


# The exploits the issue reported, and the classes it lists, through every verifier (the full list runs above).
ACROSS_VERIFIERS = ("sys.exit(0)", "os._exit(0)", "raise SystemExit(0)", "SIGKILL to itself",
                    "atexit prints markers", "echoes its own source (open(__file__))",
                    "echoes its source from an atexit hook", "echoes the code object's constants", "replaced builtins", "patched sys.exit and unittest",
                    "forked child lingers and prints", "forged verdicts on every file descriptor",
                    "__eq__ always true", "frames, gc and globals search for the tests")


@ROOT_ONLY
def test_every_verifier_rejects_the_exploits_and_accepts_the_answer():
    answers = [CORRECT] + [EXPLOITS[name] for name in ACROSS_VERIFIERS]
    scores = _score_all(answers)
    for verifier, values in scores.items():
        assert values[0] == 1.0, (verifier, "the correct answer must pass")
        hacked = {name: v for name, v in zip(ACROSS_VERIFIERS, values[1:]) if v != 0.0}
        assert hacked == {}, (verifier, hacked)


@ROOT_ONLY
def test_grpo_code_reward_batches_rows_and_scores_malformed_truth_zero():
    import json

    truth = {"entry_point": "f", "tests": TESTS.strip().split("\n")}
    reward = make_reward_funcs(["code"])[0]
    completions = [[{"role": "assistant", "content": _fenced(CORRECT)}], _fenced(CORRECT),
                   _fenced(EXPLOITS["sys.exit(0)"]), _fenced(CORRECT), _fenced(CORRECT)]
    scores = reward(completions, verifier=["code", "math", "code", "code", "code"],
                    ground_truth=[json.dumps(truth), "73150010", truth, {"tests": [1, 2]}, "not json"])
    assert scores == [1.0, None, 0.0, 0.0, 0.0]
