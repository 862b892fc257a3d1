"""Triton kernels of mixlab's chunked KDA (forward and backward); the autograd wrapper is `kda_triton.py`.

Layout: every token tensor is [total tokens, H, D] (contiguous [B, T, H, D] viewed flat); a program finds its
sequence through `cu` (cu_seqlens, [N+1]) and its chunk through `CI` (chunk index pairs (sequence, chunk in
sequence), [NT, 2]), so varlen and fixed-length batches take the same code. Chunks are C = 64 tokens, split into
sub-blocks of BC = 16 for the score matrices. Notation as in kda_chunk_fn.py: Γ = chunk-local cumsum of g, q is
pre-scaled, Aqk[t,s] = Σ_d q_t k_s e^{Γ_t − Γ_s} (s ≤ t), Akk the same with k_t (s < t),
Tm = (I + diag(β)Akk)⁻¹,
u = Tm (β v), w = Tm (β k e^Γ), qg = q e^Γ, kd = k e^{Γ_last − Γ}; per chunk: v_new = u − w S,
o = qg S + Aqk v_new, S ← e^{Γ_last} ⊙ S + kdᵀ v_new.

Work split (as in fla-core's chunked kernels): everything per chunk runs in parallel kernels; the two recurrences
(forward over chunks, backward in reverse) keep only the state update in their sequential loop.

Addressing: a program adds its chunk's int64 offset to the base pointer once (a scalar) and indexes its tiles with
int32 offsets (row · H·D + column); int64 offset tiles cost two registers per element and defeat vectorised loads.

Numerics: every exponent is clamped with min(·, 0). For g ≤ 0 (a decay, as KDA's gate always gives) the clamp
changes nothing on the entries that are used: score entries are split so each factor is e^{≤0} (pairwise inside a
16-token sub-block, through the sub-block boundary between sub-blocks), and the clamp keeps masked and padded
entries finite (no inf·0 = NaN). Score matrices, Tm, Γ and the recurrent state are fp32; the intermediates passed
between kernels (w, u, qg, kd, v_new, chunk states, du) and the tensor-core dots over them are in their storage
dtype (the inputs' bf16/fp16, else fp32), accumulating in fp32.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _chunk_pos(CI, cu, pid, H: tl.constexpr, C: tl.constexpr):
    """(first token of the chunk · H (int64, add h then multiply by the row width), valid rows (int32), length of
    its sequence (int64), chunk index in its sequence)."""
    n = tl.load(CI + 2 * pid).to(tl.int64)
    ic = tl.load(CI + 2 * pid + 1).to(tl.int64)
    bos = tl.load(cu + n).to(tl.int64)
    Tn = tl.load(cu + n + 1).to(tl.int64) - bos
    nv = tl.minimum(Tn - ic * C, C).to(tl.int32)
    return (bos + ic * C) * H, nv


@triton.jit
def _cumsum_kernel(X, Y, cu, CI, H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, REVERSE: tl.constexpr):
    """Chunk-local (reverse) cumulative sum along tokens of a [tokens, H, K] fp32 tensor."""
    pid, h = tl.program_id(0), tl.program_id(1)
    th, nv = _chunk_pos(CI, cu, pid, H, C)
    base = (th + h) * K
    r = tl.arange(0, C)
    d = tl.arange(0, K)
    off = r[:, None] * (H * K) + d[None, :]
    m = (r < nv)[:, None]
    x = tl.load(X + base + off, mask=m, other=0.0).to(tl.float32)
    y = tl.cumsum(x, 0)
    if REVERSE:
        y = tl.sum(x, 0)[None, :] - y + x
    tl.store(Y + base + off, y, mask=m)


@triton.jit
def _dot32(a, b):
    # The inverse's small products in full fp32 (not tf32): Tm as exact as a forward substitution.
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _diag_inv(Ab, Bb, nv, i, H: tl.constexpr, C: tl.constexpr, BC: tl.constexpr):
    """(I + L)⁻¹ of diagonal sub-block i ([BC, BC]), L = diag(β) Akk strictly lower (Ab, Bb: the chunk's Akk and
    β base pointers). L is nilpotent (L^BC = 0), so (I + L)⁻¹ = Σ_{n<BC} (−L)^n = (I − L)(I + L²)(I + L⁴)(I + L⁸):
    six fp32 products instead of BC − 1 serial substitution steps, each a cross-thread reduction."""
    tl.static_assert(BC == 16)
    rb = tl.arange(0, BC)
    rows = i * BC + rb
    vr = rows < nv
    b = tl.load(Bb + rows * H, mask=vr, other=0.0).to(tl.float32)
    lt = tl.load(Ab + rows[:, None] * (H * C) + i * BC + rb[None, :], mask=vr[:, None], other=0.0)
    n1 = tl.where(rb[:, None] > rb[None, :], -lt * b[:, None], 0.0)
    eye = tl.where(rb[:, None] == rb[None, :], 1.0, 0.0)
    n2 = _dot32(n1, n1)
    n4 = _dot32(n2, n2)
    x = _dot32(eye + n1, eye + n2)
    x = _dot32(x, eye + n4)
    return _dot32(x, eye + _dot32(n4, n4))


@triton.jit
def _off_blk(Ab, Bb, nv, i, j, H: tl.constexpr, C: tl.constexpr, BC: tl.constexpr):
    """Sub-block (i, j), i > j, of L = diag(β) Akk."""
    rb = tl.arange(0, BC)
    rows = i * BC + rb
    vr = rows < nv
    b = tl.load(Bb + rows * H, mask=vr, other=0.0).to(tl.float32)
    lt = tl.load(Ab + rows[:, None] * (H * C) + j * BC + rb[None, :], mask=vr[:, None], other=0.0)
    return lt * b[:, None]


@triton.jit
def _store_blk(Tb, x, nv, i, j, H: tl.constexpr, C: tl.constexpr, BC: tl.constexpr):
    rb = tl.arange(0, BC)
    rows = i * BC + rb
    tl.store(Tb + rows[:, None] * (H * C) + j * BC + rb[None, :], x, mask=(rows < nv)[:, None])


@triton.jit
def _solve_fwd_kernel(Q, Kt, V, G, BETA, AKK, TM, W, U, QG, KD, cu, CI, scale,
                      H: tl.constexpr, K: tl.constexpr, DV: tl.constexpr, C: tl.constexpr, BC: tl.constexpr,
                      BD: tl.constexpr):
    """Tm = (I + diag(β) Akk)⁻¹ by blocks of BC (`_diag_inv` for the four diagonal blocks, products for the six
    below), then w = Tm (β k e^Γ), u = Tm (β v), and the chunk's qg = q·scale·e^Γ and kd = k e^{Γ_last − Γ} for
    the recurrences (w, u, qg, kd in the dtype of W), K and V in blocks of BD."""
    tl.static_assert(C == 4 * BC)
    pid, h = tl.program_id(0), tl.program_id(1)
    th, nv = _chunk_pos(CI, cu, pid, H, C)
    Ab, Tb, Bb = AKK + (th + h) * C, TM + (th + h) * C, BETA + th + h
    x00 = _diag_inv(Ab, Bb, nv, 0, H, C, BC)
    x11 = _diag_inv(Ab, Bb, nv, 1, H, C, BC)
    x22 = _diag_inv(Ab, Bb, nv, 2, H, C, BC)
    x33 = _diag_inv(Ab, Bb, nv, 3, H, C, BC)
    # X_ij = −X_ii Σ_{j ≤ m < i} L_im X_mj (block forward substitution).
    l10 = _off_blk(Ab, Bb, nv, 1, 0, H, C, BC)
    l21 = _off_blk(Ab, Bb, nv, 2, 1, H, C, BC)
    l32 = _off_blk(Ab, Bb, nv, 3, 2, H, C, BC)
    x10 = -_dot32(x11, _dot32(l10, x00))
    x21 = -_dot32(x22, _dot32(l21, x11))
    x32 = -_dot32(x33, _dot32(l32, x22))
    l20 = _off_blk(Ab, Bb, nv, 2, 0, H, C, BC)
    x20 = -_dot32(x22, _dot32(l20, x00) + _dot32(l21, x10))
    l31 = _off_blk(Ab, Bb, nv, 3, 1, H, C, BC)
    x31 = -_dot32(x33, _dot32(l31, x11) + _dot32(l32, x21))
    l30 = _off_blk(Ab, Bb, nv, 3, 0, H, C, BC)
    x30 = -_dot32(x33, _dot32(l30, x00) + _dot32(l31, x10) + _dot32(l32, x20))
    zero = tl.zeros([BC, BC], dtype=tl.float32)
    _store_blk(Tb, x00, nv, 0, 0, H, C, BC)
    _store_blk(Tb, zero, nv, 0, 1, H, C, BC)
    _store_blk(Tb, zero, nv, 0, 2, H, C, BC)
    _store_blk(Tb, zero, nv, 0, 3, H, C, BC)
    _store_blk(Tb, x10, nv, 1, 0, H, C, BC)
    _store_blk(Tb, x11, nv, 1, 1, H, C, BC)
    _store_blk(Tb, zero, nv, 1, 2, H, C, BC)
    _store_blk(Tb, zero, nv, 1, 3, H, C, BC)
    _store_blk(Tb, x20, nv, 2, 0, H, C, BC)
    _store_blk(Tb, x21, nv, 2, 1, H, C, BC)
    _store_blk(Tb, x22, nv, 2, 2, H, C, BC)
    _store_blk(Tb, zero, nv, 2, 3, H, C, BC)
    _store_blk(Tb, x30, nv, 3, 0, H, C, BC)
    _store_blk(Tb, x31, nv, 3, 1, H, C, BC)
    _store_blk(Tb, x32, nv, 3, 2, H, C, BC)
    _store_blk(Tb, x33, nv, 3, 3, H, C, BC)
    tl.debug_barrier()  # the whole Tm is read back below: every thread's stores first (visible within the block)
    rc = tl.arange(0, C)
    vc = rc < nv
    tm = tl.load(Tb + rc[:, None] * (H * C) + rc[None, :], mask=vc[:, None], other=0.0)
    beta = tl.load(Bb + rc * H, mask=vc, other=0.0).to(tl.float32)
    bk = (th + h) * K
    # K and V in blocks of BD: [C, BD] tiles keep the program's registers (and so its occupancy) bounded
    for d0 in range(0, K, BD):
        d = d0 + tl.arange(0, BD)
        off_k = rc[:, None] * (H * K) + d[None, :]
        k = tl.load(Kt + bk + off_k, mask=vc[:, None], other=0.0).to(tl.float32)
        g = tl.load(G + bk + off_k, mask=vc[:, None], other=0.0)
        E = tl.exp(tl.minimum(g, 0.0))
        w = tl.dot(tm, k * E * beta[:, None])
        tl.store(W + bk + off_k, w.to(W.dtype.element_ty), mask=vc[:, None])
        g_last = tl.load(G + bk + (nv - 1) * (H * K) + d)
        tl.store(KD + bk + off_k, (k * tl.exp(tl.minimum(g_last[None, :] - g, 0.0))).to(KD.dtype.element_ty),
                 mask=vc[:, None])
        q = tl.load(Q + bk + off_k, mask=vc[:, None], other=0.0).to(tl.float32)
        tl.store(QG + bk + off_k, (q * scale * E).to(QG.dtype.element_ty), mask=vc[:, None])
    bv = (th + h) * DV
    for d0 in range(0, DV, BD):
        dv = d0 + tl.arange(0, BD)
        off_v = rc[:, None] * (H * DV) + dv[None, :]
        v = tl.load(V + bv + off_v, mask=vc[:, None], other=0.0).to(tl.float32)
        u = tl.dot(tm, v * beta[:, None])
        tl.store(U + bv + off_v, u.to(U.dtype.element_ty), mask=vc[:, None])


@triton.jit
def _seq_pos(cu, CO, nh, H: tl.constexpr):
    """(first token · H (int64), length (int64), first chunk of the sequence (int64)) for program nh = n·H + h."""
    n = nh // H
    bos = tl.load(cu + n).to(tl.int64)
    Tn = tl.load(cu + n + 1).to(tl.int64) - bos
    return bos * H, Tn, tl.load(CO + n).to(tl.int64)


@triton.jit
def _state_fwd_kernel(KD, G, W, U, VN, S0, STARTS, ST, cu, CO,
                      H: tl.constexpr, K: tl.constexpr, DV: tl.constexpr, C: tl.constexpr, BV: tl.constexpr,
                      HAS_S0: tl.constexpr, STORE_ST: tl.constexpr):
    """The chunk-to-chunk recurrence (grid: sequences·heads·V blocks), nothing else in the sequential loop:
    stores each chunk's start state and v_new = u − w S; S ← e^{Γ_last} ⊙ S + kdᵀ v_new. Dots in W's dtype."""
    pid = tl.program_id(0)  # 1-D grid (V blocks of one head adjacent: they read the same w, kd); no 65535 cap
    iv, nh = pid % (DV // BV), pid // (DV // BV)
    h = nh % H
    bh, Tn, co = _seq_pos(cu, CO, nh, H)
    rc = tl.arange(0, C)
    d = tl.arange(0, K)
    cv = iv * BV + tl.arange(0, BV)
    off_s = d[:, None] * DV + cv[None, :]
    off_k = rc[:, None] * (H * K) + d[None, :]
    off_v = rc[:, None] * (H * DV) + cv[None, :]
    if HAS_S0:
        S = tl.load(S0 + nh.to(tl.int64) * (K * DV) + off_s)
    else:
        S = tl.zeros([K, BV], dtype=tl.float32)
    for ic in range(tl.cdiv(Tn, C)):
        th = bh + ic * (C * H)
        nv = tl.minimum(Tn - ic * C, C).to(tl.int32)
        vc = (rc < nv)[:, None]
        tl.store(STARTS + ((co + ic) * H + h) * (K * DV) + off_s, S.to(STARTS.dtype.element_ty))
        bk = (th + h) * K
        w = tl.load(W + bk + off_k, mask=vc, other=0.0)
        kd = tl.load(KD + bk + off_k, mask=vc, other=0.0)
        bv = (th + h) * DV
        u = tl.load(U + bv + off_v, mask=vc, other=0.0).to(tl.float32)
        v_new = (u - tl.dot(w, S.to(W.dtype.element_ty))).to(VN.dtype.element_ty)
        tl.store(VN + bv + off_v, v_new, mask=vc)
        el = tl.exp(tl.minimum(tl.load(G + bk + (nv - 1) * (H * K) + d), 0.0))
        S = S * el[:, None] + tl.dot(tl.trans(kd), v_new)
    if STORE_ST:
        tl.store(ST + nh.to(tl.int64) * (K * DV) + off_s, S)


@triton.jit
def _output_fwd_kernel(QG, STARTS, AQK, VN, O, cu, CI,
                       H: tl.constexpr, K: tl.constexpr, DV: tl.constexpr, C: tl.constexpr, BV: tl.constexpr):
    """o = qg S + Aqk v_new per chunk (grid: chunks, V blocks, heads), in parallel once the states are known."""
    pid, iv, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    th, nv = _chunk_pos(CI, cu, pid, H, C)
    rc = tl.arange(0, C)
    vc = (rc < nv)[:, None]
    d = tl.arange(0, K)
    cv = iv * BV + tl.arange(0, BV)
    qg = tl.load(QG + (th + h) * K + rc[:, None] * (H * K) + d[None, :], mask=vc, other=0.0)
    S = tl.load(STARTS + (pid.to(tl.int64) * H + h) * (K * DV) + d[:, None] * DV + cv[None, :])
    a = tl.load(AQK + (th + h) * C + rc[:, None] * (H * C) + rc[None, :], mask=vc, other=0.0)
    bv = (th + h) * DV
    off_v = rc[:, None] * (H * DV) + cv[None, :]
    vn = tl.load(VN + bv + off_v, mask=vc, other=0.0)
    o = tl.dot(qg, S) + tl.dot(a.to(VN.dtype.element_ty), vn)
    tl.store(O + bv + off_v, o.to(O.dtype.element_ty), mask=vc)


@triton.jit
def _dv0_bwd_kernel(AQK, VN, DO, DV0, DAQK, cu, CI,
                    H: tl.constexpr, DV: tl.constexpr, C: tl.constexpr, BV: tl.constexpr):
    """The output's own part of the backward, per chunk: dv0 = Aqkᵀ dO (what v_new gets from o) and
    dAqk = dO v_newᵀ (lower triangle), so the backward recurrence keeps only what must be sequential."""
    pid, h = tl.program_id(0), tl.program_id(1)
    th, nv = _chunk_pos(CI, cu, pid, H, C)
    rc = tl.arange(0, C)
    vc = (rc < nv)[:, None]
    ba = (th + h) * C
    off_c = rc[:, None] * (H * C) + rc[None, :]
    a = tl.load(AQK + ba + off_c, mask=vc, other=0.0).to(VN.dtype.element_ty)
    daq = tl.zeros([C, C], dtype=tl.float32)
    bv = (th + h) * DV
    for iv in range(DV // BV):
        off_v = rc[:, None] * (H * DV) + iv * BV + tl.arange(0, BV)[None, :]
        do = tl.load(DO + bv + off_v, mask=vc, other=0.0).to(VN.dtype.element_ty)
        vn = tl.load(VN + bv + off_v, mask=vc, other=0.0)
        tl.store(DV0 + bv + off_v, tl.dot(tl.trans(a), do).to(DV0.dtype.element_ty), mask=vc)
        daq += tl.dot(do, tl.trans(vn))
    tl.store(DAQK + ba + off_c, tl.where(rc[:, None] >= rc[None, :], daq, 0.0), mask=vc)


@triton.jit
def _state_bwd_kernel(QG, KD, G, W, DO, DV0, DU, DST, DNEXT, DS0, cu, CO,
                      H: tl.constexpr, K: tl.constexpr, DV: tl.constexpr, C: tl.constexpr, BV: tl.constexpr,
                      HAS_DST: tl.constexpr):
    """Backwards through the recurrence, per chunk from the last: stores dS_{n+1} and du = dv0 + kd dS_{n+1}
    (the gradient of v_new); dS_n = e^{Γ_last} ⊙ dS_{n+1} + qgᵀ dO − wᵀ du."""
    pid = tl.program_id(0)  # 1-D grid (V blocks of one head adjacent: they read the same w, kd); no 65535 cap
    iv, nh = pid % (DV // BV), pid // (DV // BV)
    h = nh % H
    bh, Tn, co = _seq_pos(cu, CO, nh, H)
    rc = tl.arange(0, C)
    d = tl.arange(0, K)
    cv = iv * BV + tl.arange(0, BV)
    off_s = d[:, None] * DV + cv[None, :]
    off_k = rc[:, None] * (H * K) + d[None, :]
    off_v = rc[:, None] * (H * DV) + cv[None, :]
    if HAS_DST:
        dS = tl.load(DST + nh.to(tl.int64) * (K * DV) + off_s)
    else:
        dS = tl.zeros([K, BV], dtype=tl.float32)
    nt = tl.cdiv(Tn, C)
    for r in range(nt):
        ic = nt - 1 - r
        th = bh + ic * (C * H)
        nv = tl.minimum(Tn - ic * C, C).to(tl.int32)
        vc = (rc < nv)[:, None]
        dSc = dS.to(W.dtype.element_ty)
        tl.store(DNEXT + ((co + ic) * H + h) * (K * DV) + off_s, dSc)
        bk = (th + h) * K
        kd = tl.load(KD + bk + off_k, mask=vc, other=0.0)
        qg = tl.load(QG + bk + off_k, mask=vc, other=0.0)
        w = tl.load(W + bk + off_k, mask=vc, other=0.0)
        bv = (th + h) * DV
        do = tl.load(DO + bv + off_v, mask=vc, other=0.0).to(W.dtype.element_ty)
        du = tl.load(DV0 + bv + off_v, mask=vc, other=0.0).to(tl.float32) + tl.dot(kd, dSc)
        du = du.to(DU.dtype.element_ty)
        tl.store(DU + bv + off_v, du, mask=vc)
        el = tl.exp(tl.minimum(tl.load(G + bk + (nv - 1) * (H * K) + d), 0.0))
        dS = dS * el[:, None] + tl.dot(tl.trans(qg), do) - tl.dot(tl.trans(w), du)
    tl.store(DS0 + nh.to(tl.int64) * (K * DV) + off_s, dS)


@triton.jit
def _intra_bwd_v_kernel(V, BETA, TM, U, DU, DV_, DBETA, DIL, cu, CI,
                        H: tl.constexpr, DV: tl.constexpr, C: tl.constexpr, BV: tl.constexpr):
    """Per chunk, the value side of the UT transform's backward: dvb = Tmᵀ du, dv = β dvb, the v part of dβ and
    dvb uᵀ (the u part of d(Tm⁻¹)) into DIL for `_intra_bwd_kernel` (split off to keep that kernel's registers)."""
    pid, h = tl.program_id(0), tl.program_id(1)
    th, nv = _chunk_pos(CI, cu, pid, H, C)
    rc = tl.arange(0, C)
    vc = (rc < nv)[:, None]
    bc, bv = (th + h) * C, (th + h) * DV
    off_c = rc[:, None] * (H * C) + rc[None, :]
    tm = tl.load(TM + bc + off_c, mask=vc, other=0.0)
    beta = tl.load(BETA + th + h + rc * H, mask=rc < nv, other=0.0).to(tl.float32)
    dil = tl.zeros([C, C], dtype=tl.float32)
    dbeta = tl.zeros([C], dtype=tl.float32)
    for iv in range(DV // BV):
        off_v = rc[:, None] * (H * DV) + iv * BV + tl.arange(0, BV)[None, :]
        du = tl.load(DU + bv + off_v, mask=vc, other=0.0).to(tl.float32)
        u = tl.load(U + bv + off_v, mask=vc, other=0.0).to(tl.float32)
        v = tl.load(V + bv + off_v, mask=vc, other=0.0).to(tl.float32)
        dvb = tl.dot(tl.trans(tm), du)
        tl.store(DV_ + bv + off_v, (dvb * beta[:, None]).to(DV_.dtype.element_ty), mask=vc)
        dbeta += tl.sum(dvb * v, 1)
        dil += tl.dot(dvb, tl.trans(u))
    tl.store(DBETA + th + h + rc * H, dbeta, mask=rc < nv)
    tl.store(DIL + bc + off_c, dil, mask=vc)


@triton.jit
def _intra_bwd_kernel(Kt, G, BETA, AKK, TM, W, QG, VN, STARTS, DNEXT, DO, DU,
                      DQ, DK, DG, DBETA, DAKK, cu, CI,
                      H: tl.constexpr, K: tl.constexpr, DV: tl.constexpr, C: tl.constexpr, BV: tl.constexpr):
    """Per chunk, everything else but the score matrices' own backward (see ChunkKDAFunction.backward, same names).

    Finishes dβ and writes dAkk (DAKK holds dvb uᵀ from `_intra_bwd_v_kernel` on entry); writes dq (w.r.t. the
    scaled q), dk and dΓ partially (the score parts are added by `_scores_off_bwd_kernel` and
    `_scores_diag_bwd_kernel`; dAqk is `_dv0_bwd_kernel`'s).
    """
    pid, h = tl.program_id(0), tl.program_id(1)
    th, nv = _chunk_pos(CI, cu, pid, H, C)
    rc = tl.arange(0, C)
    d = tl.arange(0, K)
    vc = (rc < nv)[:, None]
    bk, bc, bv = (th + h) * K, (th + h) * C, (th + h) * DV
    off_k = rc[:, None] * (H * K) + d[None, :]
    off_c = rc[:, None] * (H * C) + rc[None, :]
    dqs = tl.zeros([C, K], dtype=tl.float32)
    dw = tl.zeros([C, K], dtype=tl.float32)
    dkd = tl.zeros([C, K], dtype=tl.float32)
    diag_dm = tl.zeros([K], dtype=tl.float32)
    bs = (pid.to(tl.int64) * H + h) * (K * DV)
    for iv in range(DV // BV):
        cv = iv * BV + tl.arange(0, BV)
        off_s = d[:, None] * DV + cv[None, :]
        S = tl.load(STARTS + bs + off_s)
        dSn = tl.load(DNEXT + bs + off_s)
        off_v = rc[:, None] * (H * DV) + cv[None, :]
        do = tl.load(DO + bv + off_v, mask=vc, other=0.0).to(W.dtype.element_ty)
        du = tl.load(DU + bv + off_v, mask=vc, other=0.0)
        vn = tl.load(VN + bv + off_v, mask=vc, other=0.0)
        dqs += tl.dot(do, tl.trans(S))
        dw += tl.dot(du, tl.trans(S))
        dkd += tl.dot(vn, tl.trans(dSn))
        diag_dm += tl.sum(dSn.to(tl.float32) * S.to(tl.float32), 1)
    # Epilogue ordered so that few [C, K] fp32 tiles are alive at once (registers).
    g = tl.load(G + bk + off_k, mask=vc, other=0.0)
    E = tl.exp(tl.minimum(g, 0.0))
    qg = tl.load(QG + bk + off_k, mask=vc, other=0.0).to(tl.float32)
    dg = qg * dqs
    tl.store(DQ + bk + off_k, dqs * E, mask=vc)
    g_last = tl.load(G + bk + (nv - 1) * (H * K) + d)
    ed = tl.exp(tl.minimum(g_last[None, :] - g, 0.0))
    k = tl.load(Kt + bk + off_k, mask=vc, other=0.0).to(tl.float32)
    kd_dkd = k * ed * dkd
    dg -= kd_dkd
    last_row = tl.sum(kd_dkd, 0) + diag_dm * tl.exp(tl.minimum(g_last, 0.0))
    dg += tl.where((rc == nv - 1)[:, None], last_row[None, :], 0.0)
    dk = dkd * ed
    tm = tl.load(TM + bc + off_c, mask=vc, other=0.0)
    dkb = -tl.dot(tl.trans(tm), dw)  # the gradient of w is −du Sᵀ
    w = tl.load(W + bk + off_k, mask=vc, other=0.0).to(tl.float32)
    dil = tl.load(DAKK + bc + off_c, mask=vc, other=0.0)
    dil = tl.where(rc[:, None] > rc[None, :], -(dil + tl.dot(dkb, tl.trans(w))), 0.0)
    akk = tl.load(AKK + bc + off_c, mask=vc, other=0.0)
    kg = k * E
    beta = tl.load(BETA + th + h + rc * H, mask=rc < nv, other=0.0).to(tl.float32)
    dbeta = tl.load(DBETA + th + h + rc * H, mask=rc < nv, other=0.0)
    dbeta += tl.sum(dkb * kg, 1) + tl.sum(dil * akk, 1)
    tl.store(DBETA + th + h + rc * H, dbeta, mask=rc < nv)
    tl.store(DAKK + bc + off_c, dil * beta[:, None], mask=vc)
    dkg = dkb * beta[:, None]
    tl.store(DK + bk + off_k, dkg * E + dk, mask=vc)
    tl.store(DG + bk + off_k, dg + kg * dkg, mask=vc)


@triton.jit
def _scores_off_fwd_kernel(Q, Kt, G, AQK, AKK, cu, CI, scale,
                           H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr):
    """Rows [i·BC, (i+1)·BC) of Aqk and Akk outside their diagonal sub-block (grid: chunks × sub-blocks, heads):
    the columns of earlier sub-blocks by one [BC, C] tensor-core dot per K block, both factors relative to Γ at the
    row before this sub-block (each e^{≤0}), zeros after the sub-block. The diagonal sub-block is
    `_scores_diag_fwd_kernel`'s."""
    NB: tl.constexpr = C // BC
    p0, h = tl.program_id(0), tl.program_id(1)
    pid, i = p0 // NB, p0 % NB
    th, nv = _chunk_pos(CI, cu, pid, H, C)
    bk = (th + h) * K
    Qb, Kb, Gb = Q + bk, Kt + bk, G + bk
    rb = i * BC + tl.arange(0, BC)
    rc = tl.arange(0, C)
    vb = rb < nv
    acc_q = tl.zeros([BC, C], dtype=tl.float32)
    acc_k = tl.zeros([BC, C], dtype=tl.float32)
    if i > 0:
        r_ref = i * BC - 1
        before = ((rc < nv) & (rc < i * BC))[:, None]
        for k0 in range(0, K, BK):
            d = k0 + tl.arange(0, BK)
            off_b = rb[:, None] * (H * K) + d[None, :]
            q_b = tl.load(Qb + off_b, mask=vb[:, None], other=0.0).to(tl.float32) * scale
            k_b = tl.load(Kb + off_b, mask=vb[:, None], other=0.0).to(tl.float32)
            g_b = tl.load(Gb + off_b, mask=vb[:, None], other=0.0)
            g_ref = tl.load(Gb + r_ref * (H * K) + d, mask=d * 0 + r_ref < nv, other=0.0)
            e_b = tl.exp(tl.minimum(g_b - g_ref[None, :], 0.0))
            off_c = rc[:, None] * (H * K) + d[None, :]
            k_c = tl.load(Kb + off_c, mask=before, other=0.0).to(tl.float32)
            g_c = tl.load(Gb + off_c, mask=before, other=0.0)
            kcol = tl.trans(k_c * tl.exp(tl.minimum(g_ref[None, :] - g_c, 0.0)))
            acc_q += tl.dot(q_b * e_b, kcol)
            acc_k += tl.dot(k_b * e_b, kcol)
    ba = (th + h) * C
    off_a = rb[:, None] * (H * C) + rc[None, :]
    earlier = (rc < i * BC)[None, :]
    outside = vb[:, None] & ((rc < i * BC) | (rc >= (i + 1) * BC))[None, :]
    tl.store(AQK + ba + off_a, tl.where(earlier, acc_q, 0.0), mask=outside)
    tl.store(AKK + ba + off_a, tl.where(earlier, acc_k, 0.0), mask=outside)


@triton.jit
def _token_pos(CI, cu, H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BC: tl.constexpr, BH: tl.constexpr):
    """A token-parallel program's place (grid: chunks × tokens, head blocks): its chunk's `_chunk_pos` (first token ·
    H, valid rows), its row r in the chunk, the first row of its sub-block, its BH heads and the K channels."""
    p0, hb = tl.program_id(0), tl.program_id(1)
    th, nv = _chunk_pos(CI, cu, p0 // C, H, C)
    r = p0 % C
    return th, nv, r, (r // BC) * BC, hb * BH + tl.arange(0, BH), tl.arange(0, K)


@triton.jit
def _token_rows(Q, Kt, G, th, r, hh, d, scale, H: tl.constexpr, K: tl.constexpr):
    """(offsets, q·scale, k, Γ) of row r of the chunk, for heads hh: [BH, K] fp32."""
    off = (th + r * H + hh[:, None]) * K + d[None, :]
    return off, tl.load(Q + off).to(tl.float32) * scale, tl.load(Kt + off).to(tl.float32), tl.load(G + off)


@triton.jit
def _scores_diag_fwd_kernel(Q, Kt, G, AQK, AKK, cu, CI, scale,
                            H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BC: tl.constexpr, BH: tl.constexpr):
    """The diagonal sub-block's entries of one token's rows of Aqk and Akk, for BH heads (grid: chunks × tokens,
    head blocks): a loop over the earlier tokens of its sub-block (at most BC − 1), each one [BH, K] product with its
    pairwise decays e^{Γ_t − Γ_s} (≤ 1). Token-parallel, as fla-core's forward."""
    th, nv, r, ts, hh, d = _token_pos(CI, cu, H, K, C, BC, BH)
    if r >= nv:
        return
    off_t, q_t, k_t, g_t = _token_rows(Q, Kt, G, th, r, hh, d, scale, H, K)
    jb = tl.arange(0, BC)
    aq = tl.zeros([BH, BC], dtype=tl.float32)
    ak = tl.zeros([BH, BC], dtype=tl.float32)
    for s in range(ts, r + 1):
        off_s = (th + s * H + hh[:, None]) * K + d[None, :]
        ke = tl.load(Kt + off_s).to(tl.float32) * tl.exp(tl.minimum(g_t - tl.load(G + off_s), 0.0))
        col = (jb == s - ts)[None, :]
        aq = tl.where(col, tl.sum(q_t * ke, 1)[:, None], aq)
        ak = tl.where(col & (s < r), tl.sum(k_t * ke, 1)[:, None], ak)
    off_a = (th + r * H + hh[:, None]) * C + ts + jb[None, :]
    tl.store(AQK + off_a, aq)
    tl.store(AKK + off_a, ak)


@triton.jit
def _scores_off_bwd_kernel(Q, Kt, G, DAQK, DAKK, DQ, DK, DG, cu, CI, scale,
                           H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr):
    """Backward of the score entries outside the diagonal sub-blocks, for the rows and columns of sub-block i and
    channels [kb·BK, (kb+1)·BK) (grid: chunks × sub-blocks × K blocks, heads; every term is separable over
    channels); adds to the partial dq (w.r.t. q·scale), dk, dΓ. (Rows and columns as two launches, with fewer
    registers each, measured slower on an H100.)

    Row side (t in block i, s in earlier blocks): factors relative to Γ before the block, one [BC, C] × [C, BK] dot.
    Column side (s in block i, t in later blocks): relative to Γ at the block's last row, one [C, BC]ᵀ × [C, BK]
    dot per score matrix. `_scores_diag_bwd_kernel` adds the diagonal blocks and applies `scale` to dq. (The
    diagonal blocks here too, one column per step over [BC, BK] tiles, measured 2.3-3.5x slower on an H100.)"""
    NKB: tl.constexpr = K // BK
    NB: tl.constexpr = C // BC
    p0, h = tl.program_id(0), tl.program_id(1)
    pid, i, kb = p0 // (NB * NKB), (p0 // NKB) % NB, p0 % NKB
    th, nv = _chunk_pos(CI, cu, pid, H, C)
    bk, bc = (th + h) * K, (th + h) * C
    Qb, Kb, Gb = Q + bk, Kt + bk, G + bk
    jb = tl.arange(0, BC)
    rb = i * BC + jb
    rc = tl.arange(0, C)
    d = kb * BK + tl.arange(0, BK)
    vb = rb < nv
    vc = rc < nv
    m = vb[:, None]
    off_b = rb[:, None] * (H * K) + d[None, :]
    k_b = tl.load(Kb + off_b, mask=m, other=0.0).to(tl.float32)
    g_b = tl.load(Gb + off_b, mask=m, other=0.0)
    off_c = rc[:, None] * (H * K) + d[None, :]
    # Row side, earlier blocks: dA[t, s] for s < i·BC against k_s e^{Γ_ref − Γ_s}.
    r_ref = tl.maximum(i * BC - 1, 0)
    g_ref = tl.load(Gb + r_ref * (H * K) + d, mask=d * 0 + r_ref < nv, other=0.0)
    before = vc & (rc < i * BC)
    k_c = tl.load(Kb + off_c, mask=before[:, None], other=0.0).to(tl.float32)
    g_c = tl.load(Gb + off_c, mask=before[:, None], other=0.0)
    kcol = k_c * tl.exp(tl.minimum(g_ref[None, :] - g_c, 0.0))
    off_row = rb[:, None] * (H * C) + rc[None, :]
    m_row = m & before[None, :]
    e_b = tl.exp(tl.minimum(g_b - g_ref[None, :], 0.0))
    dq_r = tl.dot(tl.load(DAQK + bc + off_row, mask=m_row, other=0.0), kcol) * e_b
    dk_r = tl.dot(tl.load(DAKK + bc + off_row, mask=m_row, other=0.0), kcol) * e_b
    # Column side, later blocks: dA[t, s] for t ≥ (i+1)·BC against q_t, k_t e^{Γ_t − Γ_ref2}.
    r_ref2 = (i + 1) * BC - 1
    g_ref2 = tl.load(Gb + r_ref2 * (H * K) + d, mask=d * 0 + r_ref2 < nv, other=0.0)
    after = vc & (rc > r_ref2)
    q_a = tl.load(Qb + off_c, mask=after[:, None], other=0.0).to(tl.float32) * scale
    k_a = tl.load(Kb + off_c, mask=after[:, None], other=0.0).to(tl.float32)
    e_a = tl.exp(tl.minimum(tl.load(Gb + off_c, mask=after[:, None], other=0.0) - g_ref2[None, :], 0.0))
    off_col = rc[:, None] * (H * C) + i * BC + jb[None, :]
    m_col = after[:, None] & vb[None, :]
    daq_col = tl.load(DAQK + bc + off_col, mask=m_col, other=0.0)
    dak_col = tl.load(DAKK + bc + off_col, mask=m_col, other=0.0)
    dk_c = tl.dot(tl.trans(daq_col), q_a * e_a) + tl.dot(tl.trans(dak_col), k_a * e_a)
    dk_c *= tl.exp(tl.minimum(g_ref2[None, :] - g_b, 0.0))
    q_b = tl.load(Qb + off_b, mask=m, other=0.0).to(tl.float32) * scale
    tl.store(DQ + bk + off_b, tl.load(DQ + bk + off_b, mask=m, other=0.0) + dq_r, mask=m)
    tl.store(DK + bk + off_b, tl.load(DK + bk + off_b, mask=m, other=0.0) + dk_r + dk_c, mask=m)
    tl.store(DG + bk + off_b, tl.load(DG + bk + off_b, mask=m, other=0.0) + q_b * dq_r + k_b * (dk_r - dk_c),
             mask=m)


@triton.jit
def _scores_diag_bwd_kernel(Q, Kt, G, DAQK, DAKK, DQ, DK, DG, cu, CI, scale,
                            H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BC: tl.constexpr, BH: tl.constexpr):
    """Backward of the diagonal sub-blocks' score entries for one token t and BH heads (grid: chunks × tokens, head
    blocks), launched after `_scores_off_bwd_kernel`: its row (s ≤ t in its sub-block: dq, dk) and its column
    (later tokens u ≥ t of its sub-block: dk), each a loop of ≤ BC [BH, K] products; adds dq, dk, dΓ and finally
    multiplies dq by `scale` (the partial dq was w.r.t. q·scale)."""
    th, nv, r, ts, hh, d = _token_pos(CI, cu, H, K, C, BC, BH)
    if r >= nv:
        return
    off_t, q_t, k_t, g_t = _token_rows(Q, Kt, G, th, r, hh, d, scale, H, K)
    row_a = (th + r * H + hh) * C  # row t of dAqk / dAkk, per head
    dq = tl.zeros([BH, K], dtype=tl.float32)
    dk = tl.zeros([BH, K], dtype=tl.float32)
    for s in range(ts, r + 1):
        off_s = (th + s * H + hh[:, None]) * K + d[None, :]
        ke = tl.load(Kt + off_s).to(tl.float32) * tl.exp(tl.minimum(g_t - tl.load(G + off_s), 0.0))
        dq += tl.load(DAQK + row_a + s)[:, None] * ke
        dk += tl.load(DAKK + row_a + s, mask=(hh * 0 + s) < r, other=0.0)[:, None] * ke
    dkc = tl.zeros([BH, K], dtype=tl.float32)
    for u in range(r, tl.minimum(ts + BC, nv)):
        off_u = (th + u * H + hh[:, None]) * K + d[None, :]
        e = tl.exp(tl.minimum(tl.load(G + off_u) - g_t, 0.0))
        col_a = (th + u * H + hh) * C + r  # column t of dAqk / dAkk in row u
        daq = tl.load(DAQK + col_a)[:, None] * scale * tl.load(Q + off_u).to(tl.float32)
        dak = tl.load(DAKK + col_a, mask=(hh * 0 + u) > r, other=0.0)[:, None] * tl.load(Kt + off_u).to(tl.float32)
        dkc += (daq + dak) * e
    tl.store(DQ + off_t, (tl.load(DQ + off_t) + dq) * scale)
    tl.store(DK + off_t, tl.load(DK + off_t) + dk + dkc)
    tl.store(DG + off_t, tl.load(DG + off_t) + q_t * dq + k_t * dk - k_t * dkc)


@triton.jit
def _l2norm_fwd_kernel(X, Y, R, n_rows, eps, D: tl.constexpr, BR: tl.constexpr):
    """y = x (Σx² + eps)^-½ over rows of D (in the dtype of Y), r = (Σx² + eps)^-½ kept for the backward."""
    rows = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    m = (rows < n_rows)[:, None]
    d = tl.arange(0, D)
    x = tl.load(X + rows[:, None] * D + d[None, :], mask=m, other=0.0).to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(x * x, 1) + eps)
    tl.store(Y + rows[:, None] * D + d[None, :], (x * r[:, None]).to(Y.dtype.element_ty), mask=m)
    tl.store(R + rows, r, mask=rows < n_rows)


@triton.jit
def _l2norm_bwd_kernel(Y, R, DY, DX, n_rows, D: tl.constexpr, BR: tl.constexpr):
    """dx = r (dy − y Σ(dy·y)), in the dtype of DX."""
    rows = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    m = (rows < n_rows)[:, None]
    d = tl.arange(0, D)
    off = rows[:, None] * D + d[None, :]
    y = tl.load(Y + off, mask=m, other=0.0).to(tl.float32)
    dy = tl.load(DY + off, mask=m, other=0.0).to(tl.float32)
    r = tl.load(R + rows, mask=rows < n_rows, other=0.0)
    dx = (dy - y * tl.sum(dy * y, 1)[:, None]) * r[:, None]
    tl.store(DX + off, dx.to(DX.dtype.element_ty), mask=m)
