"""rms_norm and gated_rms_norm against hand formulas, fp32 compute, output dtype."""

from __future__ import annotations

import pytest
import torch

from mixlab.errors import MixlabError
from mixlab.kernels import gated_rms_norm, rms_norm


def test_rms_norm_hand_formula():
    x = torch.tensor([[3.0, 4.0]])  # mean square 12.5
    w = torch.tensor([1.0, 2.0])
    y = rms_norm(x, w, eps=0.0)
    r = 12.5**-0.5
    torch.testing.assert_close(y, torch.tensor([[3.0 * r, 8.0 * r]]))
    xb = torch.randn(4, 16).bfloat16()
    yb = rms_norm(xb, torch.ones(16), 1e-6)
    assert yb.dtype == torch.bfloat16


def test_gated_rms_norm_hand_formula():
    x = torch.tensor([[1.0, -2.0, 2.0]])  # mean square 3
    w = torch.tensor([1.0, 0.5, 2.0])
    gate = torch.tensor([[0.0, 100.0, -1.0]])
    eps = 1e-5
    r = (3.0 + eps) ** -0.5
    sig = [0.5, 1.0, 1 / (1 + 2.718281828459045)]
    expected = torch.tensor([[1.0 * r * 1.0 * sig[0], -2.0 * r * 0.5 * sig[1], 2.0 * r * 2.0 * sig[2]]])
    torch.testing.assert_close(gated_rms_norm(x, w, gate, eps), expected)
    silu = gated_rms_norm(x, w, gate, eps, activation="silu")
    torch.testing.assert_close(silu, x * r * w * gate * torch.sigmoid(gate))


def test_gated_rms_norm_bf16_computes_in_fp32():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 64) * 100
    gate = torch.randn(2, 3, 4, 64)
    w = torch.rand(64)
    yb = gated_rms_norm(x.bfloat16(), w, gate.bfloat16(), 1e-5)
    assert yb.dtype == torch.bfloat16
    ref = gated_rms_norm(x.bfloat16().float(), w, gate.bfloat16().float(), 1e-5)
    torch.testing.assert_close(yb.float(), ref, atol=1e-2, rtol=1e-2)
    with pytest.raises(MixlabError, match="activation"):
        gated_rms_norm(x, w, gate, activation="relu")
    with pytest.raises(MixlabError, match="gate shape"):
        gated_rms_norm(x, w, gate[..., :3])
