"""`mixlab serve` over the engine (concurrent requests share the running batch; capacity errors are 400s) and the
on-device sampler against the distribution it must draw from."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
import torch

from mixlab.evals.backends import GenerationConfig, get_backend
from mixlab.evals.engine.sampling import sample_rows
from mixlab.evals.serve import make_server

from .conftest import PROMPTS


def _post(url, body):
    req = urllib.request.Request(f"{url}/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as response:
        return json.loads(response.read())


def test_serve_requests_share_the_engine_batch(tiny):
    model, tok = tiny
    backend = get_backend("torch", model, tok, batch_size=8)
    server = make_server(backend, port=0, model_name="tiny", max_batch=8, max_tokens_cap=64)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        bodies = [{"messages": p, "max_tokens": 16, "temperature": 0} for p in PROMPTS]
        bodies.append({"messages": PROMPTS[0], "max_tokens": 16, "temperature": 0.9, "seed": 3, "n": 2})
        answers = [None] * len(bodies)

        def call(i):
            answers[i] = _post(url, bodies[i])

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = backend.engine.stats
        assert stats["decode_rows"] > stats["steps"]  # some decode steps carried several requests
        alone = backend.generate_detailed(PROMPTS, GenerationConfig(max_new_tokens=16))
        assert [a["choices"][0]["message"]["content"] for a in answers[:-1]] == [g.texts[0] for g in alone]
        sampled = backend.generate_detailed(PROMPTS[:1], GenerationConfig(max_new_tokens=16, temperature=0.9,
                                                                          seed=3, n=2))[0]
        assert [c["message"]["content"] for c in answers[-1]["choices"]] == sampled.texts  # seed alone decides
        with pytest.raises(urllib.error.HTTPError) as err:  # can never fit: refused at once, server keeps going
            _post(url, {"messages": PROMPTS[0], "max_tokens": 16, "n": 9})
        assert err.value.code == 400 and "slots" in json.loads(err.value.read())["error"]["message"]
        assert _post(url, bodies[0])["choices"][0]["message"]["content"] == alone[0].texts[0]
    finally:
        server.shutdown()
        server.batcher.close()


def test_sampler_draws_from_the_tempered_nucleus():
    torch.manual_seed(0)
    V, N = 6, 40000
    logits = torch.randn(V).expand(N, V).contiguous()
    u = 1.0 - torch.rand(N, dtype=torch.float64)
    t = torch.full((N,), 0.7, dtype=torch.float64)
    greedy = torch.zeros(N, dtype=torch.bool)
    full = sample_rows(logits, greedy, t, torch.ones(N, dtype=torch.float64), u)
    want = (logits[0] / 0.7).softmax(-1)
    got = torch.bincount(full, minlength=V).double() / N
    assert (got - want.double()).abs().max() < 0.01  # ~5 standard errors at N = 40k
    top_p = 0.6
    nucleus = sample_rows(logits, greedy, t, torch.full((N,), top_p, dtype=torch.float64), u)
    order = want.argsort(descending=True)
    keep = order[: int(((want[order].cumsum(0) - want[order]) <= top_p).sum())]
    assert set(nucleus.unique().tolist()) == set(keep.tolist())  # only (and all of) the nucleus
    renorm = want[keep] / want[keep].sum()
    got_nucleus = torch.bincount(nucleus, minlength=V).double()[keep] / N
    assert (got_nucleus - renorm.double()).abs().max() < 0.01
    assert torch.equal(sample_rows(logits, torch.ones(N, dtype=torch.bool), t, t, u), logits.argmax(-1))
