"""The engine's fused decode kernels (paged MLA, fused KDA step) against their pure-torch references, and the whole
engine running them: fp32 greedy tokens still equal full recomputation.

Without a GPU the kernels run in the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1): small shapes,
CPU tensors. The interpreter rounds fp32→bf16 by truncation (the GPU rounds to nearest), so bf16 cases compare at
a few bf16 ulps and fp32 cases tightly. The `gpu` tests repeat the comparison at the 1b-a150m shapes.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from mixlab.evals.backends import GenerationConfig
from mixlab.evals.backends.torch_backend import eos_token_ids
from mixlab.evals.engine import Engine
from mixlab.kernels import decode_moe, dispatch, kda_decode, mla_decode, moe_route
from mixlab.kernels.dispatch import triton_available
from mixlab.kernels.kda_decode import kda_decode_step_torch
from mixlab.kernels.mla_decode import mla_decode_paged_torch

from .test_engine import recompute_greedy, recompute_greedy_cuda

if not triton_available() or not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
    pytest.skip("needs triton (GPU, or TRITON_INTERPRET=1 on CPU)", allow_module_level=True)

from mixlab.kernels import mla_decode_triton  # noqa: E402
from mixlab.kernels.decode_moe_triton import experts_triton, route_triton  # noqa: E402
from mixlab.kernels.kda_decode_triton import kda_decode_step_triton, multi_linear_triton  # noqa: E402
from mixlab.kernels.mla_decode_triton import mla_decode_paged_triton, split_plan  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _gen(seed):
    return torch.Generator(device=DEV).manual_seed(seed)


def _randn(*shape, dtype=torch.float32, seed=0, scale=1.0):
    return (torch.randn(*shape, generator=_gen(seed), device=DEV) * scale).to(dtype)


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


# ------------------------------------------------------------------------------------------------------ paged MLA
def _mla_case(B, H, rank, rope, bs, num_blocks, nb, dtype, seed=0):
    """Rows of different lengths: row 0 holds one token, the last row uses half its table (rest scratch)."""
    pool = _randn(num_blocks + 1, bs, rank + rope, dtype=dtype, seed=seed)
    q = _randn(B, H, rank + rope + 8, dtype=dtype, seed=seed + 1)  # q_lat, q_rot: strided views, as in the engine
    new = _randn(B, rank + rope, dtype=dtype, seed=seed + 3)
    table = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed))[: B * nb].view(B, nb).to(DEV)
    positions = torch.randint(0, nb * bs, (B,), generator=_gen(seed + 2), device=DEV)
    positions[0] = 0
    if B > 1 and nb > 1:
        table[-1, nb // 2 :] = num_blocks  # scratch-padded
        positions[-1] = (nb // 2) * bs - 1
    args = (q[..., :rank], q[..., rank : rank + rope], new[:, :rank], new[:, rank:])
    return args, pool, table, positions


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", [
    dict(B=3, H=2, rank=32, rope=8, bs=4, num_blocks=24, nb=6),  # rope narrower than a dot tile (masked)
    dict(B=4, H=3, rank=24, rope=16, bs=16, num_blocks=8, nb=1),  # one block, rank not a power of two
    dict(B=2, H=8, rank=64, rope=32, bs=16, num_blocks=40, nb=12),  # many blocks
])
@pytest.mark.parametrize("min_split", [256, 32])  # one split (direct output) and several (split + merge)
def test_mla_paged_matches_reference(shape, dtype, tol, min_split, monkeypatch):
    """Output and the appended latent (pools equal afterwards: nothing else written)."""
    monkeypatch.setattr(mla_decode_triton, "MIN_SPLIT_TOKENS", min_split)
    args, pool, table, positions = _mla_case(dtype=dtype, **shape)
    scale = (shape["rank"] + shape["rope"]) ** -0.5
    ours, ref = pool.clone(), pool.clone()
    got = mla_decode_paged_triton(*args, ours, table, positions, scale)
    want = mla_decode_paged_torch(*args, ref, table, positions, scale)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.isfinite(got).all()
    assert _rel(got, want) < tol, _rel(got, want)
    assert torch.equal(ours, ref) and not torch.equal(ours, pool)
    if min_split == 32 and shape["nb"] * shape["bs"] > 64:
        assert split_plan(shape["B"], shape["nb"] * shape["bs"])[0] > 1  # the merge path really ran


def test_mla_paged_ignores_keys_past_the_row():
    """Keys beyond positions[b] (stale tokens in the row's last block, scratch blocks) and whatever the pool held at
    the new token's own position change nothing."""
    args, pool, table, positions = _mla_case(B=3, H=2, rank=32, rope=8, bs=4, num_blocks=24, nb=6,
                                             dtype=torch.float32)
    before = mla_decode_paged_triton(*args, pool.clone(), table, positions, 0.1)
    noisy = pool.clone()
    for b in range(3):
        for t in range(int(positions[b]), 6 * 4):
            noisy[table[b, t // 4], t % 4] = 1e4
    noisy[-1] = float("nan")  # scratch block
    after = mla_decode_paged_triton(*args, noisy, table, positions, 0.1)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_a_failing_kernel_falls_back_to_its_reference(monkeypatch):
    """A decode kernel that raises (e.g. a Triton compile error on an untried GPU) warns once and the op returns
    the reference's result, then and on later calls (the kernel is not retried)."""
    monkeypatch.setattr(dispatch, "_failed_kernels", {})
    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("no kernel image for this device")

    monkeypatch.setattr(mla_decode, "mla_decode_paged_triton", broken)
    monkeypatch.setattr(mla_decode, "use_fused", lambda *t: True)
    monkeypatch.setenv("MIXLAB_FUSED_DECODE", "1")
    args, pool, table, positions = _mla_case(B=3, H=2, rank=32, rope=8, bs=4, num_blocks=24, nb=6,
                                             dtype=torch.float32)
    want = mla_decode_paged_torch(*args, pool.clone(), table, positions, 0.1)
    with pytest.warns(RuntimeWarning, match="mla_decode_paged failed"):
        got = mla_decode.mla_decode_paged(*args, pool, table, positions, 0.1)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    again = mla_decode.mla_decode_paged(*args, pool, table, positions, 0.1)
    torch.testing.assert_close(again, want, rtol=0, atol=0)
    assert len(calls) == 1 and "no kernel image" in dispatch.failed_kernels()["mla_decode_paged"]


# ------------------------------------------------------------------------------------------------------ fused KDA
def _kda_case(B, H, K, W, slots_total, dtype, seed=0):
    P = H * K
    xq, xk, xv, f, gate = (_randn(B, P, dtype=dtype, seed=seed + i) for i in range(5))
    conv = _randn(slots_total + 1, 3, P, W - 1, dtype=dtype, seed=seed + 5)
    wq, wk, wv = (_randn(P, 1, W, dtype=dtype, seed=seed + 6 + i, scale=0.5) for i in range(3))
    A_log = torch.rand(1, 1, H, 1, generator=_gen(seed + 9), device=DEV)
    dt_bias = _randn(P, seed=seed + 10)
    beta_logits = _randn(B, H, dtype=dtype, seed=seed + 11)
    state = _randn(slots_total + 1, H, K, K, seed=seed + 12)
    norm_w = (torch.rand(K, generator=_gen(seed + 13), device=DEV) + 0.5).to(dtype)
    return [xq, xk, xv, conv, wq, wk, wv, f, A_log, dt_bias, beta_logits, state], gate, norm_w


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("B,H,K,W", [(3, 2, 32, 4), (2, 3, 16, 4), (2, 1, 64, 3)])
def test_kda_decode_matches_reference(B, H, K, W, dtype, tol):
    """Output, conv windows and fp32 state after three consecutive steps at permuted slots (others untouched)."""
    S = B + 2
    args, gate, norm_w = _kda_case(B, H, K, W, S, dtype)
    slots = torch.tensor([S - 1 - 2 * i for i in range(B)], device=DEV)  # not 0..B-1, not in order
    ours = [a.clone() for a in args]
    ref = [a.clone() for a in args]
    for step in range(3):
        for a, b, fresh in zip(ours, ref, _kda_case(B, H, K, W, S, dtype, seed=20 * (step + 1))[0]):
            if a.shape[0] == B:  # per-row inputs: new projections each step
                a.copy_(fresh)
                b.copy_(fresh)
        got = kda_decode_step_triton(*ours, slots, gate, norm_w, 1e-5, K**-0.5)
        want = kda_decode_step_torch(*ref, slots, gate, norm_w, 1e-5, K**-0.5)
        assert got.dtype == want.dtype and got.shape == (B, H * K)
        assert _rel(got, want) < tol, (step, _rel(got, want))
    conv, state = ours[3], ours[11]
    assert _rel(conv, ref[3]) < tol and _rel(state, ref[11]) < tol
    others = [s for s in range(S + 1) if s not in slots.tolist()]
    assert torch.equal(conv[others], args[3][others]) and torch.equal(state[others], args[11][others])
    assert not torch.equal(state[slots], args[11][slots])


def test_kda_decode_in_place_rows_match_slots():
    """slots None (rows are slots 0..B-1, the CPU path) and explicit slots give the same step."""
    args, gate, norm_w = _kda_case(3, 2, 16, 4, 4, torch.float32)
    a = [t.clone() for t in args]
    b = [t.clone() for t in args]
    out_a = kda_decode.kda_decode_step(*a, None, gate, norm_w, 1e-5, 0.25)
    out_b = kda_decode_step_triton(*b, torch.arange(3, device=DEV), gate, norm_w, 1e-5, 0.25)
    torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[11], b[11], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_multi_linear_matches_linear(dtype, tol):
    x = _randn(5, 96, dtype=dtype, seed=1)
    ws = [_randn(n, 96, dtype=dtype, seed=2 + i) for i, n in enumerate((64, 64, 40, 32, 32, 2))]
    got = multi_linear_triton(x, ws)
    want = torch.cat([torch.nn.functional.linear(x, w) for w in ws], -1)
    assert got.shape == want.shape and _rel(got, want) < tol, _rel(got, want)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_kda_decode_layer_fused_projections(dtype, tol, monkeypatch):
    """kda_decode_layer with the projections fused (one multi-projection launch, f_b / g_b in the step kernel) =
    its reference (nn.Linear projections, then the torch step), output, windows and state."""
    B, H, K, W, D, S = 3, 2, 32, 4, 48, 5
    P = H * K
    args, _, norm_w = _kda_case(B, H, K, W, S, dtype)
    conv, cq, ck, cv, A_log, dt_bias, state = args[3], args[4], args[5], args[6], args[8], args[9], args[11]
    x = _randn(B, D, dtype=dtype, seed=30)
    wq, wk, wv = (_randn(P, D, dtype=dtype, seed=31 + i, scale=0.2) for i in range(3))
    wfa, wga = _randn(K, D, dtype=dtype, seed=34, scale=0.2), _randn(K, D, dtype=dtype, seed=35, scale=0.2)
    wfb, wgb = _randn(P, K, dtype=dtype, seed=36, scale=0.2), _randn(P, K, dtype=dtype, seed=37, scale=0.2)
    wb = _randn(H, D, dtype=dtype, seed=38, scale=0.2)
    slots = torch.tensor([4, 0, 2], device=DEV)

    def run(fused):
        monkeypatch.setattr(kda_decode, "use_fused", lambda *t: fused)
        monkeypatch.setenv("MIXLAB_FUSED_DECODE", "1" if fused else "0")
        c, st = conv.clone(), state.clone()
        out = kda_decode.kda_decode_layer(x, wq, wk, wv, c, cq, ck, cv, wfa, wfb, A_log, dt_bias, wb, wga, wgb, st,
                                          slots, norm_w, 1e-5, K**-0.5)
        return out, c, st

    got, want = run(True), run(False)
    for a, b in zip(got, want):
        assert _rel(a, b) < tol, _rel(a, b)


# ------------------------------------------------------------------------------------------------------ MoE decode
@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
@pytest.mark.parametrize("renormalize,weights_use_bias", [(True, False), (False, True)])
def test_moe_route_matches_reference(activation, renormalize, weights_use_bias):
    """Router GEMM (fp32 logits) + routing = F.linear(x.float(), Wg.float()) then `moe_route`."""
    x = _randn(37, 96, dtype=torch.bfloat16, seed=3)  # D = 96: not a multiple of the GEMM tile
    gate_w = _randn(48, 96, dtype=torch.bfloat16, seed=4, scale=0.1)  # O(1) logits: no saturated (tied) sigmoids
    bias = _randn(48, seed=5, scale=0.1)
    logits = torch.nn.functional.linear(x.float(), gate_w.float())
    for b, k in ((bias, 3), (None, 3), (bias, 1)):
        got = route_triton(x, gate_w, b, k, renormalize, 2.5, weights_use_bias, activation)
        want = moe_route(logits, b, k, renormalize=renormalize, scaling=2.5, weights_use_bias=weights_use_bias,
                         activation=activation)
        assert torch.equal(got[0], want[0])
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)


# bf16: five roundings in a row (a, b, SiLU, product, GEMM), each truncated by the interpreter: a looser bound
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 4e-2 if DEV == "cpu" else 2e-2)])
@pytest.mark.parametrize("N,D,I,E,k", [
    (6, 48, 40, 8, 2),  # D and I not multiples of the tiles; some experts unused
    (40, 64, 96, 4, 2),  # ~20 pairs an expert: more than one 16-pair tile
    (3, 32, 16, 16, 1),
])
def test_moe_experts_match_gather_reference(N, D, I, E, k, dtype, tol):
    x = _randn(N, D, dtype=dtype, seed=5)
    w1, w3 = _randn(E, I, D, dtype=dtype, seed=6, scale=0.2), _randn(E, I, D, dtype=dtype, seed=7, scale=0.2)
    w2 = _randn(E, D, I, dtype=dtype, seed=8, scale=0.2)
    idx, weight = moe_route(_randn(N, E, seed=9), None, k, scaling=2.0)
    IS = 2 * I + 16  # shared MLP wider than an expert, not a tile multiple
    shared = (_randn(IS, D, dtype=dtype, seed=10, scale=0.2), _randn(IS, D, dtype=dtype, seed=11, scale=0.2),
              _randn(D, IS, dtype=dtype, seed=12, scale=0.2))
    for sh in (None, shared):
        got = experts_triton(x, w1, w3, w2, idx, weight, sh)
        want = decode_moe.moe_experts_gather(x, w1, w3, w2, idx, weight)
        if sh is not None:
            F = torch.nn.functional
            want = want + F.linear(F.silu(F.linear(x, sh[0])) * F.linear(x, sh[1]), sh[2])
        assert got.dtype == want.dtype and torch.isfinite(got).all()
        assert _rel(got, want) < tol, _rel(got, want)


