"""Generation backends: torch decode loop vs transformers generate, sampling, stop strings, bad input."""

from __future__ import annotations

import pytest

from mixlab.errors import MixlabError
from mixlab.evals.backends import GenerationConfig, get_backend


def _pair(model, tokenizer, **opts):
    return get_backend("torch", model, tokenizer, **opts), get_backend("hf", model, tokenizer, **opts)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_torch_equals_hf_greedy_llama(llama_model, chat_tokenizer, batch_size, prompts):
    torch_b, hf_b = _pair(llama_model, chat_tokenizer, batch_size=batch_size)
    cfg = GenerationConfig(max_new_tokens=24)
    ours, theirs = torch_b.generate_detailed(prompts, cfg), hf_b.generate_detailed(prompts, cfg)
    assert [g.texts for g in ours] == [g.texts for g in theirs]
    assert [g.output_tokens for g in ours] == [g.output_tokens for g in theirs]
    # Prompts of different lengths really were left-padded together.
    assert len({g.prompt_tokens for g in ours}) == len(prompts)
    assert all(g.output_tokens[0] <= 24 for g in ours)


def test_torch_equals_hf_greedy_mixlab(mixlab_tiny, prompts):
    """mixlab's hybrid cache (KDA conv + recurrent state, compressed MLA KV) under left padding, per-row EOS and
    batch compaction gives exactly transformers' greedy tokens."""
    import copy

    import torch

    model, tokenizer = mixlab_tiny
    torch_b, hf_b = _pair(model, tokenizer, batch_size=4)
    cfg = GenerationConfig(max_new_tokens=20)
    ours, theirs = torch_b.generate_detailed(prompts, cfg), hf_b.generate_detailed(prompts, cfg)
    assert [g.texts for g in ours] == [g.texts for g in theirs]
    assert [g.output_tokens for g in ours] == [g.output_tokens for g in theirs]
    # Make end-of-turn shadow a frequent token so rows stop at different steps and the cache is compacted.
    shadowed = copy.deepcopy(model)
    ids = tokenizer(ours[0].text, add_special_tokens=False)["input_ids"]
    head = shadowed.get_output_embeddings().weight
    with torch.no_grad():
        head[tokenizer.eos_token_id] = head[ids[len(ids) // 3]] * 1.5
    torch_b, hf_b = _pair(shadowed, tokenizer, batch_size=4)
    ours, theirs = torch_b.generate_detailed(prompts, cfg), hf_b.generate_detailed(prompts, cfg)
    lengths = [g.output_tokens[0] for g in ours]
    assert len(set(lengths)) > 1 and "stop" in [g.finish_reasons[0] for g in ours], lengths
    assert torch_b.compact  # the hybrid cache supports dropping rows
    assert [g.texts for g in ours] == [g.texts for g in theirs]
    assert lengths == [g.output_tokens[0] for g in theirs]


def test_batching_does_not_change_greedy_output(llama_model, chat_tokenizer, prompts):
    cfg = GenerationConfig(max_new_tokens=16)
    one = get_backend("torch", llama_model, chat_tokenizer, batch_size=1).generate(prompts, cfg)
    many = get_backend("torch", llama_model, chat_tokenizer, batch_size=4).generate(prompts, cfg)
    no_compact = get_backend("torch", llama_model, chat_tokenizer, batch_size=4, compact=False).generate(prompts, cfg)
    assert one == many == no_compact


def test_sampling_is_seeded_per_row(llama_model, chat_tokenizer, prompts):
    backend = get_backend("torch", llama_model, chat_tokenizer, batch_size=4)
    cfg = GenerationConfig(max_new_tokens=12, temperature=1.0, top_p=0.95, n=3, seed=7)
    first = backend.generate_samples(prompts, cfg)
    assert backend.generate_samples(prompts, cfg) == first  # same seed, same samples
    # A row's samples do not depend on the batch it shares: prompt 0 alone gives the same draws.
    alone = get_backend("torch", llama_model, chat_tokenizer, batch_size=1).generate_samples(prompts[:1], cfg)
    assert alone[0] == first[0]
    assert len(first) == len(prompts) and all(len(s) == 3 for s in first)
    # A random 400-token model sampled at T=1 gives different texts for different seeds.
    other = backend.generate_samples(prompts, cfg.replace(seed=8))
    assert other != first
    # Greedy has a single mode: n copies are equal.
    greedy = backend.generate_samples(prompts[:1], GenerationConfig(max_new_tokens=8, n=2))
    assert greedy[0][0] == greedy[0][1]


def test_stop_strings_and_max_tokens(llama_model, chat_tokenizer, prompts):
    backend = get_backend("torch", llama_model, chat_tokenizer, batch_size=4)
    free = backend.generate_detailed(prompts, GenerationConfig(max_new_tokens=30))
    # Pick a stop string from the middle of the first free-running output so we know it occurs.
    text = free[0].text
    assert len(text) > 6, text
    stop = text[3:5]
    cut = backend.generate_detailed(prompts, GenerationConfig(max_new_tokens=30, stop=(stop,)))
    assert cut[0].text == text[: text.find(stop)]
    assert cut[0].finish_reasons == ["stop"]
    assert cut[0].output_tokens[0] < free[0].output_tokens[0]
    for g_free, g_cut in zip(free, cut):
        assert stop not in g_cut.text
        assert g_free.text.startswith(g_cut.text)
    hf_cut = get_backend("hf", llama_model, chat_tokenizer).generate(prompts, GenerationConfig(max_new_tokens=30, stop=(stop,)))
    assert hf_cut == [g.text for g in cut]
    short = backend.generate_detailed(prompts, GenerationConfig(max_new_tokens=3))
    assert all(g.output_tokens[0] <= 3 for g in short)
    assert any(g.finish_reasons == ["length"] for g in short)


def test_bad_input_is_a_clear_error(llama_model, chat_tokenizer, prompts):
    with pytest.raises(MixlabError, match="unknown backend 'torhc'.*did you mean 'torch'"):
        get_backend("torhc", llama_model, chat_tokenizer)
    backend = get_backend("torch", llama_model, chat_tokenizer)
    with pytest.raises(MixlabError, match="prompt 0"):
        backend.generate(["just a string"], GenerationConfig())
    with pytest.raises(MixlabError, match="unknown role"):
        backend.generate([[{"role": "robot", "content": "x"}]], GenerationConfig())
    with pytest.raises(MixlabError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(MixlabError, match="generate_samples"):
        backend.generate(prompts, GenerationConfig(n=2))


def test_vllm_missing_is_a_clear_error():
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    with pytest.raises(MixlabError, match="needs vLLM"):
        get_backend("vllm", "some/folder")


def test_rows_finish_at_different_steps(llama_eos_model, chat_tokenizer, prompts):
    cfg = GenerationConfig(max_new_tokens=24)
    ours = get_backend("torch", llama_eos_model, chat_tokenizer, batch_size=4).generate_detailed(prompts, cfg)
    reasons = [g.finish_reasons[0] for g in ours]
    lengths = [g.output_tokens[0] for g in ours]
    assert "stop" in reasons, (reasons, lengths)
    assert len(set(lengths)) > 1, lengths
    theirs = get_backend("hf", llama_eos_model, chat_tokenizer, batch_size=4).generate_detailed(prompts, cfg)
    assert [g.texts for g in ours] == [g.texts for g in theirs]
    assert lengths == [g.output_tokens[0] for g in theirs]
    single = get_backend("torch", llama_eos_model, chat_tokenizer, batch_size=1).generate(prompts, cfg)
    assert single == [g.text for g in ours]


def test_sampler_matches_the_softmax_distribution_and_top_p():
    import torch

    from mixlab.evals.backends.torch_backend import row_uniforms, sample_next

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -8.0]])
    n = 20000
    uniforms = row_uniforms([(i, 0) for i in range(n)], seed=3, steps=1)[:, 0]
    draws = sample_next(logits.expand(n, -1).clone(), GenerationConfig(temperature=1.0), uniforms)
    freq = torch.bincount(draws, minlength=5).double() / n
    expected = logits[0].double().softmax(-1)
    assert torch.allclose(freq, expected, atol=0.015), (freq, expected)
    # Temperature 0.5 sharpens; top_p 0.7 keeps only the top two tokens (their mass 0.67 + 0.24 >= 0.7).
    draws = sample_next(logits.expand(n, -1).clone(), GenerationConfig(temperature=1.0, top_p=0.7), uniforms)
    kept = torch.bincount(draws, minlength=5).double() / n
    assert kept[2:].sum() == 0 and abs(kept[0] - expected[0] / expected[:2].sum()) < 0.015
    sharp = sample_next(logits.expand(n, -1).clone(), GenerationConfig(temperature=0.5), uniforms)
    assert (sharp == 0).double().mean() > freq[0] + 0.1
    # The extreme draw u = 1 never selects a zero-probability token.
    edge = sample_next(logits.clone(), GenerationConfig(temperature=1.0, top_p=0.5), torch.tensor([1.0]))
    assert edge.item() == 0


@pytest.mark.gpu
def test_torch_equals_hf_greedy_on_gpu(prompts):
    """On CUDA in fp32 (bf16 MoE sums are not bit-reproducible across batch shapes): same tokens as transformers.
    Verified on an H200 with the 1b-a150m preset by bench/bench_generation.py (64 prompts, identical)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from mixlab.model import load_model, load_tokenizer

    torch.manual_seed(0)
    model = load_model("small", dtype=torch.float32, device="cuda").eval()
    tokenizer = load_tokenizer()
    torch_b, hf_b = _pair(model, tokenizer, batch_size=4)
    cfg = GenerationConfig(max_new_tokens=32)
    assert torch_b.generate(prompts, cfg) == hf_b.generate(prompts, cfg)
