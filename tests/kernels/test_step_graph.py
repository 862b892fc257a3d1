"""StaticBatchStep's bookkeeping on CPU (capture=False runs the same static-buffer step eagerly): gradients live in
fixed tensors and accumulate like autograd's, survive a trainer's zero_grad(set_to_none=True), take over gradients
an eager micro-step left, an optimizer step's first micro-step hands autograd's own gradient tensors over (shared
with the steps of other shapes), and a batch of another shape is refused. The capture itself is tested on a GPU
(the `gpu` test below, and tests/recipes/test_graph_step_gpu.py with a real model)."""

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


def _reference_grads(batches):
    ref = _net()
    ref.zero_grad(set_to_none=True)
    for b in batches:
        _loss(ref)(b)
    return [q.grad for q in ref.parameters()]


def test_first_micro_step_hands_over_autograds_own_tensors():
    net = _net()
    step = StaticBatchStep(_loss(net), list(net.parameters()), capture=False)
    shared = step.grads
    zeros = list(step.grads)
    b = _batches(2)
    net.zero_grad(set_to_none=True)
    step.step(b[0])  # assign: no zero-fill, no add
    assert step.grads is shared  # replaced in place: steps of other shapes hold the same list
    for p, g, z, want in zip(net.parameters(), step.grads, zeros, _reference_grads(b[:1])):
        assert p.grad is g and g is not z and torch.equal(g, want)
    step.step(b[1])  # accumulate into the handed-over tensors
    for p, g, want in zip(net.parameters(), step.grads, _reference_grads(b)):
        assert p.grad is g and torch.equal(g, want)


def test_steps_of_two_shapes_share_gradients_across_assign_and_accumulate():
    net = _net()
    owner = StaticBatchStep(_loss(net), list(net.parameters()), capture=False)
    other = StaticBatchStep(_loss(net), list(net.parameters()), capture=False, grads=owner.grads)
    b4, b3 = _batches(2), _batches(2, B=3)
    # optimizer step 1: the owner's assign, then the other shape accumulates into the same tensors
    net.zero_grad(set_to_none=True)
    owner.step(b4[0])
    other.step(b3[0])
    for p, g, want in zip(net.parameters(), owner.grads, _reference_grads([b4[0], b3[0]])):
        assert p.grad is g and torch.allclose(g, want, atol=1e-7)
    # optimizer step 2 begins with the other shape: it does not own the tensors, so it zeroes and adds into them
    net.zero_grad(set_to_none=True)
    before = list(owner.grads)
    other.step(b3[1])
    owner.step(b4[1])
    assert all(a is b for a, b in zip(owner.grads, before))
    for p, g, want in zip(net.parameters(), owner.grads, _reference_grads([b3[1], b4[1]])):
        assert p.grad is g and torch.allclose(g, want, atol=1e-7)


def test_a_parameter_the_backward_misses_gets_a_zero_gradient():
    net = _net()
    unused = torch.nn.Parameter(torch.ones(3))
    params = [*net.parameters(), unused]
    step = StaticBatchStep(_loss(net), params, capture=False)
    unused.grad = torch.full((3,), 7.0)  # left by some eager code: the accumulate path keeps it
    step.step(_batches(1)[0])
    assert torch.equal(unused.grad, torch.full((3,), 7.0)) and unused.grad is step.grads[-1]
    for p in params:
        p.grad = None
    step.step(_batches(1)[0])  # assign: the missed parameter ends with zeros, as a zero-fill would leave it
    assert unused.grad is step.grads[-1] and torch.equal(unused.grad, torch.zeros(3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graphs_are_captured_again_when_the_gradient_tensors_change():
    """An accumulate graph captured before the owner's assign step hands over new gradient tensors (its own, and that
    of a step of another shape sharing them) writes stale memory unless captured again: the sums must still match."""
    torch.manual_seed(0)
    net = _net().cuda()
    ref = _net().cuda()
    to_cuda = lambda bs: [{k: v.cuda() for k, v in b.items()} for b in bs]
    b4, b3 = to_cuda(_batches(3)), to_cuda(_batches(2, B=3))
    owner = StaticBatchStep(_loss(net), list(net.parameters()))
    other = StaticBatchStep(_loss(net), list(net.parameters()), grads=owner.grads)
    _loss(net)(b4[0])  # an eager micro-step first: both shapes capture their accumulate graphs
    owner.step(b4[1])
    other.step(b3[0])
    first_graph = owner.graph
    net.zero_grad(set_to_none=True)
    owner.step(b4[2])  # assign: captured now, hands over new tensors
    owner.step(b4[2])  # accumulate: captured again
    other.step(b3[1])  # the other shape's accumulate graph: captured again
    assert owner.assign_graph is not None and owner.graph is not first_graph
    for b in (b4[2], b4[2], b3[1]):
        _loss(ref)(b)
    for p, g, q in zip(net.parameters(), owner.grads, ref.parameters()):
        assert p.grad is g
        torch.testing.assert_close(g, q.grad, rtol=1e-5, atol=1e-6)
    # replays only from here: the next optimizer step gives the same sums again
    net.zero_grad(set_to_none=True)
    replays = owner.replays
    owner.step(b4[2])
    owner.step(b4[2])
    other.step(b3[1])
    assert owner.replays == replays + 2
    for g, q in zip(owner.grads, ref.parameters()):
        torch.testing.assert_close(g, q.grad, rtol=1e-5, atol=1e-6)
