"""`mixlab serve` over real HTTP, LLM judges through it, the DuckDB judgement cache, a judge endpoint that dies.

Two real endpoints:
- `mixlab serve tiny` in a subprocess: a random-weight mixlab model. Its verdicts are gibberish, which is the point
  for plumbing: unparseable verdicts are counted, never cached and never crash the run.
- a scripted judge (stdlib HTTP server in this file) that answers like a length-loving judge would — it prefers the
  longer answer and grades by length — so the aggregation of parsed verdicts is checked against known answers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mixlab import procs
from mixlab.errors import MixlabError
from mixlab.evals.backends import GenerationConfig, get_backend
from mixlab.evals.judges import get_judge
from mixlab.evals.runner import evaluate
from mixlab.evals.tasks.chat import MTBench


# ---------------------------------------------------------------------------------------------------------------
# endpoints
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_tiny():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = procs.popen(
        procs.mixlab_args("serve", "tiny", "--port", "0", "--batch-size", "8"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env_base=env,
    )
    deadline = time.monotonic() + 240
    url = None
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"listening on (http://\S+/v1)", line)
        if match:
            url = match.group(1)
            break
    if url is None:
        proc.kill()
        pytest.fail(f"mixlab serve did not start: {''.join(lines)[-2000:]}")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class _ScriptedJudge(BaseHTTPRequestHandler):
    """Prefers the longer answer ([[A>B]] / [[B>A]], strong when 3x longer); grades 1 + len // 20 (max 10)."""

    requests = 0
    fail_next = 0  # answer 503 to this many requests first

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        type(self).requests += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if type(self).fail_next > 0:
            type(self).fail_next -= 1
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        prompt = body["messages"][-1]["content"]
        pair = re.search(r"<answer_A>\n(.*)\n</answer_A>\s*<answer_B>\n(.*)\n</answer_B>", prompt, re.DOTALL)
        if pair:
            a, b = len(pair.group(1)), len(pair.group(2))
            verdict = "A=B" if a == b else ("A>>B" if a > 3 * b else "A>B" if a > b else "B>>A" if b > 3 * a else "B>A")
            text = f"Longer is better. [[{verdict}]]"
        else:
            answers = re.findall(r"<assistant(?:_answer| turn=\d+)>\n(.*?)\n</assistant(?:_answer)?>", prompt, re.DOTALL)
            # MT-Bench's official prompts (FastChat's formats)
            answers += re.findall(r"\[The Start of Assistant's Answer\]\n(.*?)\n\[The End of Assistant's Answer\]",
                                  prompt, re.DOTALL)
            answers += re.findall(r"### Assistant A:\n(.*?)\n\n(?=### User:|<\|The End)", prompt, re.DOTALL)
            text = f"Grade: [[{min(10, 1 + len(answers[-1]) // 20)}]]"
        data = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                        "finish_reason": "stop"}], "usage": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def scripted_judge():
    _ScriptedJudge.requests, _ScriptedJudge.fail_next = 0, 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture
def answer_backend(llama_model, chat_tokenizer):
    return get_backend("torch", llama_model, chat_tokenizer, batch_size=4)


# ---------------------------------------------------------------------------------------------------------------
# mixlab serve
# ---------------------------------------------------------------------------------------------------------------


def test_serve_speaks_the_openai_api(served_tiny):
    with urllib.request.urlopen(f"{served_tiny}/models", timeout=30) as response:
        models = json.loads(response.read())
    assert [m["id"] for m in models["data"]] == ["tiny"]
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 6,
            "temperature": 0}
    status, out = _post(f"{served_tiny}/chat/completions", body)
    assert status == 200, out
    assert out["object"] == "chat.completion" and out["choices"][0]["message"]["role"] == "assistant"
    assert 0 < out["usage"]["completion_tokens"] <= 6 and out["usage"]["prompt_tokens"] > 0
    # Greedy over HTTP equals the same preset generated in-process by the torch backend.
    local = get_backend("torch", "tiny", device="cpu").generate(body["messages"] and [body["messages"]],
                                                                GenerationConfig(max_new_tokens=6))
    assert out["choices"][0]["message"]["content"] == local[0]
    # Concurrent requests are micro-batched; each still gets its own greedy answer.
    prompts = [f"Question number {i}: {'why ' * i}?" for i in range(6)]
    client = get_backend("openai", model="tiny", base_url=served_tiny, concurrency=6)
    msgs = [[{"role": "user", "content": p}] for p in prompts]
    concurrent = client.generate(msgs, GenerationConfig(max_new_tokens=5))
    sequential = [client.generate([m], GenerationConfig(max_new_tokens=5))[0] for m in msgs]
    assert concurrent == sequential
    # Bad requests get OpenAI-style errors, and the server keeps serving.
    assert _post(f"{served_tiny}/chat/completions", {**body, "model": "gpt-9"})[0] == 404
    assert _post(f"{served_tiny}/chat/completions", {**body, "stream": True})[0] == 400
    status, err = _post(f"{served_tiny}/chat/completions", {"model": "tiny", "messages": "hi"})
    assert status == 400 and "messages" in err["error"]["message"]
    assert _post(f"{served_tiny}/chat/completions", {**body, "temperature": "hot"})[0] == 400
    assert _post(f"{served_tiny}/chat/completions", body)[0] == 200


