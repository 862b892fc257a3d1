"""Packed / padded / cached forwards must equal the plain per-sequence forward."""

from __future__ import annotations

import os

import pytest
import torch

from mixlab.errors import MixlabError

ATOL = 2e-5


def _seqs(lengths, seed=1, vocab=1000):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g) for n in lengths]


@torch.no_grad()
def _single_logits(model, seqs):
    return [model(s[None]).logits[0] for s in seqs]


@torch.no_grad()
def test_packed_cu_seqlens_equals_unpacked(tiny_model):
    seqs = _seqs([7, 40, 1, 23])  # crosses the KDA chunk (32) and the conv window; includes a 1-token doc
    ref = _single_logits(tiny_model, seqs)
    packed = torch.cat(seqs)[None]
    cu = torch.tensor([0, 7, 47, 48, 71])
    out = tiny_model(packed, cu_seqlens=cu).logits[0]
    for got, want in zip(out.split([7, 40, 1, 23]), ref):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@torch.no_grad()
def test_packed_equals_unpacked_on_the_triton_fast_path(tiny_model, monkeypatch):
    """The GPU's fast path, every Triton kernel in the interpreter (forced on CPU): packed sequences read by the
    fused short conv as column slices of the joint projection, mixlab's varlen KDA, the fused MoE Function. On an
    H100 this comparison once differed by 0.26 (wave 11; see tests/model/test_gpu.py); here it must be exact."""
    import importlib

    from mixlab.kernels.dispatch import triton_available

    if not triton_available() or os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs triton's interpreter (TRITON_INTERPRET=1, set by tests/conftest.py)")
    dispatch, moe = (importlib.import_module(f"mixlab.kernels.{m}") for m in ("dispatch", "moe"))
    kda, conv = (importlib.import_module(f"mixlab.kernels.{m}") for m in ("kda_triton", "short_conv"))
    # the process-wide switches as on a GPU (a recipe run in this process may have left the backend on "torch")
    monkeypatch.setattr(dispatch, "_backend", "auto")
    monkeypatch.setattr(dispatch, "_fused", True)
    monkeypatch.setattr(conv, "FUSED_SHORT_CONV", True)
    monkeypatch.setattr(dispatch, "fast_path", lambda *tensors: True)  # CPU tensors too
    monkeypatch.setattr(moe, "fast_path", lambda *tensors: True)
    monkeypatch.setenv("MIXLAB_KDA_BACKEND", "triton")
    ran = {"kda_varlen": 0, "conv": 0}

    def counted(fn, key, varlen_only=False):
        def wrapper(*args, **kwargs):
            if not varlen_only or kwargs.get("cu_seqlens") is not None:
                ran[key] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(kda, "chunk_kda_triton", counted(kda.chunk_kda_triton, "kda_varlen", varlen_only=True))
    monkeypatch.setattr(conv, "short_conv_triton", counted(conv.short_conv_triton, "conv"))
    lens = [7, 40, 1, 23]
    seqs = _seqs(lens)
    ref = _single_logits(tiny_model, seqs)
    out = tiny_model(torch.cat(seqs)[None], cu_seqlens=torch.tensor([0, 7, 47, 48, 71])).logits[0]
    assert ran["kda_varlen"] > 0 and ran["conv"] > 0, ran  # the packed forward really took the Triton kernels
    for got, want in zip(out.split(lens), ref):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@torch.no_grad()
def test_packed_position_id_resets_equal_unpacked(tiny_model):
    """TRL padding-free packing passes only position_ids that restart at 0 per document."""
    lens = [12, 33, 5]
    seqs = _seqs(lens, seed=2)
    ref = _single_logits(tiny_model, seqs)
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    out = tiny_model(torch.cat(seqs)[None], position_ids=pos).logits[0]
    for got, want in zip(out.split(lens), ref):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    # Without the boundaries the documents leak into each other: the test can fail.
    leaked = tiny_model(torch.cat(seqs)[None]).logits[0].split(lens)
    assert (leaked[1] - ref[1]).abs().max() > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_per_sample(tiny_model, side):
    lens = [9, 30, 17]
    seqs = _seqs(lens, seed=3)
    ref = _single_logits(tiny_model, seqs)
    T = max(lens)
    ids = torch.full((3, T), 1023)
    mask = torch.zeros(3, T, dtype=torch.long)
    for b, s in enumerate(seqs):
        sl = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        ids[b, sl] = s
        mask[b, sl] = 1
    out = tiny_model(ids, attention_mask=mask).logits
    for b, s in enumerate(seqs):
        sl = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        torch.testing.assert_close(out[b, sl], ref[b], atol=ATOL, rtol=0)


