"""The generation engine against its oracles: full recomputation, transformers `generate`, itself alone."""

from __future__ import annotations

import pytest
import torch

from mixlab.errors import MixlabError
from mixlab.evals.backends import GenerationConfig, get_backend
from mixlab.evals.backends.torch_backend import eos_token_ids
from mixlab.evals.engine import CapacityError, Engine
from mixlab.evals.engine.decode import moe_decode
from mixlab.kernels import moe_experts, moe_route
from mixlab.model.cache import PagedHybridCache

from .conftest import PROMPTS


def make_engine(model, tok, **opts) -> Engine:
    opts.setdefault("max_batch", 8)
    return Engine(model, eos_ids=eos_token_ids(model, tok),
                  decode_text=lambda ids: tok.decode(ids, skip_special_tokens=True), **opts)


@torch.no_grad()
def recompute_greedy(model, ids, max_new, eos):
    """The oracle: every token from a full forward over prompt + tokens so far (no cache at all)."""
    seq, out = list(ids), []
    for _ in range(max_new):
        t = int(model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].argmax())
        if t in eos:
            return out, "stop"
        out.append(t)
        seq.append(t)
    return out, "length"


def test_greedy_equals_full_recomputation(shadowed, prompt_ids):
    model, tok = shadowed
    eos = eos_token_ids(model, tok)
    engine = make_engine(model, tok, max_batch=3)  # 5 prompts, 3 rows: later ones join as earlier ones finish
    got = engine.generate(prompt_ids, GenerationConfig(max_new_tokens=24))
    want = [recompute_greedy(model, ids, 24, eos) for ids in prompt_ids]
    assert [g[0] for g in got] == want
    lengths = [len(w[0]) for w in want]
    assert len(set(lengths)) > 1 and "stop" in [w[1] for w in want], lengths  # rows really ended apart
    assert engine.cache.free_slots == 3 and engine.cache.free_blocks == engine.cache.num_blocks  # all returned


@pytest.mark.parametrize("model_fixture", ["tiny", "shadowed"])
def test_equals_transformers_generate(model_fixture, request):
    model, tok = request.getfixturevalue(model_fixture)
    cfg = GenerationConfig(max_new_tokens=20)
    ours = get_backend("torch", model, tok, batch_size=4).generate_detailed(PROMPTS, cfg)
    theirs = get_backend("hf", model, tok, batch_size=4).generate_detailed(PROMPTS, cfg)
    assert [g.texts for g in ours] == [g.texts for g in theirs]
    assert [g.output_tokens for g in ours] == [g.output_tokens for g in theirs]
    assert [g.finish_reasons for g in ours] == [g.finish_reasons for g in theirs]


def test_requests_joining_mid_batch_match_alone(tiny, prompt_ids):
    model, tok = tiny
    cfg = GenerationConfig(max_new_tokens=20)
    sampled = GenerationConfig(max_new_tokens=20, temperature=0.9, top_p=0.9, seed=7, n=2)
    alone = [make_engine(model, tok).generate([ids], c)[0] for ids, c in
             zip(prompt_ids, [cfg, sampled, cfg, sampled, cfg])]
    engine = make_engine(model, tok)
    first = engine.submit(prompt_ids[0], cfg)
    for _ in range(5):
        engine.step()
    joined = [engine.submit(ids, c) for ids, c in zip(prompt_ids[1:], [sampled, cfg, sampled, cfg])]
    engine.step()
    engine.step()
    assert not first.done  # they really shared decode steps
    engine.run_until(lambda: all(r.done for r in [first, *joined]))
    assert [r.outputs for r in [first, *joined]] == alone


def test_sampling_reproducible_and_per_row(tiny, prompt_ids):
    model, tok = tiny
    cfg = GenerationConfig(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=3, n=3)
    a = make_engine(model, tok).generate(prompt_ids[:2], cfg)
    b = make_engine(model, tok, max_batch=3).generate(prompt_ids[:2], cfg)  # other batch composition
    assert a == b
    samples = [t for t, _ in a[0]]
    assert len({tuple(s) for s in samples}) > 1  # n samples differ from each other
    other_seed = make_engine(model, tok).generate(prompt_ids[:2], cfg.replace(seed=4))
    assert other_seed != a
    # The same per-row streams as the plain decode loop: identical samples in fp32.
    loop = get_backend("torch", model, tok, batch_size=4, engine=False).generate_detailed(PROMPTS[:2], cfg)
    eng = get_backend("torch", model, tok, batch_size=4).generate_detailed(PROMPTS[:2], cfg)
    assert [g.texts for g in eng] == [g.texts for g in loop]


def test_backend_grows_the_engine_for_many_samples(tiny):
    model, tok = tiny
    backend = get_backend("torch", model, tok, batch_size=2)
    gens = backend.generate_detailed(PROMPTS[:2], GenerationConfig(max_new_tokens=6, temperature=1.0, n=5))
    assert [len(g.texts) for g in gens] == [5, 5] and backend.engine.max_batch == 5