# ---------------------------------------------------------------------------------------------------------------
# LLM judge end to end
# ---------------------------------------------------------------------------------------------------------------


def test_llm_judge_over_mixlab_serve_counts_unparseable_and_caches(served_tiny, store, answer_backend, data_root,
                                                                    monkeypatch):
    monkeypatch.setattr(MTBench, "consistency_grades", 0)  # the counts below are of verdicts alone
    spec = f"openai:tiny@{served_tiny}"
    judge = get_judge(spec, store=store, max_new_tokens=16, max_retries=1, verdict_backoff_s=0.01)
    first = evaluate("llama-random", ["mt-bench", "alpaca-eval"], backend=answer_backend, judge=judge, limit=2,
                     store=store, data_root=data_root, progress=False, gen_config={"max_new_tokens": 12})
    assert first.ok, [t.error for t in first.tasks]
    # 2 MT-Bench questions x 2 turns + 2 AlpacaEval prompts x 2 position-swapped games; only verdicts are cached.
    assert judge.stats["generated"] == 8 and judge.stats["cache_hits"] == 0
    unparseable = judge.stats["unparseable"]
    assert store.query("SELECT count(*) AS n FROM judgements")[0]["n"] == 8 - unparseable
    rows = store.query("SELECT verdict, raw, judge FROM judgements")
    assert all(r["judge"].startswith("openai:tiny") and r["raw"] is not None for r in rows)
    assert not any(r["verdict"] == "unparseable" for r in rows)
    mt = first["mt-bench"]
    assert mt.metric("judge_unparseable").n == 2
    stored_rate = mt.metric("judge_unparseable").mean * 4 + first["alpaca-eval"].metric("judge_unparseable").mean * 4
    assert stored_rate == pytest.approx(unparseable)
    samples = store.query("SELECT task, judge_rationale, output FROM eval_samples WHERE task = 'mt-bench'")
    assert len(samples) == 2 and all("turn 2" in s["judge_rationale"] for s in samples)
    assert all("<<<mixlab:turn 2>>>" in s["output"] for s in samples)
    # A second evaluation of the same answers is served from the cache: judge calls only for replies that had no
    # verdict (those are not cached as final).
    again_judge = get_judge(spec, store=store, max_new_tokens=16, max_retries=1, verdict_backoff_s=0.01)
    again = evaluate("llama-random", ["mt-bench", "alpaca-eval"], backend=answer_backend, judge=again_judge,
                     limit=2, store=store, data_root=data_root, progress=False, gen_config={"max_new_tokens": 12},
                     resume=False)
    assert again.ok
    assert again_judge.stats["cache_hits"] == 8 - unparseable and again_judge.stats["generated"] == unparseable


