"""Paged MLA decode in Triton (flash-decoding over the block table); reference and op in mla_decode.py.

Program (b, s) reads row b's keys in split s straight from the block pool (token t lives at
pool[table[b, t // bs], t % bs]), with all heads at once (the latent keys are shared by the heads), and keeps an
online softmax (fp32 max, sum and weighted latent sum). The new token's latent comes from its input (split 0 also
appends it to the pool), so the append costs no extra launch and no program waits for it. With one split it writes
the output; otherwise a second launch merges the splits per (row, head). The split count depends only on shapes
(rows, gathered blocks), so a CUDA graph captured for a shape stays valid; splits past a row's length exit at once.

The CUDA default (MIXLAB_FUSED_DECODE=0 turns it off); checked against the reference on an H100
(bench/run_engine_gpu.sh), in the interpreter and compiled for sm_90 on CPU (tests/evals_engine/test_decode_aot.py).

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
def _split_kernel(QL, QR, KVN, KRN, POOL, TABLE, POS, MS, LS, ACC, OUT, sqlb, sqlh, sqrb, sqrh, skv, skr, stb, H,
                  split_tokens, scale, RANK: tl.constexpr, ROPE: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr,
                  BH: tl.constexpr, BS: tl.constexpr, BN: tl.constexpr, NSPLIT: tl.constexpr, LOWP: tl.constexpr):
    b = tl.program_id(0)
    s = tl.program_id(1)
    C: tl.constexpr = RANK + ROPE
    pos = tl.load(POS + b).to(tl.int32)
    length = pos + 1
    start = s * split_tokens
    end = tl.minimum(start + split_tokens, length)
    hs = tl.arange(0, BH)
    rs = tl.arange(0, BR)
    ps = tl.arange(0, BP)
    hm = hs < H
    rm = rs < RANK
    pm = ps < ROPE
    b64 = b.to(tl.int64)
    q_lat = tl.load(QL + b64 * sqlb + hs[:, None] * sqlh + rs[None, :], mask=hm[:, None] & rm[None, :], other=0.0)
    q_rot = tl.load(QR + b64 * sqrb + hs[:, None] * sqrh + ps[None, :], mask=hm[:, None] & pm[None, :], other=0.0)
    # The new token's latent: used from here for its own position (whatever the pool holds there at this moment)
    # and written to the pool by split 0 (no program reads that pool row, so there is no race).
    kv_new = tl.load(KVN + b64 * skv + rs, mask=rm, other=0.0).to(POOL.dtype.element_ty)
    kr_new = tl.load(KRN + b64 * skr + ps, mask=pm, other=0.0).to(POOL.dtype.element_ty)
    if s == 0:
        page = tl.load(TABLE + b64 * stb + pos // BS)
        dst = POOL + (page * BS + pos % BS).to(tl.int64) * C
        tl.store(dst + rs, kv_new, mask=rm)
        tl.store(dst + RANK + ps, kr_new, mask=pm)
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
        now = (toks == pos)[:, None]
        kv = tl.where(now, kv_new[None, :], kv)
        kr = tl.where(now, kr_new[None, :], kr)
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


def _last_unit(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def mla_decode_paged_triton(q_lat, q_rot, kv_new, rot_new, pool, table, positions, scale: float) -> torch.Tensor:
    """Arguments as `mla_decode.mla_decode_paged` (checked there); pool is written in place (it must be
    contiguous: it is the cache)."""
    B, H, rank = q_lat.shape
    rope = q_rot.shape[-1]
    bs = pool.shape[1]
    assert pool.is_contiguous(), "the latent pool is written in place"
    q_lat, q_rot, kv_new, rot_new, table = (_last_unit(t) for t in (q_lat, q_rot, kv_new, rot_new, table))
    out = torch.empty(B, H, rank, dtype=pool.dtype, device=pool.device)
    nsplit, per = split_plan(B, table.shape[1] * bs)
    lowp = pool.dtype in (torch.bfloat16, torch.float16) and os.environ.get("TRITON_INTERPRET") != "1"
    BR, BP, BH = _pow2(rank), _pow2(rope), _pow2(H)
    if nsplit > 1:
        ms = torch.empty(B, nsplit, H, dtype=torch.float32, device=pool.device)
        ls = torch.empty_like(ms)
        acc = torch.empty(B, nsplit, H, rank, dtype=torch.float32, device=pool.device)
    else:
        ms = ls = acc = out  # unused
    _split_kernel[(B, nsplit)](q_lat, q_rot, kv_new, rot_new, pool, table, positions, ms, ls, acc, out,
                               q_lat.stride(0), q_lat.stride(1), q_rot.stride(0), q_rot.stride(1), kv_new.stride(0),
                               rot_new.stride(0), table.stride(0), H, per, scale, RANK=rank, ROPE=rope, BR=BR, BP=BP,
                               BH=BH, BS=bs, BN=BLOCK_N, NSPLIT=nsplit, LOWP=lowp, num_warps=4, num_stages=2)
    if nsplit > 1:
        _merge_kernel[(B, H)](ms, ls, acc, out, H, RANK=rank, BR=triton.next_power_of_2(rank), NSPLIT=nsplit,
                              BSPLIT=triton.next_power_of_2(nsplit), num_warps=4)
    return out