@torch.no_grad()
def test_padding_is_excluded_from_expert_load(tiny_model):
    ids = torch.randint(0, 1000, (2, 20))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[0, :15] = 0  # 15 left-padding tokens
    tiny_model.reset_expert_load()
    tiny_model(ids, attention_mask=mask)
    counts = tiny_model.model._load_counts
    k = tiny_model.config.num_experts_per_token
    assert counts and all(int(c.sum()) == (40 - 15) * k for c in counts.values())


@torch.no_grad()
def test_greedy_decoding_with_cache_equals_recomputation(tiny_model):
    prompt = _seqs([11], seed=4)[0][None]
    steps = 40  # decode past the KDA chunk size and the prompt length
    cache_ids = tiny_model.generate(prompt, max_new_tokens=steps, do_sample=False, min_new_tokens=steps)
    ids = prompt
    for _ in range(steps):  # no cache: full recomputation each step
        nxt = tiny_model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    assert torch.equal(cache_ids, ids)


@torch.no_grad()
def test_cached_logits_match_full_forward(tiny_model):
    """Prefill + several 1-token steps + one multi-token chunk through the cache == one full forward."""
    seq = _seqs([50], seed=5)[0][None]
    full = tiny_model(seq, use_cache=False).logits
    cache = tiny_model.new_cache(1)
    pieces = [tiny_model(seq[:, :20], past_key_values=cache, use_cache=True).logits]
    for t in range(20, 25):
        pieces.append(tiny_model(seq[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
    pieces.append(tiny_model(seq[:, 25:], past_key_values=cache, use_cache=True).logits)  # chunked continuation
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=ATOL, rtol=0)
    # The MLA cache holds the compressed latent (kv_lora_rank + rope dims), not expanded K/V.
    cfg = tiny_model.config
    mla = [i for i in range(cfg.num_hidden_layers) if not cfg.is_kda_layer(i)]
    assert cache.latents[mla[0]].shape == (1, 50, cfg.kv_lora_rank + cfg.qk_rope_head_dim)
    kda = [i for i in range(cfg.num_hidden_layers) if cfg.is_kda_layer(i)]
    assert cache.recurrent_states[kda[0]].dtype == torch.float32
    assert cache.recurrent_states[kda[0]].shape == (1, cfg.kda_num_heads, cfg.kda_head_dim, cfg.kda_head_dim)
    assert cache.conv_states[kda[0]][0].shape == (1, cfg.kda_num_heads * cfg.kda_head_dim, 3)
    assert cache.get_seq_length() == 50


@torch.no_grad()
def test_batched_left_padded_generation_equals_per_sample(tiny_model):
    from mixlab.model import load_tokenizer

    tok = load_tokenizer()
    prompts = ["What is 12 + 7?", "Write a function that returns the largest value in a list of numbers.", "Hi"]
    enc = tok(prompts, return_tensors="pt", padding=True)
    assert tok.padding_side == "left" and (enc["attention_mask"] == 0).any()
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None)
    batched = tiny_model.generate(**enc, **kw)
    T = enc["input_ids"].shape[1]
    for b, p in enumerate(prompts):
        single = tiny_model.generate(**tok([p], return_tensors="pt"), **kw)
        assert torch.equal(batched[b, T:], single[0, single.shape[1] - 12 :]), p


def test_continuation_with_padding_is_rejected(tiny_model):
    cache = tiny_model.new_cache(1)
    tiny_model(torch.tensor([[1, 2, 3]]), past_key_values=cache, use_cache=True)
    with pytest.raises(MixlabError, match="padding"):
        tiny_model(torch.tensor([[4, 5]]), attention_mask=torch.tensor([[1, 1, 1, 0, 1]]), past_key_values=cache)
