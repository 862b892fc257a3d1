"""short_conv: equals a plain causal conv, continues from its cache, and never leaks across packed sequences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixlab.errors import MixlabError
from mixlab.kernels import short_conv

D, W = 6, 4


def reference(x, weight, activation=True):
    """nn.Conv1d-style causal depthwise conv: left-pad W-1 zeros, then SiLU."""
    y = F.conv1d(F.pad(x.transpose(1, 2), (W - 1, 0)), weight, groups=x.shape[-1]).transpose(1, 2)
    return F.silu(y) if activation else y


@pytest.fixture
def weight():
    return torch.randn(D, 1, W, generator=torch.Generator().manual_seed(3))


def test_full_conv_matches_reference(weight):
    x = torch.randn(2, 11, D)
    y, cache = short_conv(x, weight, output_final_state=True)
    torch.testing.assert_close(y, reference(x, weight))
    torch.testing.assert_close(cache, x[:, -(W - 1):].transpose(1, 2))
    y_lin, none = short_conv(x, weight, activation=None)
    torch.testing.assert_close(y_lin, reference(x, weight, activation=False))
    assert none is None


def test_cache_continuation_equals_full_conv(weight):
    x = torch.randn(2, 13, D)
    full, _ = short_conv(x, weight)
    # chunked prefill (5 + 2 tokens) then token-by-token decode
    y1, c = short_conv(x[:, :5], weight, output_final_state=True)
    y2, c = short_conv(x[:, 5:7], weight, cache=c, output_final_state=True)
    ys = [y1, y2]
    for t in range(7, 13):
        y_t, c = short_conv(x[:, t : t + 1], weight, cache=c, output_final_state=True)
        ys.append(y_t)
    torch.testing.assert_close(torch.cat(ys, 1), full)


def test_short_sequence_cache_is_zero_padded(weight):
    x = torch.randn(1, 2, D)
    _, c = short_conv(x, weight, output_final_state=True)
    assert c.shape == (1, D, W - 1)
    assert torch.all(c[..., 0] == 0)
    torch.testing.assert_close(c[0, :, 1:], x[0].T)


def test_cu_seqlens_no_leak_and_per_sequence_cache(weight):
    lens = [3, 1, 8, 2]
    xs = [torch.randn(1, n, D) for n in lens]
    cu = torch.tensor([0, 3, 4, 12, 14])
    y, c = short_conv(torch.cat(xs, 1), weight, cu_seqlens=cu, output_final_state=True)
    assert c.shape == (4, D, W - 1)
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        y_i, c_i = short_conv(xs[i], weight, output_final_state=True)
        torch.testing.assert_close(y[:, a:b], y_i)
        torch.testing.assert_close(c[i : i + 1], c_i)


def test_cu_seqlens_with_cache_continues_each_sequence(weight):
    # two sequences prefilled separately, then their continuations packed together with the stacked caches
    a, b = torch.randn(1, 9, D), torch.randn(1, 6, D)
    _, ca = short_conv(a[:, :5], weight, output_final_state=True)
    _, cb = short_conv(b[:, :2], weight, output_final_state=True)
    packed = torch.cat((a[:, 5:], b[:, 2:]), 1)
    y, c = short_conv(packed, weight, cache=torch.cat((ca, cb)), cu_seqlens=torch.tensor([0, 4, 8]),
                      output_final_state=True)
    torch.testing.assert_close(y[:, :4], short_conv(a, weight)[0][:, 5:])
    torch.testing.assert_close(y[:, 4:], short_conv(b, weight)[0][:, 2:])
    torch.testing.assert_close(c[0], a[0, -3:].T)
    torch.testing.assert_close(c[1], b[0, -3:].T)


def test_cu_seqlens_gradients_do_not_leak(weight):
    x = torch.randn(1, 10, D, requires_grad=True)
    y, _ = short_conv(x, weight, cu_seqlens=torch.tensor([0, 4, 10]))
    y[:, 4:].sum().backward()
    assert x.grad[:, :4].abs().max() == 0
    assert x.grad[:, 4:].abs().min() > 0


def test_bf16_and_errors(weight):
    x = torch.randn(2, 7, D).bfloat16()
    y, c = short_conv(x, weight, output_final_state=True)
    assert y.dtype == torch.bfloat16 and c.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), reference(x.float(), weight), atol=2e-2, rtol=2e-2)
    with pytest.raises(MixlabError, match="cache"):
        short_conv(x, weight, cache=torch.zeros(2, D, W))
    with pytest.raises(MixlabError, match="batch size must be 1"):
        short_conv(x, weight, cu_seqlens=torch.tensor([0, 7]))
    with pytest.raises(MixlabError, match="activation"):
        short_conv(x, weight, activation="gelu")


@pytest.mark.parametrize("activation", ["silu", None])
def test_gradients_match_autograd_reference(activation):
    # short_conv's backward is hand-written (a forward conv for d x, reductions for d w): check it against
    # autograd through F.conv1d, with a cache, and by gradcheck on the packed path.
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 7, D, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(D, 1, W, generator=gen, dtype=torch.float64, requires_grad=True)
    cache = torch.randn(2, D, W - 1, generator=gen, dtype=torch.float64, requires_grad=True)
    proj = torch.randn(2, 7, D, generator=gen, dtype=torch.float64)
    y, _ = short_conv(x, w, cache=cache, activation=activation)
    grads = torch.autograd.grad((y * proj).sum(), (x, w, cache))
    pre = F.conv1d(torch.cat((cache, x.transpose(1, 2)), -1), w, groups=D).transpose(1, 2)
    y_ref = F.silu(pre) if activation else pre
    grads_ref = torch.autograd.grad((y_ref * proj).sum(), (x, w, cache))
    torch.testing.assert_close(y, y_ref)
    for name, a, b in zip(["x", "weight", "cache"], grads, grads_ref):
        torch.testing.assert_close(a, b, msg=f"grad of {name}")
    xp = torch.randn(1, 6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    wp = torch.randn(3, 1, W, generator=gen, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, 2, 6])
    assert torch.autograd.gradcheck(lambda a, b: short_conv(a, b, cu_seqlens=cu, activation=activation)[0], (xp, wp))