# ------------------------------------------------------------------------------------------------------ the engine
@pytest.fixture
def fused_decode(monkeypatch):
    """Take the kernels' Triton path on any device (in the interpreter on CPU), as MIXLAB_FUSED_DECODE=1 does on
    CUDA, with the fused MoE decode form."""
    monkeypatch.setenv("MIXLAB_FUSED_DECODE", "1")
    monkeypatch.setattr(kda_decode, "use_fused", lambda *t: True)
    monkeypatch.setattr(mla_decode, "use_fused", lambda *t: True)
    monkeypatch.setattr(decode_moe, "use_fused", lambda *t: True)
    monkeypatch.setenv("MIXLAB_ENGINE_MOE", "fused")


@pytest.mark.parametrize("static,fused_proj", [(False, "0"), (True, "1")])
def test_engine_with_fused_kernels_equals_recomputation(shadowed, prompt_ids, fused_decode, static, fused_proj,
                                                        monkeypatch):
    """fp32 greedy through the Triton decode kernels (KDA, MLA, MoE) = full recomputation token for token, rows
    joining and leaving; static=True is the CUDA-graph path (row buckets, scratch padding rows, block buckets)."""
    monkeypatch.setenv("MIXLAB_FUSED_DECODE_PROJ", fused_proj)
    model, tok = shadowed
    eos = eos_token_ids(model, tok)
    engine = Engine(model, eos_ids=eos, max_batch=3, block_size=4, static_shapes=static)
    got = engine.generate(prompt_ids[:4], GenerationConfig(max_new_tokens=12))
    want = [recompute_greedy(model, ids, 12, eos) for ids in prompt_ids[:4]]
    assert [g[0] for g in got] == want


