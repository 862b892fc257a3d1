"""GPU check (run by the lead on a GPU box): 1b-a150m forward + backward in bf16 on CUDA."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.gpu
def test_1b_a150m_forward_backward_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from mixlab.model import load_model

    model = load_model("1b-a150m", dtype=torch.bfloat16, device="cuda", seed=0).train()
    model.gradient_checkpointing_enable()
    ids = torch.randint(0, model.config.vocab_size - 8, (2, 512), device="cuda")
    pos = torch.cat([torch.arange(300), torch.arange(212)]).to("cuda")[None].expand(2, -1)  # 2 docs per row
    out = model(ids, position_ids=pos, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
    assert model.model.layers[0].self_attn.A_log.dtype == torch.float32
    print(f"{torch.cuda.get_device_name()}: loss {out.loss.item():.4f}, "
          f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


@pytest.mark.gpu
def test_triton_backend_packing_and_cache_match_on_cuda(monkeypatch):
    """On the fast path (fused conv reading packed sequences, joint projections, fused MoE): packed == unpacked
    logits, and cached greedy decoding == full recomputation.

    KDA runs on its exact fp32 reference here. The Triton KDAs (mixlab's, fla's) run fp32 dots in TF32, and this
    randomly initialised routed model is discontinuous at that noise level: 1e-3 relative noise on q, k, v flips
    expert choices and moves logits by up to 0.66 (1e-5 noise: 1.6e-4), measured on CPU. With mixlab's KDA the
    packed and unpacked runs differed by 0.26 in one sequence on an H100 (wave 11): what such a flip gives, though
    the flip itself was not isolated on a GPU. The Triton KDAs' packed sequences are tested against the reference
    directly (tests/kernels/test_kda_triton.py, at these lengths)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from mixlab.kernels import get_backend, set_backend
    from mixlab.model import load_model

    monkeypatch.setenv("MIXLAB_KDA_BACKEND", "torch")
    previous = get_backend()
    set_backend("auto")  # the fast path on CUDA; "triton" would also demand fla-core, which this test no longer uses
    try:
        model = load_model("small", device="cuda", seed=0).eval()
        g = torch.Generator(device="cuda").manual_seed(0)
        lens = [70, 130, 33]
        seqs = [torch.randint(0, 1000, (n,), device="cuda", generator=g) for n in lens]
        with torch.no_grad():
            ref = [model(s[None]).logits[0] for s in seqs]
            pos = torch.cat([torch.arange(n, device="cuda") for n in lens])[None]
            packed = model(torch.cat(seqs)[None], position_ids=pos).logits[0].split(lens)
            for got, want in zip(packed, ref):
                torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)
            prompt = seqs[0][None, :20]
            out = model.generate(prompt, max_new_tokens=24, min_new_tokens=24, do_sample=False)
            ids = prompt
            for _ in range(24):
                ids = torch.cat([ids, model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], 1)
        assert torch.equal(out, ids)
    finally:
        set_backend(previous)