def test_parsed_verdicts_aggregate_to_known_win_rates(scripted_judge, store, answer_backend, data_root):
    server, url = scripted_judge
    judge = get_judge(f"openai:length-lover@{url}", store=store, max_retries=0)
    results = evaluate("llama-random", ["alpaca-eval", "arena-hard", "mt-bench"], backend=answer_backend,
                       judge=judge, limit=3, store=store, data_root=data_root, progress=False,
                       gen_config={"max_new_tokens": 8})
    assert results.ok, [t.error for t in results.tasks]
    # 8 tokens of a random model are far shorter than GPT-4's answers: the length-loving judge never prefers them.
    for task in ("alpaca-eval", "arena-hard"):
        r = results[task]
        assert r.metric("win_rate").mean == 0.0 and r.metric("win_rate").n == 3
        assert r.metric("judge_unparseable").mean == 0.0
        assert r.metric("judge_consistency").mean == 1.0
        assert 0.0 <= r.metric("lc_win_rate").mean < 0.5
    verdicts = {row["verdict"] for row in store.query("SELECT verdict FROM judgements WHERE template LIKE 'pairwise%'")}
    assert verdicts <= {"A>>B", "B>>A", "A>B", "B>A"} and verdicts
    mt = results["mt-bench"]
    samples = store.query("SELECT output, score, extra FROM eval_samples WHERE task = 'mt-bench' ORDER BY item_id")
    for s in samples:
        turns = json.loads(s["extra"])["turns"]
        expected = [min(10, 1 + len(t) // 20) for t in turns]
        assert s["score"] == pytest.approx(sum(expected) / 2)
    assert mt.metric("score").mean == pytest.approx(sum(s["score"] for s in samples) / 3)
    assert mt.metric("score").ci_method == "bootstrap"
    templates = {r["template"] for r in store.query("SELECT template FROM judgements")}
    assert "mt-bench-single-v1@v1" in templates and "mt-bench-single-v1-multi-turn@v1" in templates
    # The 3-item prefix is writing, roleplay, reasoning: the reasoning question is graded against its reference.
    assert {"mt-bench-single-math-v1@v1", "mt-bench-single-math-v1-multi-turn@v1"} <= templates
    # The scripted judge grades deterministically, so its sampled re-grades agree: self-consistency 1.
    assert mt.metric("judge_self_consistency").mean == 1.0 and mt.metric("judge_self_consistency").n == 3
    samples = store.query("SELECT score, extra FROM eval_samples WHERE task = 'alpaca-eval'")
    assert [s["score"] for s in samples] == [0.0, 0.0, 0.0]  # per-item win_rate
    assert results["alpaca-eval"].metric("lc_win_rate").ci_method == "bootstrap-glm"
    # A second model (other decoding settings = another eval) on the same prompts: the LC fit now estimates
    # per-instruction difficulty jointly over both.
    second = evaluate("llama-random", ["alpaca-eval"], backend=answer_backend, judge=judge, limit=3, store=store,
                      data_root=data_root, progress=False, gen_config={"max_new_tokens": 9})
    assert second.ok
    assert second["alpaca-eval"].metric("lc_win_rate").ci_method == "bootstrap-glm+difficulty(2 models)"


def test_mt_bench_uses_reference_answers_for_math_reasoning_coding(data_root):
    from mixlab.evals.tasks.base import get_task

    items = get_task("mt-bench").load(data_root)
    assert len(items) == 80 and all(len(i.meta["turns"]) == 2 for i in items)
    with_ref = [i for i in items if i.reference]
    assert len(with_ref) == 30
    assert {i.meta["category"] for i in with_ref} == {"math", "reasoning", "coding"}
    assert all(len(i.reference) == 2 for i in with_ref)
    arena = get_task("arena-hard").load(data_root)
    assert len(arena) == 500 and all(isinstance(i.reference, str) and i.reference for i in arena)
    # --limit takes a balanced prefix: one question per category, one instruction per source.
    first8 = get_task("mt-bench").load(data_root, limit=8)
    assert len({i.meta["category"] for i in first8}) == 8
    assert sorted(i.meta["question_id"] for i in items) == list(range(81, 161))
    alpaca = get_task("alpaca-eval").load(data_root, limit=5)
    assert len({i.meta["dataset"] for i in alpaca}) == 5
    assert len({i.item_id for i in get_task("alpaca-eval").load(data_root)}) == 805


def test_chat_tasks_name_missing_data(tmp_path):
    from mixlab.evals.tasks.base import get_task

    for name, fragment in (("mt-bench", "mt_bench/question.jsonl"), ("alpaca-eval", "alpaca_eval/model_outputs.json"),
                           ("arena-hard", "arena-hard-v0.1/question.jsonl")):
        with pytest.raises(MixlabError, match=f"task {name}.*{fragment}"):
            get_task(name).load(tmp_path)


def test_judge_endpoint_down_retries_then_clear_error_keeping_finished_items(
    scripted_judge, store, answer_backend, data_root
):
    server, url = scripted_judge
    # Transient 503s are retried.
    _ScriptedJudge.fail_next = 2
    judge = get_judge(f"openai:length-lover@{url}", store=store, max_retries=3, backoff_s=0.01)
    ok = evaluate("llama-random", ["alpaca-eval"], backend=answer_backend, judge=judge, limit=2, store=store,
                  data_root=data_root, progress=False, gen_config={"max_new_tokens": 8}, chunk_size=2)
    assert ok.ok and _ScriptedJudge.requests == 4 + 2
    # Now the endpoint goes away for good; more items are asked for.
    server.shutdown()
    server.server_close()
    judge = get_judge(f"openai:length-lover@{url}", store=store, max_retries=2, backoff_s=0.01)
    started = time.monotonic()
    failed = evaluate("llama-random", ["alpaca-eval"], backend=answer_backend, judge=judge, limit=4, store=store,
                      data_root=data_root, progress=False, gen_config={"max_new_tokens": 8}, chunk_size=2)
    assert time.monotonic() - started < 60
    result = failed["alpaca-eval"]
    assert result.status == "failed" and result.reused == 2
    assert "failed after 3 attempts" in result.error and "finished ones are cached" in result.error
    row = store.query("SELECT status, error, n_samples FROM eval_runs")[0]
    assert row["status"] == "failed" and row["n_samples"] == 2
    # The 2 finished samples, plus the 2 answers generated before the judge failed (kept for the re-run to judge).
    assert store.query("SELECT count(*) AS n FROM eval_samples WHERE score IS NOT NULL")[0]["n"] == 2
    assert store.query("SELECT count(*) AS n FROM eval_samples WHERE score IS NULL")[0]["n"] == 2
    assert store.query("SELECT count(*) AS n FROM judgements")[0]["n"] == 4


def test_local_judge_runs_the_same_templates_in_process(store, llama_model, chat_tokenizer, answer_backend,
                                                          data_root, monkeypatch):
    from mixlab.evals.judges import LLMJudge

    monkeypatch.setattr(MTBench, "consistency_grades", 0)  # the counts below are of verdicts alone
    judge = LLMJudge(get_backend("torch", llama_model, chat_tokenizer, batch_size=8), "local:llama-random",
                     store=store, max_new_tokens=8, verdict_backoff_s=0.01)
    results = evaluate("llama-random", ["mt-bench"], backend=answer_backend, judge=judge, limit=2, store=store,
                       data_root=data_root, progress=False, gen_config={"max_new_tokens": 8})
    assert results.ok
    assert judge.stats["generated"] == 4
    cached = store.query("SELECT count(*) AS n FROM judgements WHERE judge LIKE 'local:llama-random%'")[0]["n"]
    assert cached == 4 - judge.stats["unparseable"]  # replies without a verdict are not cached
    with pytest.raises(MixlabError, match="judge spec"):
        get_judge("locl:/x")


def test_eval_through_the_openai_backend_matches_in_process(served_tiny, store):
    """`mixlab eval tiny --backend openai` against `mixlab serve tiny` stores the same answers as the torch backend."""
    remote = evaluate("tiny", ["proc-chat"], backend="openai", backend_opts={"base_url": served_tiny}, limit=3,
                      store=store, progress=False, gen_config={"max_new_tokens": 10})
    local = evaluate("tiny", ["proc-chat"], backend="torch", backend_opts={"device": "cpu"}, limit=3, store=store,
                     progress=False, gen_config={"max_new_tokens": 10})
    assert remote.ok and local.ok
    assert remote["proc-chat"].eval_id != local["proc-chat"].eval_id  # the backend is part of the key
    rows = store.query("SELECT r.backend, s.item_id, s.output, s.output_tokens FROM eval_samples s "
                       "JOIN eval_runs r ON s.eval_id = r.eval_id ORDER BY s.item_id, r.backend")
    by_backend = {b: [(r["item_id"], r["output"]) for r in rows if r["backend"] == b] for b in ("openai", "torch")}
    assert by_backend["openai"] == by_backend["torch"] and len(by_backend["torch"]) == 3
    assert all(r["output_tokens"] is not None for r in rows)


def test_cli_eval_with_a_judge(scripted_judge, monkeypatch, capsys, db_path, data_root):
    from mixlab.cli import main
    from mixlab.store import Store

    server, url = scripted_judge
    monkeypatch.setattr(sys, "argv", ["mixlab", "eval", "tiny", "--suite", "mt-bench", "--limit", "1",
                                      "--max-new-tokens", "6", "--judge", f"openai:length-lover@{url}",
                                      "--judge-max-tokens", "32", "--json"])
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr().err[-2000:]
    payload = json.loads(capsys.readouterr().out)
    assert payload["ok"] and payload["judge"] == "openai:length-lover|max_tokens=32"
    metrics = {m["metric"]: m for m in payload["tasks"][0]["metrics"]}
    assert metrics["score"]["n"] == 1 and 1 <= metrics["score"]["mean"] <= 10
    # 2 verdicts (turn 1, turn 2) and their 2 sampled re-grades for self-consistency.
    assert Store(db_path).query("SELECT count(*) AS n FROM judgements")[0]["n"] == 4
