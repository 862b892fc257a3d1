"""Several bias-free projections of one input: `joint_linear(x, [w1, w2, ...]) == [x @ w1.T, x @ w2.T, ...]`.

Why: when one tensor feeds several Linears (KDA's q/k/v/f_a/b/g_a, a SwiGLU's gate/up), autograd sums their input
gradients with one add kernel per extra consumer, and the narrow ones (b: 8 outputs, f_a/g_a: 128) are GEMMs too
small to fill the GPU. On the fast path the weights are concatenated (a copy of the weights, small beside the
activations) and one GEMM runs forward, one for the input gradient and one for the weight gradient; the outputs are
column slices of one [.., Σ out] tensor (row-strided views). Part of mixlab's fused fast path (`use_fused`: off with
`set_fused(False)`, the off-the-shelf composition); the references (CPU, backend "torch") keep separate Linears, so
CPU results do not change.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .dispatch import use_fused


ROW_ALIGN = 64  # elements: the joint output's row stride is padded to a multiple of this (see joint_linear)


def joint_linear(x: torch.Tensor, weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """[F.linear(x, w) for w in weights]; one GEMM over the concatenated weights where `use_fused` (same dtype and
    input width required; otherwise, and on CPU, separate GEMMs). Autocast applies as to F.linear.

    The joint output's width is padded with zero weight rows to a multiple of ROW_ALIGN, so every output row starts
    128-byte aligned: Triton vectorizes its loads of a row-strided input only when the stride is a multiple of 16
    (the fused short conv ran 1.6x slower at KDA's unpadded 3,336). The padding costs < 2 % of the GEMM."""
    if len(weights) < 2 or not use_fused(x, *weights) or len({(w.dtype, w.shape[1]) for w in weights}) != 1:
        return [F.linear(x, w) for w in weights]
    sizes = [w.shape[0] for w in weights]
    pad = -sum(sizes) % ROW_ALIGN
    parts = list(weights) + ([weights[0].new_zeros(pad, weights[0].shape[1])] if pad else [])
    y = F.linear(x, torch.cat(parts, 0))
    return list(y.split(sizes + ([pad] if pad else []), -1))[: len(weights)]
