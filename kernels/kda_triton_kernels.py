"""Triton kernels of mixlab's chunked KDA (forward and backward); the autograd wrapper is `kda_triton.py`.

Layout: every token tensor is [total tokens, H, D] (contiguous [B, T, H, D] viewed flat); a program finds its
sequence through `cu` (cu_seqlens, [N+1]) and its chunk through `CI` (chunk index pairs (sequence, chunk in
sequence), [NT, 2]), so varlen and fixed-length batches take the same code. Chunks are C = 64 tokens, split into
sub-blocks of BC = 16 for the score matrices. Notation as in kda_chunk_fn.py: Γ = chunk-local cumsum of g, q is
pre-scaled, Aqk[t,s] = Σ_d q_t k_s e^{Γ_t − Γ_s} (s ≤ t), Akk the same with k_t (s < t), Tm = (I + diag(β)Akk)⁻¹,
u = Tm (β v), w = Tm (β k e^Γ), kd = k e^{Γ_last − Γ}, per chunk: v_new = u − w S, o = (q e^Γ) S + Aqk v_new,
S ← e^{Γ_last} ⊙ S + kdᵀ v_new.

Numerics: every exponent is clamped with min(·, 0). For g ≤ 0 (a decay, as KDA's gate always gives) the clamp
changes nothing on the entries that are used: score entries are split so each factor is e^{≤0} (pairwise inside a
16-token sub-block, through the sub-block boundary between sub-blocks), and the clamp keeps masked and padded
entries finite (no inf·0 = NaN). Tiles are fp32; loads upcast.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _chunk_pos(CI, cu, pid):
    """(sequence, first token of the sequence, its length, first token of the chunk relative to the sequence)."""
    n = tl.load(CI + 2 * pid).to(tl.int64)
    ic = tl.load(CI + 2 * pid + 1).to(tl.int64)
    bos = tl.load(cu + n).to(tl.int64)
    eos = tl.load(cu + n + 1).to(tl.int64)
    return n, bos, eos - bos, ic


@triton.jit
def _cumsum_kernel(X, Y, cu, CI, H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, REVERSE: tl.constexpr):
    """Chunk-local (reverse) cumulative sum along tokens of a [tokens, H, K] fp32 tensor."""
    pid, h = tl.program_id(0), tl.program_id(1)
    n, bos, Tn, ic = _chunk_pos(CI, cu, pid)
    r = tl.arange(0, C)
    d = tl.arange(0, K)
    valid = ic * C + r < Tn
    off = ((bos + ic * C + r)[:, None] * H + h) * K + d[None, :]
    x = tl.load(X + off, mask=valid[:, None], other=0.0).to(tl.float32)
    y = tl.cumsum(x, 0)
    if REVERSE:
        y = tl.sum(x, 0)[None, :] - y + x
    tl.store(Y + off, y, mask=valid[:, None])


@triton.jit
def _scores_fwd_kernel(Q, Kt, G, AQK, AKK, cu, CI, scale,
                       H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BC: tl.constexpr):
    """Rows [i·BC, (i+1)·BC) of Aqk and Akk of one chunk (grid: chunks, sub-blocks, heads)."""
    pid, i, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n, bos, Tn, ic = _chunk_pos(CI, cu, pid)
    t0 = bos + ic * C
    rc = tl.arange(0, C)
    rb = i * BC + tl.arange(0, BC)
    d = tl.arange(0, K)
    vc = ic * C + rc < Tn
    vb = ic * C + rb < Tn
    off_c = ((t0 + rc)[:, None] * H + h) * K + d[None, :]
    off_b = ((t0 + rb)[:, None] * H + h) * K + d[None, :]
    k_all = tl.load(Kt + off_c, mask=vc[:, None], other=0.0).to(tl.float32)
    g_all = tl.load(G + off_c, mask=vc[:, None], other=0.0)
    q_b = tl.load(Q + off_b, mask=vb[:, None], other=0.0).to(tl.float32) * scale
    k_b = tl.load(Kt + off_b, mask=vb[:, None], other=0.0).to(tl.float32)
    g_b = tl.load(G + off_b, mask=vb[:, None], other=0.0)
    # Earlier sub-blocks: both factors relative to Γ at the row before this sub-block (each e^{≤0}).
    r_ref = tl.maximum(i * BC - 1, 0)
    g_ref = tl.load(G + ((t0 + r_ref) * H + h) * K + d, mask=d * 0 + ic * C + r_ref < Tn, other=0.0)
    earlier = rc < i * BC
    kcol = tl.where(earlier[:, None], k_all * tl.exp(tl.minimum(g_ref[None, :] - g_all, 0.0)), 0.0)
    e_b = tl.exp(tl.minimum(g_b - g_ref[None, :], 0.0))
    aq = tl.dot(q_b * e_b, tl.trans(kcol))
    ak = tl.dot(k_b * e_b, tl.trans(kcol))
    # The diagonal sub-block: pairwise decays, one column at a time.
    for j in range(BC):
        s = i * BC + j
        k_s = tl.load(Kt + ((t0 + s) * H + h) * K + d, mask=d * 0 + ic * C + s < Tn, other=0.0).to(tl.float32)
        g_s = tl.load(G + ((t0 + s) * H + h) * K + d, mask=d * 0 + ic * C + s < Tn, other=0.0)
        e = tl.exp(tl.minimum(g_b - g_s[None, :], 0.0)) * k_s[None, :]
        col = (rc == s)[None, :]
        aq = tl.where(col & (rb >= s)[:, None], tl.sum(q_b * e, 1)[:, None], aq)
        ak = tl.where(col & (rb > s)[:, None], tl.sum(k_b * e, 1)[:, None], ak)
    off_a = ((t0 + rb)[:, None] * H + h) * C + rc[None, :]
    tl.store(AQK + off_a, aq, mask=vb[:, None])
    tl.store(AKK + off_a, ak, mask=vb[:, None])


@triton.jit
def _solve_fwd_kernel(Kt, V, G, BETA, AKK, TM, W, U, cu, CI,
                      H: tl.constexpr, K: tl.constexpr, DV: tl.constexpr, C: tl.constexpr):
    """Tm = (I + diag(β) Akk)⁻¹ by forward substitution, then w = Tm (β k e^Γ) and u = Tm (β v)."""
    pid, h = tl.program_id(0), tl.program_id(1)
    n, bos, Tn, ic = _chunk_pos(CI, cu, pid)
    t0 = bos + ic * C
    rc = tl.arange(0, C)
    vc = ic * C + rc < Tn
    beta = tl.load(BETA + (t0 + rc) * H + h, mask=vc, other=0.0).to(tl.float32)
    tm = tl.where(rc[:, None] == rc[None, :], 1.0, 0.0)
    for t in range(1, C):
        lrow = tl.load(AKK + ((t0 + t) * H + h) * C + rc, mask=(rc < t) & (rc * 0 + ic * C + t < Tn), other=0.0)
        b_t = tl.load(BETA + (t0 + t) * H + h, mask=ic * C + t < Tn, other=0.0).to(tl.float32)
        acc = tl.sum((lrow * b_t)[:, None] * tm, 0)  # Σ_{s<t} L[t,s] Tm[s,:] (rows s ≥ t of tm are e_s, L[t,s]=0)
        tm = tl.where((rc == t)[:, None], tl.where(rc == t, 1.0, 0.0)[None, :] - acc[None, :], tm)
    d = tl.arange(0, K)
    off_k = ((t0 + rc)[:, None] * H + h) * K + d[None, :]
    k = tl.load(Kt + off_k, mask=vc[:, None], other=0.0).to(tl.float32)
    g = tl.load(G + off_k, mask=vc[:, None], other=0.0)
    w = tl.dot(tm, k * tl.exp(tl.minimum(g, 0.0)) * beta[:, None])
    dv = tl.arange(0, DV)
    off_v = ((t0 + rc)[:, None] * H + h) * DV + dv[None, :]
    v = tl.load(V + off_v, mask=vc[:, None], other=0.0).to(tl.float32)
    u = tl.dot(tm, v * beta[:, None])
    tl.store(TM + ((t0 + rc)[:, None] * H + h) * C + rc[None, :], tm, mask=vc[:, None])
    tl.store(W + off_k, w, mask=vc[:, None])
    tl.store(U + off_v, u, mask=vc[:, None])


@triton.jit
def _chunk_inputs(Q, Kt, G, t0, Tn, ic, h, scale, H: tl.constexpr, K: tl.constexpr, C: tl.constexpr):
    """q e^Γ (scaled), k e^{Γ_last − Γ}, e^{Γ_last} of one chunk."""
    rc = tl.arange(0, C)
    d = tl.arange(0, K)
    vc = ic * C + rc < Tn
    off = ((t0 + rc)[:, None] * H + h) * K + d[None, :]
    g = tl.load(G + off, mask=vc[:, None], other=0.0)
    last = tl.minimum(Tn - ic * C, C) - 1
    g_last = tl.load(G + ((t0 + last) * H + h) * K + d)
    q = tl.load(Q + off, mask=vc[:, None], other=0.0).to(tl.float32) * scale
    k = tl.load(Kt + off, mask=vc[:, None], other=0.0).to(tl.float32)
    qg = q * tl.exp(tl.minimum(g, 0.0))
    kd = k * tl.exp(tl.minimum(g_last[None, :] - g, 0.0))
    return qg, kd, tl.exp(tl.minimum(g_last, 0.0))


@triton.jit
def _state_fwd_kernel(Q, Kt, G, W, U, AQK, O, S0, STARTS, ST, cu, CO, scale,
                      H: tl.constexpr, K: tl.constexpr, DV: tl.constexpr, C: tl.constexpr, BV: tl.constexpr,
                      HAS_S0: tl.constexpr, STORE_ST: tl.constexpr):
    """The chunk-to-chunk recurrence and the outputs (grid: V blocks, sequences·heads)."""
    iv, nh = tl.program_id(0), tl.program_id(1)
    n, h = nh // H, nh % H
    bos = tl.load(cu + n).to(tl.int64)
    Tn = tl.load(cu + n + 1).to(tl.int64) - bos
    co = tl.load(CO + n).to(tl.int64)
    rc = tl.arange(0, C)
    d = tl.arange(0, K)
    cv = iv * BV + tl.arange(0, BV)
    off_s = d[:, None] * DV + cv[None, :]
    if HAS_S0:
        S = tl.load(S0 + nh * K * DV + off_s)
    else:
        S = tl.zeros([K, BV], dtype=tl.float32)
    for ic in range(tl.cdiv(Tn, C)):
        t0 = bos + ic * C
        vc = ic * C + rc < Tn
        tl.store(STARTS + ((co + ic) * H + h) * K * DV + off_s, S)
        qg, kd, el = _chunk_inputs(Q, Kt, G, t0, Tn, ic, h, scale, H, K, C)
        w = tl.load(W + ((t0 + rc)[:, None] * H + h) * K + d[None, :], mask=vc[:, None], other=0.0)
        off_v = ((t0 + rc)[:, None] * H + h) * DV + cv[None, :]
        u = tl.load(U + off_v, mask=vc[:, None], other=0.0)
        a = tl.load(AQK + ((t0 + rc)[:, None] * H + h) * C + rc[None, :], mask=vc[:, None], other=0.0)
        v_new = u - tl.dot(w, S)
        o = tl.dot(qg, S) + tl.dot(a, v_new)
        tl.store(O + off_v, o.to(O.dtype.element_ty), mask=vc[:, None])
        S = S * el[:, None] + tl.dot(tl.trans(kd), v_new)
    if STORE_ST:
        tl.store(ST + nh * K * DV + off_s, S)


@triton.jit
def _state_bwd_kernel(Q, Kt, G, W, AQK, DO, DST, DNEXT, DS0, cu, CO, scale,
                      H: tl.constexpr, K: tl.constexpr, DV: tl.constexpr, C: tl.constexpr, BV: tl.constexpr,
                      HAS_DST: tl.constexpr):
    """Backwards through the recurrence: dS_n = e^{Γ_last} ⊙ dS_{n+1} + qgᵀ dO − wᵀ (kd dS_{n+1} + Aqkᵀ dO)."""
    iv, nh = tl.program_id(0), tl.program_id(1)
    n, h = nh // H, nh % H
    bos = tl.load(cu + n).to(tl.int64)
    Tn = tl.load(cu + n + 1).to(tl.int64) - bos
    co = tl.load(CO + n).to(tl.int64)
    rc = tl.arange(0, C)
    d = tl.arange(0, K)
    cv = iv * BV + tl.arange(0, BV)
    off_s = d[:, None] * DV + cv[None, :]
    if HAS_DST:
        dS = tl.load(DST + nh * K * DV + off_s)
    else:
        dS = tl.zeros([K, BV], dtype=tl.float32)
    nt = tl.cdiv(Tn, C)
    for r in range(nt):
        ic = nt - 1 - r
        t0 = bos + ic * C
        vc = ic * C + rc < Tn
        tl.store(DNEXT + ((co + ic) * H + h) * K * DV + off_s, dS)
        qg, kd, el = _chunk_inputs(Q, Kt, G, t0, Tn, ic, h, scale, H, K, C)
        w = tl.load(W + ((t0 + rc)[:, None] * H + h) * K + d[None, :], mask=vc[:, None], other=0.0)
        do = tl.load(DO + ((t0 + rc)[:, None] * H + h) * DV + cv[None, :], mask=vc[:, None], other=0.0)
        do = do.to(tl.float32)
        a = tl.load(AQK + ((t0 + rc)[:, None] * H + h) * C + rc[None, :], mask=vc[:, None], other=0.0)
        x = tl.dot(kd, dS) + tl.dot(tl.trans(a), do)
        dS = dS * el[:, None] + tl.dot(tl.trans(qg), do) - tl.dot(tl.trans(w), x)
    tl.store(DS0 + nh * K * DV + off_s, dS)


@triton.jit
def _intra_bwd_kernel(Q, Kt, V, G, BETA, AQK, AKK, TM, W, U, STARTS, DNEXT, DO,
                      DQ, DK, DV_, DG, DBETA, DAQK, DAKK, cu, CI, scale,
                      H: tl.constexpr, K: tl.constexpr, DV: tl.constexpr, C: tl.constexpr, BV: tl.constexpr):
    """Per chunk, everything but the score matrices' own backward (see ChunkKDAFunction.backward, same names).

    Writes dv and dβ in full; dq (w.r.t. the scaled q), dk and dΓ partially (the score part is added by
    `_scores_bwd_kernel`), and dAqk, dAkk for it.
    """
    pid, h = tl.program_id(0), tl.program_id(1)
    n, bos, Tn, ic = _chunk_pos(CI, cu, pid)
    t0 = bos + ic * C
    rc = tl.arange(0, C)
    d = tl.arange(0, K)
    vc = ic * C + rc < Tn
    off_k = ((t0 + rc)[:, None] * H + h) * K + d[None, :]
    off_c = ((t0 + rc)[:, None] * H + h) * C + rc[None, :]
    qg, kd, el = _chunk_inputs(Q, Kt, G, t0, Tn, ic, h, scale, H, K, C)
    w = tl.load(W + off_k, mask=vc[:, None], other=0.0)
    a = tl.load(AQK + off_c, mask=vc[:, None], other=0.0)
    tm = tl.load(TM + off_c, mask=vc[:, None], other=0.0)
    beta = tl.load(BETA + (t0 + rc) * H + h, mask=vc, other=0.0).to(tl.float32)
    dqs = tl.zeros([C, K], dtype=tl.float32)
    kdm = tl.zeros([C, K], dtype=tl.float32)
    dkd = tl.zeros([C, K], dtype=tl.float32)
    daq = tl.zeros([C, C], dtype=tl.float32)
    dil = tl.zeros([C, C], dtype=tl.float32)
    dbeta = tl.zeros([C], dtype=tl.float32)
    diag_dm = tl.zeros([K], dtype=tl.float32)
    for iv in range(DV // BV):
        cv = iv * BV + tl.arange(0, BV)
        off_s = (pid.to(tl.int64) * H + h) * K * DV + d[:, None] * DV + cv[None, :]
        S = tl.load(STARTS + off_s)
        dSn = tl.load(DNEXT + off_s)
        off_v = ((t0 + rc)[:, None] * H + h) * DV + cv[None, :]
        do = tl.load(DO + off_v, mask=vc[:, None], other=0.0).to(tl.float32)
        u = tl.load(U + off_v, mask=vc[:, None], other=0.0)
        v = tl.load(V + off_v, mask=vc[:, None], other=0.0).to(tl.float32)
        dqs += tl.dot(do, tl.trans(S))
        a1 = tl.dot(kd, dSn)
        du = a1 + tl.dot(tl.trans(a), do)
        kdm += tl.dot(a1, tl.trans(S))
        dkd += tl.dot(u - tl.dot(w, S), tl.trans(dSn))
        daq += tl.dot(do, tl.trans(u))
        dvb = tl.dot(tl.trans(tm), du)
        tl.store(DV_ + off_v, (dvb * beta[:, None]).to(DV_.dtype.element_ty), mask=vc[:, None])
        dbeta += tl.sum(dvb * v, 1)
        dil += tl.dot(dvb, tl.trans(u))
        diag_dm += tl.sum(dSn * S, 1)
    dw = -(kdm + tl.dot(tl.trans(a), dqs))
    lower = rc[:, None] >= rc[None, :]
    daq = tl.where(lower, daq - tl.dot(dqs, tl.trans(w)), 0.0)
    dkb = tl.dot(tl.trans(tm), dw)
    dil = tl.where(rc[:, None] > rc[None, :], -(dil + tl.dot(dkb, tl.trans(w))), 0.0)
    akk = tl.load(AKK + off_c, mask=vc[:, None], other=0.0)
    g = tl.load(G + off_k, mask=vc[:, None], other=0.0)
    E = tl.exp(tl.minimum(g, 0.0))
    k = tl.load(Kt + off_k, mask=vc[:, None], other=0.0).to(tl.float32)
    kg = k * E
    dbeta += tl.sum(dkb * kg, 1) + tl.sum(dil * akk, 1)
    tl.store(DBETA + (t0 + rc) * H + h, dbeta, mask=vc)
    tl.store(DAQK + off_c, daq, mask=vc[:, None])
    tl.store(DAKK + off_c, dil * beta[:, None], mask=vc[:, None])
    dkg = dkb * beta[:, None]
    tl.store(DQ + off_k, dqs * E, mask=vc[:, None])
    last = tl.minimum(Tn - ic * C, C) - 1
    g_last = tl.load(G + ((t0 + last) * H + h) * K + d)
    ed = tl.exp(tl.minimum(g_last[None, :] - g, 0.0))
    tl.store(DK + off_k, dkg * E + dkd * ed, mask=vc[:, None])
    kd_dkd = kd * dkd
    dg = qg * dqs + kg * dkg - kd_dkd
    dg += tl.where((rc == last)[:, None], (tl.sum(kd_dkd, 0) + diag_dm * el)[None, :], 0.0)
    tl.store(DG + off_k, dg, mask=vc[:, None])


@triton.jit
def _scores_bwd_kernel(Q, Kt, G, DAQK, DAKK, DQ, DK, DG, cu, CI, scale,
                       H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BC: tl.constexpr):
    """Backward of the score matrices for the rows/columns of sub-block i; adds to the partial dq, dk, dΓ.

    Row side (t in block i): factors relative to Γ before the block; column side (s in block i): relative to Γ at
    the block's last row, so every factor is e^{≤0}. dq is finally multiplied by `scale` (it was w.r.t. q·scale).
    """
    pid, i, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n, bos, Tn, ic = _chunk_pos(CI, cu, pid)
    t0 = bos + ic * C
    rc = tl.arange(0, C)
    jb = tl.arange(0, BC)
    rb = i * BC + jb
    d = tl.arange(0, K)
    vc = ic * C + rc < Tn
    vb = ic * C + rb < Tn
    off_c = ((t0 + rc)[:, None] * H + h) * K + d[None, :]
    off_b = ((t0 + rb)[:, None] * H + h) * K + d[None, :]
    q_all = tl.load(Q + off_c, mask=vc[:, None], other=0.0).to(tl.float32) * scale
    k_all = tl.load(Kt + off_c, mask=vc[:, None], other=0.0).to(tl.float32)
    g_all = tl.load(G + off_c, mask=vc[:, None], other=0.0)
    q_b = tl.load(Q + off_b, mask=vb[:, None], other=0.0).to(tl.float32) * scale
    k_b = tl.load(Kt + off_b, mask=vb[:, None], other=0.0).to(tl.float32)
    g_b = tl.load(G + off_b, mask=vb[:, None], other=0.0)
    # Row side.
    r_ref = tl.maximum(i * BC - 1, 0)
    g_ref = tl.load(G + ((t0 + r_ref) * H + h) * K + d, mask=d * 0 + ic * C + r_ref < Tn, other=0.0)
    kcol = tl.where((rc < i * BC)[:, None], k_all * tl.exp(tl.minimum(g_ref[None, :] - g_all, 0.0)), 0.0)
    off_ab = ((t0 + rb)[:, None] * H + h) * C + rc[None, :]
    daq_b = tl.load(DAQK + off_ab, mask=vb[:, None], other=0.0)
    dak_b = tl.load(DAKK + off_ab, mask=vb[:, None], other=0.0)
    e_b = tl.exp(tl.minimum(g_b - g_ref[None, :], 0.0))
    dq_r = tl.dot(daq_b, kcol) * e_b
    dk_r = tl.dot(dak_b, kcol) * e_b
    for j in range(BC):
        s = i * BC + j
        k_s = tl.load(Kt + ((t0 + s) * H + h) * K + d, mask=d * 0 + ic * C + s < Tn, other=0.0).to(tl.float32)
        g_s = tl.load(G + ((t0 + s) * H + h) * K + d, mask=d * 0 + ic * C + s < Tn, other=0.0)
        e = tl.exp(tl.minimum(g_b - g_s[None, :], 0.0)) * k_s[None, :]
        col = (rc == s)[None, :]
        cq = tl.sum(tl.where(col & (rb >= s)[:, None], daq_b, 0.0), 1)
        ck = tl.sum(tl.where(col & (rb > s)[:, None], dak_b, 0.0), 1)
        dq_r += cq[:, None] * e
        dk_r += ck[:, None] * e
    dg_b = q_b * dq_r + k_b * dk_r
    # Column side.
    r_ref2 = (i + 1) * BC - 1
    g_ref2 = tl.load(G + ((t0 + r_ref2) * H + h) * K + d, mask=d * 0 + ic * C + r_ref2 < Tn, other=0.0)
    later = (rc >= (i + 1) * BC)[:, None]
    e_r = tl.exp(tl.minimum(g_all - g_ref2[None, :], 0.0))
    qhat = tl.where(later, q_all * e_r, 0.0)
    khat = tl.where(later, k_all * e_r, 0.0)
    off_cb = ((t0 + rc)[:, None] * H + h) * C + rb[None, :]
    daq_c = tl.load(DAQK + off_cb, mask=vc[:, None], other=0.0)
    dak_c = tl.load(DAKK + off_cb, mask=vc[:, None], other=0.0)
    dk_c = (tl.dot(tl.trans(daq_c), qhat) + tl.dot(tl.trans(dak_c), khat)) * tl.exp(
        tl.minimum(g_ref2[None, :] - g_b, 0.0))
    for j in range(BC):
        t = i * BC + j
        row_off = ((t0 + t) * H + h) * K + d
        q_t = tl.load(Q + row_off, mask=d * 0 + ic * C + t < Tn, other=0.0).to(tl.float32) * scale
        k_t = tl.load(Kt + row_off, mask=d * 0 + ic * C + t < Tn, other=0.0).to(tl.float32)
        g_t = tl.load(G + row_off, mask=d * 0 + ic * C + t < Tn, other=0.0)
        e = tl.exp(tl.minimum(g_t[None, :] - g_b, 0.0))
        rq = tl.load(DAQK + ((t0 + t) * H + h) * C + rb, mask=(rb <= t) & (rb * 0 + ic * C + t < Tn), other=0.0)
        rk = tl.load(DAKK + ((t0 + t) * H + h) * C + rb, mask=(rb < t) & (rb * 0 + ic * C + t < Tn), other=0.0)
        dk_c += (rq[:, None] * q_t[None, :] + rk[:, None] * k_t[None, :]) * e
    dg_b -= k_b * dk_c
    m = vb[:, None]
    dq = tl.load(DQ + off_b, mask=m, other=0.0) + dq_r
    tl.store(DQ + off_b, dq * scale, mask=m)
    tl.store(DK + off_b, tl.load(DK + off_b, mask=m, other=0.0) + dk_r + dk_c, mask=m)
    tl.store(DG + off_b, tl.load(DG + off_b, mask=m, other=0.0) + dg_b, mask=m)