def test_greedy_n_samples_are_identical(tiny, prompt_ids):
    model, tok = tiny
    one = make_engine(model, tok).generate(prompt_ids[:1], GenerationConfig(max_new_tokens=12))[0]
    many = make_engine(model, tok).generate(prompt_ids[:1], GenerationConfig(max_new_tokens=12, n=3))[0]
    assert many == one * 3


def test_stop_strings_and_eos(tiny):
    model, tok = tiny
    backend = get_backend("torch", model, tok, batch_size=4)
    free = backend.generate_detailed(PROMPTS[:1], GenerationConfig(max_new_tokens=24))[0]
    text = free.texts[0]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = backend.generate_detailed(PROMPTS[:1], GenerationConfig(max_new_tokens=24, stop=(stop,)))[0]
    assert cut.texts[0] == text[: text.index(stop)]
    assert cut.finish_reasons == ["stop"] and free.finish_reasons == ["length"]
    assert cut.output_tokens[0] < free.output_tokens[0]  # generation really stopped early, not just truncated


def test_static_shape_path_matches_eager(shadowed, prompt_ids):
    """The fixed-shape buffers, row buckets, scratch padding rows and block buckets the CUDA graphs replay give the
    same tokens as plain eager decode (run here without capture), greedy and sampled, with rows joining/leaving."""
    model, tok = shadowed
    for cfg in (GenerationConfig(max_new_tokens=40),
                GenerationConfig(max_new_tokens=40, temperature=0.8, top_p=0.9, seed=5, n=2)):
        static = make_engine(model, tok, max_batch=5, static_shapes=True, block_size=4)
        got = static.generate(prompt_ids, cfg)
        assert len(static._graphs) > 2  # several (rows, blocks) buckets were used
        assert got == make_engine(model, tok, max_batch=5, block_size=4).generate(prompt_ids, cfg)


def test_chunked_prefill_matches(tiny, prompt_ids):
    model, tok = tiny
    cfg = GenerationConfig(max_new_tokens=12)
    whole = make_engine(model, tok).generate(prompt_ids, cfg)
    chunked = make_engine(model, tok, max_prefill_tokens=7).generate(prompt_ids, cfg)
    assert chunked == whole


