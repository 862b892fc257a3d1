"""The token-by-token KDA recurrence: the test oracle (fla `naive_recurrent_kda`, tech report Eq. 1).

Per head, with the state S [K, V] in fp32:
    S ← S ⊙ exp(g_t)[:, None]            # per-channel decay along K
    S ← S + β_t k_t (v_t − Sᵀ k_t)ᵀ       # delta rule
    o_t = Sᵀ (scale · q_t)                 # uses the UPDATED state
"""

from __future__ import annotations

import torch

from .kda_common import check_kda_args, fp32, l2norm


def _recurrence(q, k, v, g, beta, scale: float, state: torch.Tensor | None):
    """fp32 core on [B, T, H, *] tensors. Returns (o fp32 [B,T,H,V], final state [B,H,K,V])."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    q, k, v, g, beta = (fp32(t) for t in (q, k, v, g, beta))
    S = q.new_zeros(B, H, K, V) if state is None else state.to(q.dtype)
    outs = []
    for t in range(T):
        S = S * g[:, t].exp().unsqueeze(-1)
        k_t = k[:, t]
        pred = torch.einsum("bhk,bhkv->bhv", k_t, S)
        S = S + (beta[:, t, :, None, None] * k_t.unsqueeze(-1)) * (v[:, t] - pred).unsqueeze(-2)
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    o = torch.stack(outs, 1) if outs else v.new_zeros(B, 0, H, V, dtype=q.dtype)
    return o, S


def naive_recurrent_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q, k [B,T,H,K], v [B,T,H,V], g [B,T,H,K] (log decay), beta [B,T,H]; state [N,H,K,V] fp32.

    Returns (o in v.dtype [B,T,H,V], final state fp32 [N,H,K,V] or None). N = B, or the number of sequences in
    cu_seqlens (then B must be 1 and the state restarts from initial_state[n] (or zero) at each sequence start).
    """
    check_kda_args("naive_recurrent_kda", q, k, v, g, beta, initial_state, cu_seqlens)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    if cu_seqlens is None:
        o, S = _recurrence(q, k, v, g, beta, scale, initial_state)
        return o.to(v.dtype), (S if output_final_state else None)
    outs, states = [], []
    bounds = cu_seqlens.tolist()
    for n, (bos, eos) in enumerate(zip(bounds[:-1], bounds[1:])):
        s0 = None if initial_state is None else initial_state[n : n + 1]
        sl = slice(bos, eos)
        o, S = _recurrence(q[:, sl], k[:, sl], v[:, sl], g[:, sl], beta[:, sl], scale, s0)
        outs.append(o)
        states.append(S)
    return torch.cat(outs, 1).to(v.dtype), (torch.cat(states, 0) if output_final_state else None)
