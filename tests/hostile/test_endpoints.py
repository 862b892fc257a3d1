"""Hostile OpenAI-compatible endpoints, for the answer backend and the LLM judge, against a real local HTTP server
that counts requests: malformed replies and HTTP errors get bounded retries and one clear error (`{"choices": []}`
used to loop forever); judge replies without a verdict are retried, then kept as unparseable and not cached; the
cache key names endpoint and model; answers survive a failing judge, so a re-run generates nothing."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mixlab import cli
from mixlab.errors import MixlabError
from mixlab.evals.backends import GenerationConfig, get_backend
from mixlab.evals.backends.openai_backend import EndpointError
from mixlab.evals.judges import get_judge
from mixlab.evals.runner import evaluate
from mixlab.evals.tasks import base as tasks_base
from mixlab.evals.tasks.base import EvalItem
from mixlab.evals.tasks.chat import MTBench

FAST = {"max_retries": 3, "backoff_s": 0.001, "concurrency": 1}


def _ok(text: str) -> tuple[int, bytes, dict]:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    return 200, json.dumps(body).encode(), {}


def _json(obj) -> tuple[int, bytes, dict]:
    return 200, json.dumps(obj).encode(), {}


# mode -> reply for a chat request (status, body, headers)
MODES = {
    "empty-choices": lambda: _json({"choices": []}),
    "choices-not-a-list": lambda: _json({"choices": "A"}),
    "choices-a-dict": lambda: _json({"choices": {"0": {"message": {"content": "x"}}}}),
    "choice-without-message": lambda: _json({"choices": [{"index": 0, "text": "x"}]}),
    "not-json": lambda: (200, b"<html>502 Bad Gateway</html>", {}),
    "json-array": lambda: _json([{"message": "x"}]),
    "http-500": lambda: (500, b'{"error": "boom"}', {}),
    "http-429": lambda: (429, b"slow down", {"Retry-After": "0"}),
    "http-404": lambda: (404, b'{"error": {"message": "model not found"}}', {}),
    "http-401": lambda: (401, b"", {}),
}


class _Server(BaseHTTPRequestHandler):
    """`mode` for the judge model; the model named "answerer" always answers. Counts requests per model."""

    mode = "ok"
    verdict = "[[7]]"
    flaky = 0  # answer 503 to this many judge requests first
    counts: dict[str, int] = {}

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model = body.get("model", "?")
        type(self).counts[model] = type(self).counts.get(model, 0) + 1
        if model == "answerer":
            status, data, headers = _ok(f"an answer to: {body['messages'][-1]['content'][:20]}")
        elif type(self).flaky > 0:
            type(self).flaky -= 1
            status, data, headers = 503, b"", {}
        elif type(self).mode == "ok":
            status, data, headers = _ok(f"Fine. Rating: {type(self).verdict}")
        else:
            status, data, headers = MODES[type(self).mode]()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    _Server.mode, _Server.verdict, _Server.flaky, _Server.counts = "ok", "[[7]]", 0, {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


MESSAGES = [[{"role": "user", "content": "hi"}]]


@pytest.mark.parametrize("mode", [m for m in MODES if m not in ("http-404", "http-401")])
def test_malformed_replies_get_bounded_retries_and_one_clear_error(server, mode):
    _Server.mode = mode
    backend = get_backend("openai", model="judge", base_url=server, **FAST)
    with pytest.raises(EndpointError) as err:
        backend.generate(MESSAGES, GenerationConfig(max_new_tokens=4))
    assert _Server.counts["judge"] == 4  # 1 + max_retries, never unbounded
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"POST {server}/chat/completions failed after 4 attempts (last error: ")
    expected = {
        "empty-choices": "'choices' is empty", "choices-not-a-list": "'choices' is str, not a list",
        "choices-a-dict": "'choices' is dict, not a list", "choice-without-message": "a choice has no message",
        "not-json": "reply is not JSON", "json-array": "reply is JSON but not an object",
        "http-500": 'HTTP 500: {"error": "boom"}', "http-429": "HTTP 429: slow down",
    }[mode]
    assert expected in message


@pytest.mark.parametrize("mode,detail", [("http-404", 'HTTP 404: {"error": {"message": "model not found"}}'),
                                         ("http-401", "HTTP 401")])
def test_client_errors_fail_at_once(server, mode, detail):
    _Server.mode = mode
    backend = get_backend("openai", model="judge", base_url=server, **FAST)
    with pytest.raises(EndpointError) as err:
        backend.generate(MESSAGES, GenerationConfig(max_new_tokens=4))
    assert _Server.counts["judge"] == 1
    assert str(err.value) == f"POST {server}/chat/completions failed: {detail}"


def test_transient_errors_are_retried_then_succeed(server):
    _Server.flaky = 2
    backend = get_backend("openai", model="judge", base_url=server, **FAST)
    assert backend.generate(MESSAGES, GenerationConfig(max_new_tokens=4)) == ["Fine. Rating: [[7]]"]
    assert _Server.counts["judge"] == 3


def test_server_ignoring_n_is_topped_up_a_bounded_number_of_times(server):
    backend = get_backend("openai", model="judge", base_url=server, **FAST)
    out = backend.generate_detailed(MESSAGES, GenerationConfig(max_new_tokens=4, n=3, temperature=0.7))
    assert len(out[0].texts) == 3 and _Server.counts["judge"] == 3


def _grade(judge):
    return judge.grade([(["What is 2+2?"], ["4"], None)])[0]


def test_reply_without_verdict_retried_then_unparseable_and_not_cached(server, store):
    _Server.verdict = "no idea"
    warnings: list[str] = []
    judge = get_judge(f"openai:judge@{server}", store=store, verdict_retries=2, verdict_backoff_s=0.001,
                      warn=warnings.append, **FAST)
    first = _grade(judge)
    assert not first.parsed and first.raw == "Fine. Rating: no idea"
    assert _Server.counts["judge"] == 3  # 1 + verdict_retries
    assert warnings == ["judge openai:judge: no verdict in 1 of 1 replies after 3 attempts each "
                        "(kept as unparseable, not cached)"]
    assert store.query("SELECT count(*) AS n FROM judgements")[0]["n"] == 0
    _Server.verdict = "[[6]]"  # the judge behaves now: the re-run asks again and caches the verdict
    second = _grade(judge)
    assert second.parsed and second.score == 6 and not second.cached and _Server.counts["judge"] == 4
    assert _grade(judge).cached and _Server.counts["judge"] == 4


def test_cache_key_names_endpoint_and_model(server, store):
    judge = get_judge(f"openai:judge@{server}", store=store, **FAST)
    assert _grade(judge).score == 7 and _Server.counts["judge"] == 1
    assert _grade(get_judge(f"openai:judge@{server}", store=store, **FAST)).cached  # same endpoint, same model
    other_url = server.replace("127.0.0.1", "localhost")  # the same server under another URL is another judge
    assert not _grade(get_judge(f"openai:judge@{other_url}", store=store, **FAST)).cached
    assert _Server.counts["judge"] == 2
    keys = {get_judge(spec, store=store).cache_key(r) for spec, r in [
        (f"openai:judge@{server}", None), (f"openai:judge@{other_url}", None), (f"openai:judge2@{server}", None)]
        for r in [_request()]}
    assert len(keys) == 3


def _request():
    from mixlab.evals.judges.llm import JudgeRequest
    from mixlab.evals.judges.templates import single_template

    return JudgeRequest(single_template(False, False), ["q"], ["a"])


def test_no_cache_rejudges(server, store):
    assert _grade(get_judge(f"openai:judge@{server}", store=store, **FAST)).score == 7
    _Server.verdict = "[[3]]"
    fresh = _grade(get_judge(f"openai:judge@{server}", store=store, use_cache=False, **FAST))
    assert not fresh.cached and fresh.score == 3 and _Server.counts["judge"] == 2
    assert _grade(get_judge(f"openai:judge@{server}", store=store, **FAST)).score == 3  # the refresh was stored


class HostileMT(MTBench):
    """MT-Bench's real generation and judging over two inline questions (no benchmark files needed)."""

    name = "hostile-mt"
    consistency_grades = 0  # the request counts below are of the verdicts alone (self-consistency: tests/validity)

    def load(self, data_root, limit=None):
        return [EvalItem(f"hostile-mt-{i}", [{"role": "user", "content": f"Question {i}?"}],
                         meta={"category": "writing", "turns": [f"Question {i}?", f"And why {i}?"], "question_id": i})
                for i in range(2)][:limit]


