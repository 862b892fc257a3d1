"""Paged MLA decode in Triton (flash-decoding over the block table); reference and op in mla_decode.py.

Program (b, s) reads row b's keys in split s straight from the block pool (token t lives at
pool[table[b, t // bs], t % bs]), with all heads at once (the latent keys are shared by the heads), and keeps an
online softmax (fp32 max, sum and weighted latent sum). With one split it writes the output; otherwise a second
launch merges the splits per (row, head). The split count depends only on shapes (rows, gathered blocks), so a
CUDA graph captured for a shape stays valid; splits past a row's length exit at once.

Dots run in the cache dtype with fp32 accumulation (bf16 probabilities, as the reference casts them), fp32 caches
in IEEE fp32; in the Triton interpreter (its bf16 dot is wrong) tiles are cast to fp32.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

BLOCK_N = 32  # tokens per inner step
TARGET_PROGRAMS = 264  # ~2 per H100 SM: split long contexts until rows × splits reaches it
MIN_SPLIT_TOKENS = 256  # a split reads at least this many keys (else the merge costs more than it saves)


@triton.jit
def _split_kernel(Q, POOL, TABLE, POS, MS, LS, ACC, OUT, sqb, sqh, stb, H, split_tokens, scale,
                  RANK: tl.constexpr, ROPE: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr, BH: tl.constexpr,
                  BS: tl.constexpr, BN: tl.constexpr, NSPLIT: tl.constexpr, LOWP: tl.constexpr):
    b = tl.program_id(0)
    s = tl.program_id(1)
    C: tl.constexpr = RANK + ROPE
    length = tl.load(POS + b).to(tl.int32) + 1
    start = s * split_tokens
    end = tl.minimum(start + split_tokens, length)
    hs = tl.arange(0, BH)
    rs = tl.arange(0, BR)
    ps = tl.arange(0, BP)
    hm = hs < H
    rm = rs < RANK
    pm = ps < ROPE
    qrow = Q + b.to(tl.int64) * sqb + hs[:, None] * sqh
    q_lat = tl.load(qrow + rs[None, :], mask=hm[:, None] & rm[None, :], other=0.0)
    q_rot = tl.load(qrow + RANK + ps[None, :], mask=hm[:, None] & pm[None, :], other=0.0)
    if LOWP:
        q_lat = q_lat.to(POOL.dtype.element_ty)
        q_rot = q_rot.to(POOL.dtype.element_ty)
    else:
        q_lat = q_lat.to(tl.float32)
        q_rot = q_rot.to(tl.float32)
    m = tl.full([BH], float("-inf"), tl.float32)
    l_sum = tl.zeros([BH], tl.float32)
    acc = tl.zeros([BH, BR], tl.float32)
    for t0 in range(start, end, BN):
        toks = t0 + tl.arange(0, BN)
        tm = toks < end
        page = tl.load(TABLE + b.to(tl.int64) * stb + toks // BS, mask=tm, other=0)
        row = (page * BS + toks % BS).to(tl.int64) * C
        kv = tl.load(POOL + row[:, None] + rs[None, :], mask=tm[:, None] & rm[None, :], other=0.0)
        kr = tl.load(POOL + row[:, None] + RANK + ps[None, :], mask=tm[:, None] & pm[None, :], other=0.0)
        if LOWP:
            sc = tl.dot(q_lat, tl.trans(kv)) + tl.dot(q_rot, tl.trans(kr))
        else:
            kv = kv.to(tl.float32)
            kr = kr.to(tl.float32)
            sc = tl.dot(q_lat, tl.trans(kv), input_precision="ieee") + tl.dot(q_rot, tl.trans(kr),
                                                                               input_precision="ieee")
        sc = tl.where(tm[None, :], sc * scale, float("-inf"))  # [BH, BN]
        m_new = tl.maximum(m, tl.max(sc, 1))
        alpha = tl.exp(m - m_new)  # first step: exp(-inf) = 0 (every step has a valid token)
        p = tl.exp(sc - m_new[:, None])
        l_sum = l_sum * alpha + tl.sum(p, 1)
        if LOWP:
            pv = tl.dot(p.to(POOL.dtype.element_ty), kv)
        else:
            pv = tl.dot(p, kv, input_precision="ieee")
        acc = acc * alpha[:, None] + pv
        m = m_new
    if NSPLIT == 1:
        o = acc / l_sum[:, None]
        tl.store(OUT + (b.to(tl.int64) * H + hs[:, None]) * RANK + rs[None, :], o.to(OUT.dtype.element_ty),
                 mask=hm[:, None] & rm[None, :])
    else:
        base = b.to(tl.int64) * NSPLIT + s
        tl.store(MS + base * H + hs, m, mask=hm)
        tl.store(LS + base * H + hs, l_sum, mask=hm)
        tl.store(ACC + (base * H + hs[:, None]) * RANK + rs[None, :], acc, mask=hm[:, None] & rm[None, :])


@triton.jit
def _merge_kernel(MS, LS, ACC, OUT, H, RANK: tl.constexpr, BR: tl.constexpr, NSPLIT: tl.constexpr,
                  BSPLIT: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    ss = tl.arange(0, BSPLIT)
    rs = tl.arange(0, BR)
    rm = rs < RANK
    base = b.to(tl.int64) * NSPLIT
    ms = tl.load(MS + (base + ss) * H + h, mask=ss < NSPLIT, other=float("-inf"))
    ls = tl.load(LS + (base + ss) * H + h, mask=ss < NSPLIT, other=0.0)
    top = tl.max(ms, 0)  # split 0 always holds token 0, so this is finite
    den = tl.sum(ls * tl.exp(ms - top), 0)
    num = tl.zeros([BR], tl.float32)
    for s in range(NSPLIT):
        w = tl.exp(tl.load(MS + (base + s) * H + h) - top)  # 0 for an empty split (its max is -inf)
        num += w * tl.load(ACC + ((base + s) * H + h) * RANK + rs, mask=rm, other=0.0)
    tl.store(OUT + (b.to(tl.int64) * H + h) * RANK + rs, (num / den).to(OUT.dtype.element_ty), mask=rm)


def _pow2(n: int, least: int = 16) -> int:
    return max(least, triton.next_power_of_2(n))


def split_plan(rows: int, table_tokens: int) -> tuple[int, int]:
    """(splits, tokens per split) from shapes alone: long contexts split until rows × splits ≈ TARGET_PROGRAMS."""
    want = max(1, min(triton.cdiv(table_tokens, MIN_SPLIT_TOKENS), TARGET_PROGRAMS // max(rows, 1)))
    per = triton.cdiv(triton.cdiv(table_tokens, want), BLOCK_N) * BLOCK_N
    return triton.cdiv(table_tokens, per), per


def mla_decode_paged_triton(q: torch.Tensor, pool: torch.Tensor, table: torch.Tensor, positions: torch.Tensor,
                            rank: int, scale: float) -> torch.Tensor:
    """Shapes as `mla_decode.mla_decode_paged` (checked there)."""
    B, H, C = q.shape
    bs = pool.shape[1]
    rope = C - rank
    pool = pool if pool.is_contiguous() else pool.contiguous()
    if q.stride(-1) != 1:
        q = q.contiguous()
    if table.stride(-1) != 1:
        table = table.contiguous()
    out = torch.empty(B, H, rank, dtype=pool.dtype, device=q.device)
    nsplit, per = split_plan(B, table.shape[1] * bs)
    lowp = pool.dtype in (torch.bfloat16, torch.float16) and os.environ.get("TRITON_INTERPRET") != "1"
    BR, BP, BH = _pow2(rank), _pow2(rope), _pow2(H)
    if nsplit > 1:
        ms = torch.empty(B, nsplit, H, dtype=torch.float32, device=q.device)
        ls = torch.empty_like(ms)
        acc = torch.empty(B, nsplit, H, rank, dtype=torch.float32, device=q.device)
    else:
        ms = ls = acc = out  # unused
    _split_kernel[(B, nsplit)](q, pool, table, positions, ms, ls, acc, out, q.stride(0), q.stride(1), table.stride(0),
                               H, per, scale, RANK=rank, ROPE=rope, BR=BR, BP=BP, BH=BH, BS=bs, BN=BLOCK_N,
                               NSPLIT=nsplit, LOWP=lowp, num_warps=4, num_stages=2)
    if nsplit > 1:
        _merge_kernel[(B, H)](ms, ls, acc, out, H, RANK=rank, BR=triton.next_power_of_2(rank), NSPLIT=nsplit,
                              BSPLIT=triton.next_power_of_2(nsplit), num_warps=4)
    return out
