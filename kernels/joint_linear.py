"""Several bias-free projections of one input: `joint_linear(x, [w1, w2, ...]) == [x @ w1.T, x @ w2.T, ...]`.

Why: when one tensor feeds several Linears (KDA's q/k/v/f_a/b/g_a, a SwiGLU's gate/up), autograd sums their input
gradients with one add kernel per extra consumer, and the narrow ones (b: 8 outputs, f_a/g_a: 128) are GEMMs too
small to fill the GPU. On the fast path the weights are concatenated (a copy of the weights, small beside the
activations) and one GEMM runs forward, one for the input gradient and one for the weight gradient; the outputs are
column slices of one [.., Σ out] tensor (row-strided views). The references (CPU, backend "torch") keep separate
Linears, so CPU results do not change.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .dispatch import fast_path


def joint_linear(x: torch.Tensor, weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """[F.linear(x, w) for w in weights]; one GEMM over the concatenated weights on the fast path (same dtype and
    input width required; otherwise, and on CPU, separate GEMMs). Autocast applies as to F.linear."""
    if len(weights) < 2 or not fast_path(x, *weights) or len({(w.dtype, w.shape[1]) for w in weights}) != 1:
        return [F.linear(x, w) for w in weights]
    y = F.linear(x, torch.cat(list(weights), 0))
    return list(y.split([w.shape[0] for w in weights], -1))
