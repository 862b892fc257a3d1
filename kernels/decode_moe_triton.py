"""The engine's MoE decode step in Triton (router GEMM + routing, routed and shared experts, combine: 5 launches);
reference and op in decode_moe.py.

1. `_route_kernel`, program per row: logits = x·Wgᵀ in fp32, act(logits) + bias, top-k by repeated arg-max (ties →
   lowest expert; the scores are continuous, so they do not occur in practice), weights, renormalisation, scaling.
2. `_lists_kernel` (program per expert) lists the expert's (row, k) pairs in row order with a prefix sum (no sort, no
   host sync).
3. `_up_kernel`, program per (expert, I-tile), plus programs for the shared experts (16 rows each): gathers
   the expert's rows 16 at a time and computes h = SiLU(x W1ᵀ) ⊙ (x W3ᵀ) with one read of the weight tile.
4. `_down_kernel`, program per (expert, D-tile), the same way: y = h W2ᵀ.
5. `_combine_kernel`, program per (row, D-tile): Σ_k weight · y_pair in fp32, fixed order, then + shared.
Each routed expert's weights are read once per step however many rows pick it (up to 16; beyond, again from L2),
the shared experts' once per 16-row group (concurrently, from L2 after the first), and every shape depends only on
the rows.
Roundings follow the reference (gather form + the shared MLP): GEMM outputs, SiLU and the product in the
activation dtype, the weighted sum in fp32.

The CUDA default (MIXLAB_FUSED_DECODE=0 turns it off); checked against the reference on an H100
(bench/run_engine_gpu.sh), in the interpreter and compiled for sm_90 on CPU (tests/evals_engine/test_decode_aot.py).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

BT = 16  # pair rows per dot tile (the smallest tensor-core tile; decode batches put a few rows on each expert)
# Tiles and launch options of the two expert kernels: the one table bench/bench_decode_moe.py sweeps on a GPU (it
# replaces this dict) and test_decode_aot.py compiles for sm_90. BI/BD: the [BI, BD] weight tile of one dot step.
EXPERT_LAUNCH = {"up": dict(BI=32, BD=64, num_warps=4, num_stages=3),
                 "down": dict(BI=64, BD=32, num_warps=4, num_stages=3)}


@triton.jit
def _route_kernel(X, sx, WG, BIAS, IDX, WEIGHT, E, D, scaling, K: tl.constexpr, BE: tl.constexpr, BK: tl.constexpr,
                  BD: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTMAX: tl.constexpr, RENORM: tl.constexpr,
                  USE_BIAS_W: tl.constexpr):
    n = tl.program_id(0)
    es = tl.arange(0, BE)
    em = es < E
    ds = tl.arange(0, BD)
    lg = tl.zeros([BE], tl.float32)
    for d0 in range(0, D, BD):
        dm = d0 + ds < D
        xv = tl.load(X + n.to(tl.int64) * sx + d0 + ds, mask=dm, other=0.0).to(tl.float32)
        wg = tl.load(WG + es[:, None] * D + d0 + ds[None, :], mask=em[:, None] & dm[None, :], other=0.0)
        lg += tl.sum(wg.to(tl.float32) * xv[None, :], 1)
    lg = tl.where(em, lg, float("-inf"))
    if SOFTMAX:
        ex = tl.exp(lg - tl.max(lg, 0))
        scores = ex / tl.sum(ex, 0)
    else:
        scores = tl.sigmoid(lg)
    choice = scores
    if HAS_BIAS:
        choice = scores + tl.load(BIAS + es, mask=em, other=0.0).to(tl.float32)
    source = choice if USE_BIAS_W else scores
    choice = tl.where(em, choice, float("-inf"))
    ks = tl.arange(0, BK)
    sel_all = tl.zeros([BK], tl.int32)
    w_all = tl.zeros([BK], tl.float32)
    for j in tl.static_range(K):
        top = tl.max(choice, 0)
        sel = tl.min(tl.where(choice == top, es, BE), 0)
        w = tl.sum(tl.where(es == sel, source, 0.0), 0)
        sel_all = tl.where(ks == j, sel, sel_all)
        w_all = tl.where(ks == j, w, w_all)
        choice = tl.where(es == sel, float("-inf"), choice)
    if RENORM:
        w_all = w_all / (tl.sum(tl.where(ks < K, w_all, 0.0), 0) + 1e-20)
    tl.store(IDX + n.to(tl.int64) * K + ks, sel_all.to(tl.int64), mask=ks < K)
    tl.store(WEIGHT + n.to(tl.int64) * K + ks, w_all * scaling, mask=ks < K)


@triton.jit
def _lists_kernel(IDX, LISTS, COUNTS, NK, BNK: tl.constexpr):
    e = tl.program_id(0)  # one program per expert: a single program looping over the experts took 18 µs a layer
    ps = tl.arange(0, BNK)
    m = tl.load(IDX + ps, mask=ps < NK, other=-1) == e
    rank = tl.cumsum(m.to(tl.int32), 0) - 1
    tl.store(LISTS + e * NK + rank, ps, mask=m)  # E · NK stays far below 2^31
    tl.store(COUNTS + e, tl.sum(m.to(tl.int32), 0))


@triton.jit
def _up_tile(X, sx, W1, W3, H, tok, hrow, valid, cols, I, D, BT_: tl.constexpr, BD: tl.constexpr,
             BI: tl.constexpr, LOWP: tl.constexpr):
    """h[hrow, cols] = SiLU(x[tok] W1[cols]ᵀ) ⊙ (x[tok] W3[cols]ᵀ) for up to BT_ rows (W1, W3: one expert's
    [I, D])."""
    ds = tl.arange(0, BD)
    cm = cols < I
    acc1 = tl.zeros([BT_, BI], tl.float32)
    acc3 = tl.zeros([BT_, BI], tl.float32)
    for d0 in range(0, D, BD):
        dm = d0 + ds < D
        xt = tl.load(X + tok[:, None] * sx + d0 + ds[None, :], mask=valid[:, None] & dm[None, :], other=0.0)
        woff = cols[:, None] * D + d0 + ds[None, :]  # [BI, BD] tile (rows contiguous)
        w1 = tl.trans(tl.load(W1 + woff, mask=cm[:, None] & dm[None, :], other=0.0))
        w3 = tl.trans(tl.load(W3 + woff, mask=cm[:, None] & dm[None, :], other=0.0))
        if LOWP:
            acc1 += tl.dot(xt, w1)
            acc3 += tl.dot(xt, w3)
        else:
            xt = xt.to(tl.float32)
            acc1 += tl.dot(xt, w1.to(tl.float32), input_precision="ieee")
            acc3 += tl.dot(xt, w3.to(tl.float32), input_precision="ieee")
    a = acc1.to(H.dtype.element_ty).to(tl.float32)
    b = acc3.to(H.dtype.element_ty).to(tl.float32)
    s = (a * tl.sigmoid(a)).to(H.dtype.element_ty).to(tl.float32)
    h = (s * b).to(H.dtype.element_ty)
    tl.store(H + hrow[:, None] * I + cols[None, :], h, mask=valid[:, None] & cm[None, :])


@triton.jit
def _up_kernel(X, sx, W1, W3, LISTS, COUNTS, H, WS1, WS3, HS, N, NK, E, D, I, IS, K: tl.constexpr,
               BT_: tl.constexpr, BD: tl.constexpr, BI: tl.constexpr, LOWP: tl.constexpr):
    e = tl.program_id(0)
    it = tl.program_id(1)
    cols = it * BI + tl.arange(0, BI)
    if e < E:
        if it * BI < I:
            cnt = tl.load(COUNTS + e)
            wbase = e.to(tl.int64) * I * D
            for t0 in range(0, cnt, BT_):
                slots = t0 + tl.arange(0, BT_)
                valid = slots < cnt
                pair = tl.load(LISTS + e.to(tl.int64) * NK + slots, mask=valid, other=0).to(tl.int64)
                _up_tile(X, sx, W1 + wbase, W3 + wbase, H, pair // K, pair, valid, cols, I, D, BT_, BD, BI, LOWP)
    else:  # the shared experts: one BT_-row group of every row per program
        if it * BI < IS:
            rows = ((e - E) * BT_ + tl.arange(0, BT_)).to(tl.int64)
            _up_tile(X, sx, WS1, WS3, HS, rows, rows, rows < N, cols, IS, D, BT_, BD, BI, LOWP)


@triton.jit
def _down_tile(H, W2, Y, hrow, valid, cols, I, D, BT_: tl.constexpr, BD: tl.constexpr, BI: tl.constexpr,
               LOWP: tl.constexpr):
    """y[hrow, cols] = h[hrow] W2[cols]ᵀ for up to BT_ rows (W2: one expert's [D, I])."""
    is_ = tl.arange(0, BI)
    cm = cols < D
    acc = tl.zeros([BT_, BD], tl.float32)
    for i0 in range(0, I, BI):
        im = i0 + is_ < I
        ht = tl.load(H + hrow[:, None] * I + i0 + is_[None, :], mask=valid[:, None] & im[None, :], other=0.0)
        w2 = tl.trans(tl.load(W2 + cols[:, None] * I + i0 + is_[None, :], mask=cm[:, None] & im[None, :],
                              other=0.0))  # [BD, BI] tile (rows contiguous), transposed
        if LOWP:
            acc += tl.dot(ht, w2)
        else:
            acc += tl.dot(ht.to(tl.float32), w2.to(tl.float32), input_precision="ieee")
    tl.store(Y + hrow[:, None] * D + cols[None, :], acc.to(Y.dtype.element_ty), mask=valid[:, None] & cm[None, :])


@triton.jit
def _down_kernel(H, W2, LISTS, COUNTS, Y, HS, WS2, YS, N, NK, E, D, I, IS, BT_: tl.constexpr, BD: tl.constexpr,
                 BI: tl.constexpr, LOWP: tl.constexpr):
    e = tl.program_id(0)
    cols = tl.program_id(1) * BD + tl.arange(0, BD)
    if e < E:
        cnt = tl.load(COUNTS + e)
        wbase = e.to(tl.int64) * D * I
        for t0 in range(0, cnt, BT_):
            slots = t0 + tl.arange(0, BT_)
            valid = slots < cnt
            pair = tl.load(LISTS + e.to(tl.int64) * NK + slots, mask=valid, other=0).to(tl.int64)
            _down_tile(H, W2 + wbase, Y, pair, valid, cols, I, D, BT_, BD, BI, LOWP)
    else:  # the shared experts, as in _up_kernel
        rows = ((e - E) * BT_ + tl.arange(0, BT_)).to(tl.int64)
        _down_tile(HS, WS2, YS, rows, rows < N, cols, IS, D, BT_, BD, BI, LOWP)


@triton.jit
def _combine_kernel(Y, WEIGHT, SHARED, OUT, D, K: tl.constexpr, BD: tl.constexpr, HAS_SHARED: tl.constexpr):
    n = tl.program_id(0)
    cols = tl.program_id(1) * BD + tl.arange(0, BD)
    cm = cols < D
    acc = tl.zeros([BD], tl.float32)
    for j in tl.static_range(K):
        w = tl.load(WEIGHT + n.to(tl.int64) * K + j)
        acc += tl.load(Y + (n.to(tl.int64) * K + j) * D + cols, mask=cm, other=0.0).to(tl.float32) * w
    y = acc.to(OUT.dtype.element_ty)
    if HAS_SHARED:
        y = (y.to(tl.float32) + tl.load(SHARED + n.to(tl.int64) * D + cols, mask=cm, other=0.0).to(tl.float32)
             ).to(OUT.dtype.element_ty)
    tl.store(OUT + n.to(tl.int64) * D + cols, y, mask=cm)


def _lowp(x: torch.Tensor) -> bool:
    # The interpreter's bf16 dot is wrong: tiles go through fp32 there.
    return x.dtype in (torch.bfloat16, torch.float16) and os.environ.get("TRITON_INTERPRET") != "1"


def route_triton(x: torch.Tensor, gate_weight: torch.Tensor, bias: torch.Tensor | None, top_k: int,
                 renormalize: bool, scaling: float, weights_use_bias: bool, activation: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx [N, k] int64, weight [N, k] fp32) from x [N, D] and the router weight [E, D] (logits in fp32)."""
    N, D = x.shape
    E = gate_weight.shape[0]
    x = x if x.stride(-1) == 1 else x.contiguous()
    gate_weight = gate_weight.contiguous()
    idx = torch.empty(N, top_k, dtype=torch.long, device=x.device)
    weight = torch.empty(N, top_k, dtype=torch.float32, device=x.device)
    BE = triton.next_power_of_2(E)
    _route_kernel[(N,)](x, x.stride(0), gate_weight, bias if bias is not None else gate_weight, idx, weight, E, D,
                        float(scaling), K=top_k, BE=BE, BK=max(2, triton.next_power_of_2(top_k)),
                        BD=max(16, min(triton.next_power_of_2(D), 4096 // BE)), HAS_BIAS=bias is not None,
                        SOFTMAX=activation == "softmax", RENORM=bool(renormalize), USE_BIAS_W=bool(weights_use_bias),
                        num_warps=4)
    return idx, weight


def experts_triton(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, idx: torch.Tensor,
                   weight: torch.Tensor,
                   shared: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Σ_k weight · Expert(x) (+ the shared MLP) for x [N, D], w1/w3 [E, I, D], w2 [E, D, I], idx/weight [N, k];
    shared = (gate [IS, D], up [IS, D], down [D, IS]) weights or None."""
    N, D = x.shape
    E, I, _ = w1.shape
    k = idx.shape[1]
    x = x if x.stride(-1) == 1 else x.contiguous()
    w1, w3, w2, idx, weight = (t.contiguous() for t in (w1, w3, w2, idx, weight))
    lowp = _lowp(x)
    NK = N * k
    dev = x.device
    lists = torch.empty(E, NK, dtype=torch.int32, device=dev)
    counts = torch.empty(E, dtype=torch.int32, device=dev)
    _lists_kernel[(E,)](idx, lists, counts, NK, BNK=max(16, triton.next_power_of_2(NK)), num_warps=4)
    h = torch.empty(NK, I, dtype=x.dtype, device=dev)
    y = torch.empty(NK, D, dtype=x.dtype, device=dev)
    if shared is not None:
        ws1, ws3, ws2 = (t.contiguous() for t in shared)
        IS = ws1.shape[0]
        hs = torch.empty(N, IS, dtype=x.dtype, device=dev)
        ys = torch.empty(N, D, dtype=x.dtype, device=dev)
    else:
        ws1 = ws3 = ws2 = hs = ys = h  # unused: no program for them
        IS = 0
    # Program rows: one per routed expert, then one per BT-row group of the shared experts (a program looping over
    # every row group would run several times longer than the rest and set the kernel's time).
    n_prog = E + (triton.cdiv(N, BT) if shared is not None else 0)
    up, down = EXPERT_LAUNCH["up"], EXPERT_LAUNCH["down"]
    _up_kernel[(n_prog, triton.cdiv(max(I, IS), up["BI"]))](x, x.stride(0), w1, w3, lists, counts, h, ws1, ws3, hs, N,
                                                            NK, E, D, I, IS, K=k, BT_=BT, LOWP=lowp, **up)
    _down_kernel[(n_prog, triton.cdiv(D, down["BD"]))](h, w2, lists, counts, y, hs, ws2, ys, N, NK, E, D, I, IS,
                                                       BT_=BT, LOWP=lowp, **down)
    out = torch.empty(N, D, dtype=x.dtype, device=dev)
    BD_c = min(1024, triton.next_power_of_2(D))
    _combine_kernel[(N, triton.cdiv(D, BD_c))](y, weight, ys, out, D, K=k, BD=BD_c, HAS_SHARED=shared is not None,
                                               num_warps=4)
    return out