@pytest.fixture
def hostile_task(monkeypatch):
    monkeypatch.setitem(tasks_base._REGISTRY, HostileMT.name, HostileMT)
    return HostileMT.name


def test_answers_survive_a_failing_judge_and_rerun_generates_nothing(server, store, hostile_task):
    answers = get_backend("openai", model="answerer", base_url=server, **FAST)
    _Server.mode = "http-500"
    failed = evaluate("answerer", [hostile_task], backend=answers, judge=get_judge(f"openai:judge@{server}",
                      store=store, **FAST), store=store, progress=False)
    task = failed[hostile_task]
    assert task.status == "failed" and "failed after 4 attempts" in task.error and "HTTP 500" in task.error
    assert _Server.counts == {"answerer": 4, "judge": 4}  # 2 items x 2 turns answered; judge: 1 + 3 retries
    stored = store.query("SELECT item_id, output, score FROM eval_samples ORDER BY item_id")
    assert [r["item_id"] for r in stored] == ["hostile-mt-0", "hostile-mt-1"]
    assert all(r["output"].startswith("an answer to: Question") and r["score"] is None for r in stored)

    _Server.mode = "ok"
    again = evaluate("answerer", [hostile_task], backend=answers, judge=get_judge(f"openai:judge@{server}",
                     store=store, **FAST), store=store, progress=False)
    assert again.ok, [t.error for t in again.tasks]
    assert _Server.counts == {"answerer": 4, "judge": 8}  # zero generation calls the second time
    assert again[hostile_task].metric("score").mean == 7.0
    rows = store.query("SELECT score, output FROM eval_samples ORDER BY item_id")
    assert [r["score"] for r in rows] == [7.0, 7.0] and [r["output"] for r in rows] == [r["output"] for r in stored]


def test_cli_no_judge_cache(server, store, hostile_task, monkeypatch, capsys):
    def run(*extra):
        monkeypatch.setattr(sys, "argv", ["mixlab", "eval", "run", "answerer", "--backend", "openai", "--base-url",
                                          server, "--suite", hostile_task, "--judge", f"openai:judge@{server}",
                                          "--no-resume", "--json", *extra])
        cli.main()
        return json.loads(capsys.readouterr().out)

    run()
    assert _Server.counts["judge"] == 4
    run()  # cached verdicts
    assert _Server.counts["judge"] == 4
    run("--no-judge-cache")
    assert _Server.counts["judge"] == 8


def test_judge_failure_is_a_mixlab_error(server, store):
    _Server.mode = "empty-choices"
    judge = get_judge(f"openai:judge@{server}", store=store, **FAST)
    with pytest.raises(MixlabError, match=r"judge openai:judge failed after 0 of 1 new judgements .* 'choices' is empty"):
        _grade(judge)
    assert _Server.counts["judge"] == 4
