"""mixlab's own fused Triton kernels against their pure-torch references, outputs and gradients.

Without a GPU these run in the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1): small shapes, CPU
tensors. The interpreter rounds fp32→bf16 by truncation (the GPU rounds to nearest), so bf16 cases compare at a
few bf16 ulps and fp32 cases tightly.
"""

from __future__ import annotations

import os

import pytest
import torch

from mixlab.kernels import kda_gate
from mixlab.kernels.dispatch import triton_available
from mixlab.kernels.norm import gated_rms_norm_torch, rms_norm_torch

if not triton_available() or not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
    pytest.skip("needs triton (GPU, or TRITON_INTERPRET=1 on CPU)", allow_module_level=True)

from mixlab.kernels.kda_gate_triton import kda_gate_triton  # noqa: E402
from mixlab.kernels.moe import _combine_torch  # noqa: E402
from mixlab.kernels.moe_triton import combine_triton, swiglu_triton  # noqa: E402
from mixlab.kernels.norm_triton import gated_rms_norm_triton, rms_norm_triton  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _run(fn, inputs, seed):
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*leaves)
    gen = torch.Generator(device=DEV).manual_seed(seed)
    proj = torch.randn(out.shape, generator=gen, device=DEV)
    grads = torch.autograd.grad((out.float() * proj).sum(), [t for t in leaves if t.requires_grad])
    return [out.detach()] + list(grads)


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def _compare(got, want, names, tol):
    assert len(got) == len(want)
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert torch.isfinite(a).all(), name
        assert _rel(a, b) < tol, (name, _rel(a, b))


