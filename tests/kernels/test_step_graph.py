"""StaticBatchStep's bookkeeping on CPU (capture=False runs the same static-buffer step eagerly): gradients live in
fixed tensors and accumulate like autograd's, survive a trainer's zero_grad(set_to_none=True), take over gradients
an eager micro-step left, and a batch of another shape is refused. The capture itself is tested on a GPU
(tests/recipes/test_graph_step_gpu.py)."""

from __future__ import annotations

import pytest
import torch

from mixlab.errors import MixlabError
from mixlab.kernels.step_graph import StaticBatchStep, batch_signature


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def _batches(n, B=4):
    gen = torch.Generator().manual_seed(1)
    return [{"x": torch.randn(B, 8, generator=gen), "y": torch.randn(B, 1, generator=gen)} for _ in range(n)]


def _loss(net):
    def fn(buf):
        loss = torch.nn.functional.mse_loss(net(buf["x"]), buf["y"])
        loss.backward()
        return loss.detach()
    return fn


def test_static_step_accumulates_like_autograd_and_survives_set_to_none():
    net, ref = _net(), _net()
    step = StaticBatchStep(_loss(net), list(net.parameters()), capture=False)
    b = _batches(3)
    # optimizer step 1: two micro-batches accumulate
    net.zero_grad(set_to_none=True)
    losses = [float(step.step(b[0])), float(step.step(b[1]))]
    ref.zero_grad(set_to_none=True)
    want = [float(_loss(ref)(b[0])), float(_loss(ref)(b[1]))]
    assert losses == want
    for p, q, g in zip(net.parameters(), ref.parameters(), step.grads):
        assert p.grad is g and torch.equal(p.grad, q.grad)
    # optimizer step 2: the trainer set every grad to None; the step zeroes its fixed tensors and reattaches them
    net.zero_grad(set_to_none=True)
    ref.zero_grad(set_to_none=True)
    step.step(b[2])
    _loss(ref)(b[2])
    for p, q, g in zip(net.parameters(), ref.parameters(), step.grads):
        assert p.grad is g and torch.equal(p.grad, q.grad)


def test_gradients_of_an_eager_micro_step_are_taken_over():
    net, ref = _net(), _net()
    step = StaticBatchStep(_loss(net), list(net.parameters()), capture=False)
    b = _batches(3)
    step.step(b[0])  # fixes the signature
    net.zero_grad(set_to_none=True)
    _loss(net)(b[1])  # eager micro-step: autograd allocates fresh .grad tensors
    step.step(b[2])
    for fn_batch in (b[1], b[2]):
        _loss(ref)(fn_batch)
    for p, q, g in zip(net.parameters(), ref.parameters(), step.grads):
        assert p.grad is g and torch.allclose(p.grad, q.grad, atol=1e-7)


def test_another_shape_is_refused():
    net = _net()
    step = StaticBatchStep(_loss(net), list(net.parameters()), capture=False)
    step.step(_batches(1)[0])
    other = _batches(1, B=3)[0]
    assert not step.accepts(other)
    assert batch_signature(other) != step.signature
    with pytest.raises(ValueError, match="signature"):
        step.step(other)


def test_parameters_without_grad_are_left_alone():
    net = _net()
    net[0].bias.requires_grad_(False)
    step = StaticBatchStep(_loss(net), list(net.parameters()), capture=False)
    step.step(_batches(1)[0])
    assert net[0].bias.grad is None and len(step.grads) == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_capture_needs_cuda():
    net = _net()
    with pytest.raises(MixlabError, match="CUDA"):
        StaticBatchStep(_loss(net), list(net.parameters()), capture=True)