# ------------------------------------------------------------------------------------------------------ GPU shapes
@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_gpu_kernels_at_1b_shapes(dtype, tol):
    """1b-a150m shapes: MLA 8 heads, rank 256 + rope 64, block 16, 4 rows up to 32k context; KDA 8 heads × 128."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    args, pool, table, positions = _mla_case(B=4, H=8, rank=256, rope=64, bs=16, num_blocks=8200, nb=2048,
                                             dtype=dtype)
    positions[1] = 2048 * 16 - 1
    ours, ref = pool.clone(), pool.clone()
    got = mla_decode_paged_triton(*args, ours, table, positions, 320**-0.5)
    want = mla_decode_paged_torch(*args, ref, table, positions, 320**-0.5)
    assert _rel(got, want) < tol and torch.equal(ours, ref), _rel(got, want)
    del ours, ref, pool
    args, gate, norm_w = _kda_case(64, 8, 128, 4, 65, dtype)
    slots = torch.randperm(65, device=DEV)[:64]
    ours, ref = [a.clone() for a in args], [a.clone() for a in args]
    got = kda_decode_step_triton(*ours, slots, gate, norm_w, 1e-5, 128**-0.5)
    want = kda_decode_step_torch(*ref, slots, gate, norm_w, 1e-5, 128**-0.5)
    assert _rel(got, want) < tol and _rel(ours[11], ref[11]) < tol and _rel(ours[3], ref[3]) < tol
    # KDA layer with fused projections: D 1024, P 1024, low rank 128
    x = _randn(64, 1024, dtype=dtype, seed=40)
    lin = [_randn(n, 1024, dtype=dtype, seed=41 + i, scale=0.03) for i, n in enumerate((1024, 1024, 1024, 128, 128, 8))]
    wfb, wgb = _randn(1024, 128, dtype=dtype, seed=47, scale=0.1), _randn(1024, 128, dtype=dtype, seed=48, scale=0.1)
    outs = []
    for fused in ("1", "0"):
        os.environ["MIXLAB_FUSED_DECODE"] = fused
        try:
            c, st = args[3].clone(), args[11].clone()
            if fused == "1":
                o = kda_decode.kda_decode_layer(x, *lin[:3], c, *args[4:7], lin[3], wfb, args[8], args[9], lin[5],
                                                lin[4], wgb, st, slots, norm_w, 1e-5, 128**-0.5)
            else:  # the reference: nn.Linear projections, torch step
                F = torch.nn.functional
                o = kda_decode_step_torch(F.linear(x, lin[0]), F.linear(x, lin[1]), F.linear(x, lin[2]), c,
                                          *args[4:7], F.linear(F.linear(x, lin[3]), wfb), args[8], args[9],
                                          F.linear(x, lin[5]), st, slots, F.linear(F.linear(x, lin[4]), wgb), norm_w,
                                          1e-5, 128**-0.5)
        finally:
            os.environ.pop("MIXLAB_FUSED_DECODE", None)
        outs.append((o, c, st))
    for a, b in zip(*outs):
        assert _rel(a, b) < tol, _rel(a, b)
    for N in (4, 64):  # MoE: 48 experts top-3, D 1024, I 384
        x = _randn(N, 1024, dtype=dtype, seed=5)
        w1, w3 = _randn(48, 384, 1024, dtype=dtype, seed=6, scale=0.03), _randn(48, 384, 1024, dtype=dtype, seed=7,
                                                                                scale=0.03)
        w2 = _randn(48, 1024, 384, dtype=dtype, seed=8, scale=0.05)
        gate_w = _randn(48, 1024, dtype=dtype, seed=9, scale=0.05)
        shared = (_randn(384, 1024, dtype=dtype, seed=10, scale=0.03), _randn(384, 1024, dtype=dtype, seed=11,
                                                                              scale=0.03),
                  _randn(1024, 384, dtype=dtype, seed=12, scale=0.05))
        outs = []
        for fused in ("1", "0"):  # the op's kernels, then its reference
            os.environ["MIXLAB_FUSED_DECODE"] = fused
            try:
                outs.append(decode_moe.moe_decode_block(x, gate_w, None, w1, w3, w2, 3, renormalize=True,
                                                        scaling=2.446, weights_use_bias=False, activation="sigmoid",
                                                        shared=shared))
            finally:
                os.environ.pop("MIXLAB_FUSED_DECODE", None)
        got, want = outs
        assert _rel(got, want) < tol, (N, _rel(got, want))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_engine_all_fused(tiny, prompt_ids, dtype, monkeypatch):
    """The engine with every fused decode kernel (MIXLAB_FUSED_DECODE=1) on the GPU: graphs = same-shape eager;
    fp32 = recomputation; none fell back to its reference."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    monkeypatch.setenv("MIXLAB_FUSED_DECODE", "1")  # KDA, MLA, MoE (fused form) and projections
    model, tok = tiny
    model = copy.deepcopy(model).to("cuda", dtype)
    eos = eos_token_ids(model, tok)
    cfg = GenerationConfig(max_new_tokens=16)
    got = Engine(model, eos_ids=eos, max_batch=8, cuda_graphs=True).generate(prompt_ids, cfg)
    assert got == Engine(model, eos_ids=eos, max_batch=8, cuda_graphs=False, static_shapes=True).generate(prompt_ids,
                                                                                                          cfg)
    assert not dispatch.failed_kernels()  # every decode kernel really ran (none fell back to its reference)
    if dtype == torch.float32:
        with torch.no_grad():
            want = [recompute_greedy_cuda(model, ids, 16, eos) for ids in prompt_ids]
        assert [g[0] for g in got] == want