def _randn(*shape, dtype=torch.float32, scale=1.0, seed=0):
    gen = torch.Generator(device=DEV).manual_seed(seed)
    return (torch.randn(*shape, generator=gen, device=DEV) * scale).to(dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_rms_norm(dtype, tol):
    x = _randn(3, 7, 96, dtype=dtype, seed=1)  # 96: not a power of two (masked columns)
    w = (torch.rand(96, device=DEV) + 0.5).to(dtype)
    got = _run(lambda x, w: rms_norm_triton(x, w, 1e-6), [x, w], seed=2)
    want = _run(lambda x, w: rms_norm_torch(x, w, 1e-6), [x, w], seed=2)
    _compare(got, want, ["y", "dx", "dw"], tol)


@pytest.mark.parametrize("activation", ["sigmoid", "silu"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_gated_rms_norm(activation, dtype, tol):
    x = _randn(2, 9, 3, 64, dtype=dtype, seed=3)
    g = _randn(2, 9, 3, 64, dtype=dtype, seed=4, scale=2.0)
    w = torch.rand(64, device=DEV) + 0.5  # fp32 weight with bf16 activations, as in the model
    got = _run(lambda x, w, g: gated_rms_norm_triton(x, w, g, 1e-5, activation), [x, w, g], seed=5)
    want = _run(lambda x, w, g: gated_rms_norm_torch(x, w, g, 1e-5, activation), [x, w, g], seed=5)
    _compare(got, want, ["y", "dx", "dw", "dgate"], tol)


@pytest.mark.parametrize("with_dt", [True, False])
def test_kda_gate(with_dt):
    H, K = 3, 32
    f = _randn(2, 11, H * K, dtype=torch.bfloat16, scale=8.0, seed=6)  # wide range: both softplus branches
    f[0, 0, :4] = torch.tensor([30.0, -30.0, 19.9, 20.1])
    A_log = torch.log(torch.empty(1, 1, H, 1, device=DEV).uniform_(1, 16))
    dt = _randn(H * K, seed=7) * 2 - 3
    inputs = [f, A_log] + ([dt] if with_dt else [])

    def ours(f, A, dt=None):
        return kda_gate_triton(f, A, dt, H, K)

    got = _run(ours, inputs, seed=8)
    want = _run(kda_gate, inputs, seed=8)
    assert got[0].dtype == torch.float32 and got[0].shape == (2, 11, H, K)
    _compare(got, want, ["g", "df", "dA_log", "ddt_bias"][: len(got)], 1e-5 if DEV == "cuda" else 1e-2)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)  # the fp32 forward is exact to rounding


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_swiglu(dtype, tol):
    a = _randn(37, 50, dtype=dtype, scale=3.0, seed=9)
    b = _randn(37, 50, dtype=dtype, seed=10)
    got = _run(swiglu_triton, [a, b], seed=11)
    want = _run(lambda a, b: torch.nn.functional.silu(a) * b, [a, b], seed=11)
    _compare(got, want, ["y", "da", "db"], tol)


def test_moe_combine():
    N, k, D = 19, 3, 40
    y = _randn(N * k, D, seed=12)
    inv = torch.randperm(N * k, generator=torch.Generator().manual_seed(0)).to(DEV).view(N, k)
    w = torch.rand(N, k, device=DEV)
    got = _run(lambda y, w: combine_triton(y, inv, w, torch.float32), [y, w], seed=13)
    want = _run(lambda y, w: _combine_torch(y, inv, w, torch.float32), [y, w], seed=13)
    _compare(got, want, ["out", "dy", "dw"], 1e-6)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("W,rows", [(4, 27), (3, 300)])  # 300 rows: 10 row blocks, several per backward program
def test_short_conv(packed, activation, W, rows):
    from mixlab.kernels.short_conv import short_conv
    from mixlab.kernels.short_conv_triton import short_conv_triton

    D = 40
    if packed:  # packed sequences, one shorter than the kernel: nothing may leak across them
        x = _randn(1, rows - 4, D, seed=14)
        cu = torch.tensor([0, 2, 13, 40 if rows > 27 else 23] + ([rows - 4] if rows > 27 else []), device=DEV)
    else:
        x = _randn(3, rows // 3, D, seed=14)
        cu = None
    w = _randn(D, 1, W, seed=15) * 0.5

    got = _run(lambda x, w: short_conv_triton(x, w, cu, activation), [x, w], seed=16)
    want = _run(lambda x, w: short_conv(x, w, cu_seqlens=cu, activation=activation)[0], [x, w], seed=16)
    _compare(got, want, ["y", "dx", "dw"], 1e-5)
    if packed:  # the second sequence's first output sees only its own first token
        y = got[0]
        torch.testing.assert_close(y[0, 2], _act(x[0, 2] * w[:, 0, W - 1], activation), atol=1e-5, rtol=1e-5)


def _act(z, activation):
    return torch.nn.functional.silu(z) if activation == "silu" else z


@pytest.mark.parametrize("packed", [False, True])
def test_short_conv_row_strided_input(packed):
    """x as a column slice of a wider tensor (a joint projection's output): read in place, same values and
    gradients as the contiguous copy, and the gradient lands in the slice's columns only."""
    from mixlab.kernels.short_conv_triton import short_conv_triton

    D, W = 24, 4
    wide = _randn(1 if packed else 2, 40, 3 * D + 5, seed=17)
    cu = torch.tensor([0, 3, 40], device=DEV) if packed else None
    w = _randn(D, 1, W, seed=18) * 0.5
    x_view = wide.detach()[..., D : 2 * D].requires_grad_(True)  # a strided leaf: row stride 3D + 5
    assert x_view.stride(-2) == 3 * D + 5 and not x_view.is_contiguous()
    x_copy = x_view.detach().contiguous().requires_grad_(True)
    w_a, w_b = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
    proj = _randn(*x_view.shape, seed=19)
    y_view = short_conv_triton(x_view, w_a, cu, "silu")
    y_copy = short_conv_triton(x_copy, w_b, cu, "silu")
    got = [y_view, *torch.autograd.grad((y_view * proj).sum(), [x_view, w_a])]
    want = [y_copy, *torch.autograd.grad((y_copy * proj).sum(), [x_copy, w_b])]
    for name, a, b in zip(["y", "dx", "dw"], got, want):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    wide_leaf = wide.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(short_conv_triton(wide_leaf[..., D : 2 * D], w, cu, "silu").sum(), [wide_leaf])
    assert g[..., :D].abs().max() == 0 and g[..., 2 * D :].abs().max() == 0 and g[..., D : 2 * D].abs().max() > 0