def test_admission_waits_or_refuses(tiny, prompt_ids):
    model, tok = tiny
    cfg = GenerationConfig(max_new_tokens=16)
    cfg_bytes = PagedHybridCache.bytes_per_slot(model.config, torch.float32) * 9
    block = PagedHybridCache.bytes_per_block(model.config, 16, torch.float32)
    longest = max(len(p) for p in prompt_ids) + 16
    # Room for exactly one longest request's blocks: requests wait their turn and still all complete.
    small = make_engine(model, tok, cache_bytes=cfg_bytes + block * (-(-longest // 16)))
    assert small.generate(prompt_ids, cfg) == make_engine(model, tok).generate(prompt_ids, cfg)
    with pytest.raises(CapacityError, match="cache blocks"):
        small.submit(prompt_ids[0], cfg.replace(n=4))
    with pytest.raises(CapacityError, match="max context"):
        make_engine(model, tok, max_context=32).submit(prompt_ids[0], cfg.replace(max_new_tokens=64))
    with pytest.raises(MixlabError, match="empty prompt"):
        small.submit([], cfg)
    with pytest.raises(MixlabError, match="outside the model's vocabulary"):
        small.submit([model.config.vocab_size], cfg)


def test_failed_step_fails_its_requests_and_frees_the_cache(tiny, prompt_ids, monkeypatch):
    model, tok = tiny
    engine = make_engine(model, tok)
    cfg = GenerationConfig(max_new_tokens=8)
    reqs = [engine.submit(ids, cfg) for ids in prompt_ids[:3]]
    reqs.append(engine.submit(prompt_ids[3], cfg.replace(max_new_tokens=1)))  # done at prefill, freed once

    def broken():
        raise RuntimeError("device fault")

    monkeypatch.setattr(engine, "_decode", broken)
    with pytest.raises(RuntimeError):
        engine.step()
    assert all(r.done for r in reqs) and len(reqs[3].outputs[0][0]) == 1
    with pytest.raises(RuntimeError, match="device fault"):
        reqs[0].outputs
    assert engine.cache.free_slots == engine.cache.num_slots and engine.cache.free_blocks == engine.cache.num_blocks
    assert len(set(engine.cache._free_blocks)) == engine.cache.num_blocks  # nothing freed twice
    monkeypatch.undo()
    assert engine.generate(prompt_ids[:1], cfg) == make_engine(model, tok).generate(prompt_ids[:1], cfg)


def test_weights_updated_in_place_are_seen(tiny, prompt_ids):
    import copy

    model, tok = tiny
    model = copy.deepcopy(model)
    engine = make_engine(model, tok)
    cfg = GenerationConfig(max_new_tokens=12)
    before = engine.generate(prompt_ids[:2], cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    after = engine.generate(prompt_ids[:2], cfg)
    assert after != before
    assert after == make_engine(model, tok).generate(prompt_ids[:2], cfg)


def test_inplace_kda_step_equals_kernel():
    from mixlab.kernels.kda_decode import kda_step_inplace
    from mixlab.kernels import recurrent_kda_step

    torch.manual_seed(0)
    B, H, K = 3, 2, 8
    q, k, v = (torch.randn(B, 1, H, K, dtype=torch.float64) for _ in range(3))
    g = -torch.rand(B, 1, H, K, dtype=torch.float64)
    beta = torch.rand(B, 1, H, dtype=torch.float64)
    state = torch.randn(B, H, K, K, dtype=torch.float64)
    want_o, want_state = recurrent_kda_step(q, k, v, g, beta, state, scale=K**-0.5, use_qk_l2norm=True)
    got_state = state.clone()
    got_o = kda_step_inplace(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], got_state, K**-0.5)
    torch.testing.assert_close(got_o, want_o[:, 0].to(got_o.dtype), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_state, want_state.to(got_state.dtype), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["gather", "dense"])
def test_moe_decode_forms_equal_kernel(mode):
    torch.manual_seed(0)
    N, D, I, E, k = 6, 16, 24, 8, 2
    x = torch.randn(N, D, dtype=torch.float64)
    w1, w3 = torch.randn(E, I, D, dtype=torch.float64), torch.randn(E, I, D, dtype=torch.float64)
    w2 = torch.randn(E, D, I, dtype=torch.float64)
    idx, weight = moe_route(torch.randn(N, E), None, k, scaling=2.0)
    want = moe_experts(x, w1, w3, w2, idx, weight.double())
    got = moe_decode(x, w1, w3, w2, idx, weight.double(), mode)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_graphs(tiny, prompt_ids, dtype):
    """CUDA graphs replay what eager decode computes; fp32 greedy equals full recomputation on the GPU too."""
    import copy

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model, tok = tiny
    model = copy.deepcopy(model).to("cuda", dtype)
    cfg = GenerationConfig(max_new_tokens=20)
    graphed = make_engine(model, tok, cuda_graphs=True)
    got = graphed.generate(prompt_ids, cfg)
    assert graphed.stats["graph_captures"] > 0
    # Same shapes without capture: the replay must compute exactly what the eager kernels compute.
    eager = make_engine(model, tok, cuda_graphs=False, static_shapes=True).generate(prompt_ids, cfg)
    assert got == eager
    sampled = GenerationConfig(max_new_tokens=20, temperature=0.8, top_p=0.9, seed=1, n=2)
    assert graphed.generate(prompt_ids, sampled) == make_engine(
        model, tok, cuda_graphs=False, static_shapes=True).generate(prompt_ids, sampled)
    if dtype == torch.float32:
        eos = eos_token_ids(model, tok)
        with torch.no_grad():
            want = [recompute_greedy_cuda(model, ids, 20, eos) for ids in prompt_ids]
        assert [g[0] for g in got] == want


def recompute_greedy_cuda(model, ids, max_new, eos):
    seq, out = list(ids), []
    for _ in range(max_new):
        t = int(model(input_ids=torch.tensor([seq], device="cuda"), use_cache=False).logits[0, -1].argmax())
        if t in eos:
            return out, "stop"
        out.append(t)
        seq.append(t)
    return out, "length"


def test_engine_moe_override_refuses_typos(monkeypatch):
    from mixlab.evals.engine.decode import moe_mode

    cuda = torch.device("cuda")  # moe_mode only reads the device type
    monkeypatch.setenv("MIXLAB_ENGINE_MOE", "gather")
    assert moe_mode(cuda, 64, 3, 48) == "gather"
    monkeypatch.setenv("MIXLAB_ENGINE_MOE", "fsued")
    with pytest.raises(MixlabError, match="MIXLAB_ENGINE_MOE='fsued'.*did you mean 'fused'"):
        moe_mode(cuda, 64, 3, 48)
    monkeypatch.delenv("MIXLAB_ENGINE_MOE")
    monkeypatch.setenv("MIXLAB_FUSED_DECODE", "0")
    assert moe_mode(cuda, 64, 3, 48) == "dense" and moe_mode(cuda, 4, 3, 48) == "gather"
    monkeypatch.setenv("MIXLAB_FUSED_DECODE", "1")
    assert moe_mode(cuda, 4, 3, 48) == "fused" and moe_mode(torch.device("cpu"), 4, 3, 48) == "sparse"
