"""KDA decode step: the recurrence over a few new tokens (usually one) from a cached fp32 state."""

from __future__ import annotations

import torch

from mixlab.errors import MixlabError

from .dispatch import use_triton
from .kda_common import check_kda_args, l2norm
from .kda_naive import _recurrence


def recurrent_kda_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor | None,
    scale: float | None = None,
    use_qk_l2norm: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, g [B,T,H,K], v [B,T,H,V], beta [B,T,H], state [B,H,K,V] fp32 (None = zeros).

    Returns (o [B,T,H,V] in v.dtype, new state fp32). The input state is not modified.
    """
    check_kda_args("recurrent_kda_step", q, k, v, g, beta, state, None)
    if state is not None and not state.is_floating_point():
        raise MixlabError(f"recurrent_kda_step: state must be floating point (fp32), got {state.dtype}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if use_triton(q, k, v, g, beta, state):
        from fla.ops.kda import fused_recurrent_kda

        o, S = fused_recurrent_kda(
            q, k, v, g.float(), beta, scale=scale, initial_state=None if state is None else state.float(),
            output_final_state=True, use_qk_l2norm_in_kernel=use_qk_l2norm,
        )
        return o.to(v.dtype), S.float()
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    o, S = _recurrence(q, k, v, g, beta, scale, state)
    return o.to(v.dtype), S
