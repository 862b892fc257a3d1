"""Judges that users can trust: pairwise games in both orders (a tie when the orders disagree), MT-Bench's official
prompts with reference answers, and self-consistency, through a real OpenAI-compatible HTTP server that plays a
scripted judge (position-biased, or noisy when sampled)."""

from __future__ import annotations

import json
import random
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mixlab.evals.judges import get_judge
from mixlab.evals.judges.llm import LLMJudge, pairwise_preference
from mixlab.evals.judges.templates import MT_BENCH_PROMPTS, mt_bench_template


class _Judge(BaseHTTPRequestHandler):
    """`position`: always prefers the answer in that slot ("A"), else the longer answer. Single grades: 1 + len//20,
    plus +-`noise` points when sampled (temperature > 0)."""

    position: str | None = None
    noise = 0
    requests: list[dict] = []

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        prompt = body["messages"][-1]["content"]
        pair = re.search(r"<answer_A>\n(.*)\n</answer_A>\s*<answer_B>\n(.*)\n</answer_B>", prompt, re.DOTALL)
        if pair:
            a, b = len(pair.group(1)), len(pair.group(2))
            verdict = ("A>B" if type(self).position == "A" else "A>B" if a > b else "B>A" if b > a else "A=B")
            text = f"[[{verdict}]]"
        else:
            answer = re.search(r"\[The Start of Assistant's Answer\]\n(.*?)\n\[The End", prompt, re.DOTALL)
            grade = min(10, 1 + len(answer.group(1)) // 20) if answer else 5
            if body.get("temperature", 0) > 0 and type(self).noise:
                grade = max(1, min(10, grade + random.Random(prompt + str(body.get("seed"))).choice(
                    [-type(self).noise, type(self).noise])))
            text = f"Explanation. Rating: [[{grade}]]"
        data = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                        "finish_reason": "stop"}], "usage": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def judge_url():
    _Judge.position, _Judge.noise, _Judge.requests = None, 0, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_pairwise_preference_rule():
    assert pairwise_preference([1.0, 1.0]) == 1.0 and pairwise_preference([0.0, 0.0]) == 0.0
    assert pairwise_preference([1.0, 0.0]) == 0.5  # the verdict followed the position: a tie
    assert pairwise_preference([1.0, 0.5]) == 0.5
    assert pairwise_preference([0.5, 0.5]) == 0.5
    assert pairwise_preference([1.0, None]) is None  # one order is not a pairwise judgement


def test_pairwise_plays_both_orders_and_a_position_biased_judge_gives_ties(judge_url, store):
    items = [("Say hi", "hello there, friend", "hi"), ("Count", "1 2 3", "one two three four")]
    judge = get_judge(f"openai:pos@{judge_url}", store=store, max_retries=0)
    fair = judge.compare_to_baseline(items)
    assert len(_Judge.requests) == 4  # every item in both orders
    assert [r.preference for r in fair] == [1.0, 0.0] and all(r.consistent for r in fair)
    _Judge.position = "A"
    biased = get_judge(f"openai:biased@{judge_url}", store=store, max_retries=0).compare_to_baseline(items)
    assert [r.preference for r in biased] == [0.5, 0.5]  # A wins both games = the orders disagree about the model
    assert [r.consistent for r in biased] == [False, False]


def test_mt_bench_official_prompts_and_references(judge_url, store):
    judge = get_judge(f"openai:mt@{judge_url}", store=store, max_retries=0)
    items = [(["What is 7*6?"], ["42"], ["7*6 = 42", "8*6 = 48"]),
             (["What is 7*6?", "And 8*6?"], ["42", "48"], ["7*6 = 42", "8*6 = 48"]),
             (["Write a poem."], ["Roses are red."], None)]
    grades = judge.grade(items, family="mt-bench")
    assert all(g.parsed for g in grades)
    seen = [r["messages"] for r in _Judge.requests]  # concurrent requests: find each by its content
    prompts = [next(m for m in seen if "And 8*6?" not in m[1]["content"] and "7*6" in m[1]["content"]),
               next(m for m in seen if "And 8*6?" in m[1]["content"]),
               next(m for m in seen if "poem" in m[1]["content"])]
    assert "[The Start of Reference Answer]\n7*6 = 42\n[The End of Reference Answer]" in prompts[0][1]["content"]
    assert "### Reference answer:\n8*6 = 48" in prompts[1][1]["content"]
    assert prompts[1][0]["content"] == MT_BENCH_PROMPTS["single-math-v1-multi-turn"]["system_prompt"]
    assert prompts[2][0]["content"] == "You are a helpful assistant." and "Reference" not in prompts[2][1]["content"]
    assert {g.template for g in grades} == {"mt-bench-single-math-v1@v1", "mt-bench-single-math-v1-multi-turn@v1",
                                            "mt-bench-single-v1@v1"}
    # Braces in answers (code) are not template fields.
    code = mt_bench_template(False, False).render(["q"], ["def f(): return {'a': 1}"])[1]["content"]
    assert "{'a': 1}" in code


def test_shipped_prompts_are_fastchats(data_root):
    path = Path(data_root) / "mt_bench" / "judge_prompts.jsonl" if data_root else None
    if path is None or not path.is_file():
        pytest.skip("no MT-Bench judge_prompts.jsonl under the data root")
    official = {row["name"]: row for row in map(json.loads, path.read_text().splitlines())}
    for name, prompt in MT_BENCH_PROMPTS.items():
        assert prompt["system_prompt"] == official[name]["system_prompt"]
        assert prompt["prompt_template"] == official[name]["prompt_template"]


def test_self_consistency_sees_a_noisy_judge(judge_url, store):
    items = [([f"Question {i}?"], ["x" * (80 + i)], None) for i in range(20)]  # grade 5: room to move 3 points
    steady = get_judge(f"openai:steady@{judge_url}", store=store, max_retries=0)
    assert isinstance(steady, LLMJudge)
    requests = steady.grade_requests(items, family="mt-bench")
    grades = steady.judge(requests)
    agree = steady.self_consistency(requests, grades, n=10)
    assert len(agree) == 10 and all(ok for _, ok in agree)
    sampled = [r for r in _Judge.requests if r.get("temperature", 0) > 0]
    assert len(sampled) == 10  # re-grades are sampled, verdicts greedy
    _Judge.noise = 3
    noisy = get_judge(f"openai:noisy@{judge_url}", store=store, max_retries=0)
    agree = noisy.self_consistency(requests, noisy.judge(requests), n=10)
    assert not any(ok for _, ok in agree)  # grades that move by 3 points between reads
    # Re-grades are cached under their own key: asking again costs nothing and never replaces the verdict.
    before = len(_Judge.requests)
    assert noisy.self_consistency(requests, noisy.judge(requests), n=10) == agree
    assert len(_Judge.requests) == before
