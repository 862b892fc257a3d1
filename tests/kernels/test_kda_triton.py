"""mixlab's Triton chunked KDA (kernels/kda_triton.py) against the token-loop oracle, outputs and gradients of
q, k, v, g, β and the initial state, with varlen, partial chunks and strong decays.

Without a GPU the kernels run in the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1): small shapes,
fp32, a few programs each (the interpreter takes ~0.3 s per chunk·head per kernel). On a GPU (marker `gpu`) the
same comparison runs at Kimi shapes (H=32, K=V=128) against the pure-torch chunked reference.
"""

from __future__ import annotations

import os

import pytest
import torch

from mixlab.errors import MixlabError
from mixlab.kernels import chunk_kda_torch, l2norm, naive_recurrent_kda
from mixlab.kernels.dispatch import triton_available

if not triton_available() or not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
    pytest.skip("needs triton (GPU, or TRITON_INTERPRET=1 on CPU)", allow_module_level=True)

from mixlab.kernels.kda_triton import chunk_kda_triton  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(B, T, H, K, V, n_state, g_min, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = l2norm(torch.randn(B, T, H, K, generator=gen))
    v = torch.randn(B, T, H, V, generator=gen)
    g = torch.rand(B, T, H, K, generator=gen) * g_min  # log decay in [g_min, 0]
    beta = torch.rand(B, T, H, generator=gen)
    s0 = torch.randn(n_state, H, K, V, generator=gen)
    return [t.to(device) for t in (q, k, v, g, beta, s0)]


def _run(fn, tensors, use_s0, weights):
    xs = [t.clone().requires_grad_(True) for t in tensors]
    o, S = fn(*xs[:5], initial_state=xs[5] if use_s0 else None, output_final_state=True)
    wo, ws = weights
    ((o.float() * wo).sum() + (S * ws).sum()).backward()
    grads = [x.grad for x in (xs if use_s0 else xs[:5])]
    return o, S, grads


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def _compare(ref_fn, tensors, cu=None, use_s0=True, tol=1e-4, seed=0, **flags):
    gen = torch.Generator().manual_seed(seed + 100)
    o_shape = tensors[2].shape
    n, H, K, V = tensors[5].shape
    weights = (torch.randn(o_shape, generator=gen).to(tensors[0].device),
               torch.randn(n, H, K, V, generator=gen).to(tensors[0].device))

    def ours(*a, **kw):
        return chunk_kda_triton(*a, cu_seqlens=cu, **flags, **kw)

    def ref(*a, **kw):
        return ref_fn(*a, cu_seqlens=cu, **flags, **kw)

    o, S, grads = _run(ours, tensors, use_s0, weights)
    o_r, S_r, grads_r = _run(ref, tensors, use_s0, weights)
    errs = {"o": _rel(o, o_r), "S": _rel(S, S_r)}
    for name, a, b in zip(("dq", "dk", "dv", "dg", "dbeta", "dh0"), grads, grads_r):
        assert torch.isfinite(a).all(), name
        errs[name] = _rel(a, b)
    assert max(errs.values()) < tol, errs
    return errs


def test_matches_naive_two_chunks_with_state():
    # T=70: a full chunk, then one of 6 tokens; initial and final state.
    _compare(naive_recurrent_kda, _inputs(1, 70, 1, 16, 16, 1, -1.0, seed=0))


def test_matches_naive_varlen_no_initial_state():
    # Packed sequences of 5, 30 and 1 tokens: chunks restart at each boundary; V ≠ K.
    cu = torch.tensor([0, 5, 35, 36])
    _compare(naive_recurrent_kda, _inputs(1, 36, 1, 16, 32, 3, -1.0, seed=1), cu=cu, use_s0=False)


def test_matches_naive_strong_decay_no_overflow():
    # Gates down to −20 per token: Γ falls by ~160 over a 16-token sub-block and ~640 over a chunk, so a factor
    # e^{Γ_t − Γ_ref} with t before the reference row overflows fp32 (e^{88}); every exponent must stay ≤ 0 (no
    # inf, no NaN: `_compare` checks every gradient is finite). A full chunk and a partial one.
    errs = _compare(naive_recurrent_kda, _inputs(1, 80, 1, 16, 16, 1, -20.0, seed=13))
    assert all(e == e for e in errs.values())  # no NaN hidden in the max


@pytest.mark.slow
def test_matches_naive_batch():
    # B=2 sequences of 130 tokens (two full chunks and a partial one each), two heads.
    _compare(naive_recurrent_kda, _inputs(2, 130, 2, 16, 16, 2, -3.0, seed=6))


@pytest.mark.slow
def test_matches_naive_strong_decay_varlen_with_state():
    # g down to −20 per token (where the factored score form would overflow), two heads, 3 chunks in a sequence.
    cu = torch.tensor([0, 150, 190])
    _compare(naive_recurrent_kda, _inputs(1, 190, 2, 16, 16, 2, -20.0, seed=2), cu=cu)


@pytest.mark.slow
def test_matches_naive_varlen_at_block_boundaries():
    # Lengths on both sides of the 16-token sub-block and 64-token chunk boundaries (score blocks fully valid,
    # partial and past the end; a one-token sequence), seven sequences with their initial states.
    lens = torch.tensor([16, 17, 48, 63, 64, 65, 1])
    cu = torch.cat((torch.zeros(1, dtype=torch.long), lens.cumsum(0)))
    _compare(naive_recurrent_kda, _inputs(1, int(cu[-1]), 1, 16, 16, 7, -2.0, seed=12), cu=cu)


@pytest.mark.slow
def test_l2norm_flag_and_bf16_inputs():
    q, k, v, g, beta, s0 = _inputs(1, 64, 1, 32, 16, 1, -0.5, seed=3)
    q, k, v, beta = (t.bfloat16() for t in (q, k, v, beta))
    o, S = chunk_kda_triton(q, k, v, g, beta, initial_state=s0, output_final_state=True, use_qk_l2norm=True)
    o_r, S_r = naive_recurrent_kda(q, k, v, g, beta, initial_state=s0, output_final_state=True, use_qk_l2norm=True)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert _rel(o, o_r) < 2e-2 and _rel(S, S_r) < 1e-4


def _l2norm_kernels_vs_torch(x, dy):
    """(y, dx) of the Triton L2 norm kernels and of `kda_common.l2norm` under autograd, for x and upstream dy."""
    from mixlab.kernels.kda_triton import _l2norm_bwd, _l2norm_fwd

    y, r = _l2norm_fwd(x)
    dx = _l2norm_bwd(y, r, dy, x.dtype)
    xr = x.clone().requires_grad_(True)
    y_ref = l2norm(xr)
    y_ref.backward(dy.float())
    return (y, dx), (y_ref.detach(), xr.grad)


def test_l2norm_kernel_matches_torch():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(3, 37, 2, 32, generator=gen)  # 222 rows: the last program is partial
    (y, dx), (y_ref, dx_ref) = _l2norm_kernels_vs_torch(x, torch.randn(3, 37, 2, 32, generator=gen))
    assert y.dtype == torch.float32 and dx.dtype == torch.float32
    assert _rel(y, y_ref) < 1e-6 and _rel(dx, dx_ref) < 1e-5


@pytest.fixture
def bf16_path_on_cpu(monkeypatch):
    """The GPU's 16-bit path in the interpreter: intermediates stored in bf16 as on a GPU, and the interpreter's
    tl.dot (which multiplies bf16 operands' raw bits) fed their exact fp32 values, as a tensor core reads them."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter as ti

    from mixlab.kernels import kda_triton

    def widen(x):
        if x.dtype == tl.bfloat16:
            return ti.TensorHandle((x.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
        return x

    orig = ti.InterpreterBuilder.create_dot
    monkeypatch.setattr(ti.InterpreterBuilder, "create_dot",
                        lambda self, a, b, *rest: orig(self, widen(a), widen(b), *rest))
    monkeypatch.setattr(kda_triton, "_store_dtype", lambda v: kda_triton.gpu_store_dtype(v.dtype))


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter-only check (the GPU tests cover this path)")
def test_bf16_intermediates_path_matches_naive(bf16_path_on_cpu):
    # bf16 inputs, intermediates in bf16 (w, u, qg, kd, v_new, states, du) with bf16 dots: errors at bf16 level
    # against the fp32 token loop; two chunks (one partial), initial and final state.
    q, k, v, g, beta, s0 = _inputs(1, 70, 1, 16, 16, 1, -1.0, seed=10)
    tensors = [t.bfloat16() for t in (q, k, v)] + [g, beta.bfloat16(), s0]
    errs = _compare(naive_recurrent_kda, tensors, tol=3e-2)  # measured: 0.4–1.3 % (fp32 path: o 0.5 %, rest ≤ 4e-7)
    assert errs["S"] > 1e-4  # the 16-bit path really ran (fp32 intermediates give a final state within 1e-7)


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter-only check (the GPU tests cover this path)")
def test_bf16_path_normalises_q_and_k_in_bf16(bf16_path_on_cpu, monkeypatch):
    # On the 16-bit path the L2-normalised q and k are bf16 (as fla-core's l2norm gives them): the kernel's output
    # is the fp32 norm cast once (within one bf16 ulp: the interpreter truncates where a GPU rounds), its backward
    # matches, and the whole op stays at bf16 level against the fp32 loop.
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(2, 37, 3, 32, generator=gen).bfloat16()  # 222 rows: the last program is partial
    (y, dx), (y_ref, dx_ref) = _l2norm_kernels_vs_torch(x, torch.randn(2, 37, 3, 32, generator=gen))
    assert y.dtype == torch.bfloat16 and dx.dtype == torch.bfloat16
    assert _rel(y, y_ref) < 2 ** -7 and _rel(dx, dx_ref) < 1e-2
    q, k, v, g, beta, s0 = _inputs(1, 70, 1, 16, 16, 1, -1.0, seed=14)
    tensors = [t.bfloat16() for t in (q, k, v)] + [g, beta.bfloat16(), s0]
    _compare(naive_recurrent_kda, tensors, tol=3e-2, use_qk_l2norm=True)
    from mixlab.kernels import kda_triton

    monkeypatch.setattr(kda_triton, "QK_NORM_16BIT", False)  # the switch back to fp32 copies (the sweep's baseline)
    (y32, dx32), _ = _l2norm_kernels_vs_torch(x, torch.randn(2, 37, 3, 32, generator=gen))
    assert y32.dtype == torch.float32 and dx32.dtype == torch.bfloat16 and _rel(y32, y_ref) < 1e-6


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter-only check (the GPU tests cover this path)")
def test_bf16_intermediates_path_strong_decay_varlen(bf16_path_on_cpu):
    cu = torch.tensor([0, 150, 190])
    q, k, v, g, beta, s0 = _inputs(1, 190, 2, 16, 32, 2, -20.0, seed=11)
    tensors = [t.bfloat16() for t in (q, k, v)] + [g, beta.bfloat16(), s0]
    _compare(naive_recurrent_kda, tensors, cu=cu, tol=3e-2)


def test_rejects_unsupported_head_dim():
    q, k, v, g, beta, _ = _inputs(1, 4, 1, 16, 16, 1, -1.0, seed=4)
    with pytest.raises(MixlabError, match="K must be a power of two"):
        chunk_kda_triton(q[..., :12], k[..., :12], v, g[..., :12], beta)


@pytest.mark.slow
def test_kernels_compile_for_hopper_within_shared_memory():
    # AOT compile for sm_90 at Kimi shapes (H=32, K=V=128), bf16 and fp32 intermediates, with the launch options
    # used on the GPU, in a child without the interpreter. The first device run failed exactly here: the
    # recurrences' software pipelining asked for 409 KB of shared memory (limit 227 KB per block on H100/H200).
    # Spills: ptxas's count per thread, bounded so that a change that makes a kernel spill heavily shows up.
    import json

    from mixlab import procs
    from mixlab.kernels.kda_triton import LAUNCH
    from mixlab.kernels.kda_triton_aot import SM90_SHARED_LIMIT

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = procs.run(["-m", "mixlab.kernels.kda_triton_aot"], env_base=env, capture_output=True, text=True,
                    timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert sorted({name.split("[")[0] for name in report}) == sorted(LAUNCH)  # every kernel kda_triton launches
    assert len(report) == 2 * len(LAUNCH)
    assert max(r["shared"] for r in report.values()) <= SM90_SHARED_LIMIT, report
    assert max(r["spill_bytes"] for r in report.values()) <= 1024, report


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("varlen,H,K,lens", [(False, 32, 128, None), (True, 32, 128, [300, 800, 948]),
                                             (True, 8, 64, [70, 130, 33])])
def test_gpu_kimi_shape_matches_torch_reference(varlen, H, K, lens):
    # H=32, K=V=128 (Kimi Linear), and the `small` preset's H=8, K=V=64 with the sequences of the model's packing
    # test (starts 70 and 200: not chunk-aligned); fp32 inputs; tf32 tensor-core dots inside the kernels, hence the
    # tolerance.
    T = sum(lens) if varlen else 1024
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device=DEV) if varlen else None
    B = 1 if varlen else 2
    n = len(lens) if varlen else B
    tensors = _inputs(B, T, H, K, K, n, -1.0, seed=5, device=DEV)
    errs = _compare(lambda *a, **kw: chunk_kda_torch(*a, chunk_size=64, **kw), tensors, cu=cu, tol=2e-2)
    print("rel errors", errs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_kimi_shape_bf16_matches_torch_reference():
    # bf16 inputs take the 16-bit path (w, u, qg, kd, v_new, chunk states and du stored in bf16, bf16 tensor-core
    # dots with fp32 accumulation, as fla-core does): errors at bf16 level against the fp32 torch reference.
    q, k, v, g, beta, s0 = _inputs(2, 1024, 32, 128, 128, 2, -1.0, seed=8, device=DEV)
    tensors = [t.bfloat16() for t in (q, k, v)] + [g, beta.bfloat16(), s0]
    errs = _compare(lambda *a, **kw: chunk_kda_torch(*a, chunk_size=64, **kw), tensors, tol=5e-2)
    print("rel errors bf16", errs)


def test_dispatch_routes_chunk_kda_to_mixlab_triton_on_request(monkeypatch):
    from mixlab.kernels import chunk_kda, dispatch

    x = torch.ones(1)
    monkeypatch.setenv("MIXLAB_KDA_BACKEND", "triton")
    assert dispatch.kda_backend(x) == "torch"  # CPU tensors always take the reference
    monkeypatch.setenv("MIXLAB_KDA_BACKEND", "flaa")
    with pytest.raises(MixlabError, match="did you mean 'fla'"):
        dispatch.kda_backend(x)
    # Pretend the tensors are on the fast path: chunk_kda then runs the Triton kernels (the interpreter here).
    monkeypatch.setenv("MIXLAB_KDA_BACKEND", "triton")
    monkeypatch.setattr(dispatch, "fast_path", lambda *t: True)
    assert dispatch.kda_backend(x) == "mixlab"
    q, k, v, g, beta, _ = _inputs(1, 20, 1, 16, 16, 1, -1.0, seed=7)
    o, _ = chunk_kda(q, k, v, g, beta)
    o_ref, _ = chunk_kda_torch(q, k, v, g, beta)
    assert _rel(o, o_ref) < 1e-5


def test_auto_takes_mixlab_triton_first(monkeypatch):
    """"auto" on the fast path takes mixlab's Triton KDA where the head dims fit it, with or without fla-core; where
    they do not, fla-core if it imports, else the reference. An explicit "fla", or the "triton" kernel backend (which
    means fla-core's kernels), takes fla-core first."""
    from mixlab.kernels import dispatch

    monkeypatch.delenv("MIXLAB_KDA_BACKEND", raising=False)
    monkeypatch.setattr(dispatch, "fast_path", lambda *t: True)
    monkeypatch.setattr(dispatch, "get_backend", lambda: "auto")
    q, v = torch.ones(1, 4, 2, 128), torch.ones(1, 4, 2, 64)
    odd_k, wide_v = (q[..., :96], q[..., :96], v), (q, q, torch.ones(1, 4, 2, 512))  # K = 96; V = 512 (over 256)
    for fla in (False, True):
        monkeypatch.setattr(dispatch, "fla_available", lambda fla=fla: fla)
        assert dispatch.kda_backend(q, q, v) == "mixlab"
        assert dispatch.kda_backend(*odd_k) == dispatch.kda_backend(*wide_v) == ("fla" if fla else "torch")
    monkeypatch.setenv("MIXLAB_KDA_BACKEND", "fla")
    assert dispatch.kda_backend(q, q, v) == "fla"
    monkeypatch.setattr(dispatch, "fla_available", lambda: False)
    assert dispatch.kda_backend(q, q, v) == "torch"  # an explicit "fla" without fla-core: the reference
    monkeypatch.setenv("MIXLAB_KDA_BACKEND", "auto")
    monkeypatch.setattr(dispatch, "fla_available", lambda: True)
    monkeypatch.setattr(dispatch, "get_backend", lambda: "triton")
    assert dispatch.kda_backend(q, q, v) == "fla"
