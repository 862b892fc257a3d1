"""`joint_linear` (several projections of one input as one GEMM on the fast path) against separate Linears: the op,
and the whole model with its KDA input projections and SwiGLU gate/up joined. On CPU the fast path is forced by
patching the op's `use_fused` check: the math is plain torch either way."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from mixlab.kernels import joint_linear
from mixlab.model import load_model

jl = importlib.import_module("mixlab.kernels.joint_linear")  # the package attribute of that name is the function


@pytest.fixture
def joined(monkeypatch):
    monkeypatch.setattr(jl, "use_fused", lambda *tensors: True)


def _grads(fn, leaves):
    outs = fn()
    gen = torch.Generator().manual_seed(0)
    loss = sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outs)
    return [o.detach() for o in outs], torch.autograd.grad(loss, leaves)


def test_joint_linear_matches_separate_values_and_grads(joined):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 16, generator=gen, requires_grad=True)
    ws = [torch.randn(n, 16, generator=gen, requires_grad=True) for n in (8, 8, 3, 1)]
    got, g_got = _grads(lambda: joint_linear(x, ws), [x, *ws])
    want, g_want = _grads(lambda: [F.linear(x, w) for w in ws], [x, *ws])
    assert not got[1].is_contiguous()  # a column slice of the one GEMM's output: the joint path ran
    assert got[0].stride(-2) == jl.ROW_ALIGN  # 20 outputs padded to one aligned row
    for a, b in zip(got + list(g_got), want + list(g_want)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _model_loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_model_with_joined_projections_matches(monkeypatch):
    model = load_model("tiny", seed=3).train()
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(4))
    loss_ref, grads_ref = _model_loss_and_grads(model, ids)
    monkeypatch.setattr(jl, "use_fused", lambda *tensors: True)
    loss, grads = _model_loss_and_grads(model, ids)
    torch.testing.assert_close(loss, loss_ref, atol=1e-5, rtol=1e-5)
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], atol=1e-5, rtol=1e-4, msg=name)


def test_hooked_projection_is_not_joined(joined):
    """A forward hook (an adapter, FSDP on the Linear itself) must run: that Linear's layer keeps separate calls."""
    model = load_model("tiny", seed=3).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        base = model(input_ids=ids).logits
        kda = next(m for m in model.modules() if type(m).__name__ == "KimiDeltaAttention")
        handle = kda.q_proj.register_forward_hook(lambda mod, inp, out: out * 0)
        hooked = model(input_ids=ids).logits
        handle.remove()
    assert not torch.allclose(base, hooked)
