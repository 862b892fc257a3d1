"""Capture a whole training step (forward + backward, optionally the optimizer) as one CUDA graph and replay it.

The fast path has static shapes and no host syncs inside the step (device-side MoE group offsets and expert-load
counts), so a fixed-shape step can be captured: replays cost one launch instead of thousands, which takes the
`1b-a150m` step from launch-bound (GPU busy 64 % at 8k tokens) to 99 % busy (BENCHMARKS.md). Capture fails loudly
(a CUDA error) if anything in the step syncs with the host.

Contract, as for any CUDA graph: the step reads its inputs from the same tensors every time (copy new batches into
them), gradients live in the graph's memory (do not set them to None between replays), and the shapes never change.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mixlab.errors import MixlabError


class CapturedStep:
    """`CapturedStep(step_fn)`: step_fn() runs forward + backward on fixed input tensors and returns the loss.

    `zero_grad` (e.g. `model.zero_grad`) is called with set_to_none=True before the warm-up steps and the capture,
    so the backward inside the graph allocates the gradients, and each replay overwrites them.
    """

    def __init__(self, step_fn: Callable[[], torch.Tensor], zero_grad: Callable[..., None], warmup: int = 2):
        if not torch.cuda.is_available():
            raise MixlabError("CapturedStep needs a CUDA device")
        self._fn = step_fn
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream: autotuning, compilation, allocator state
            for _ in range(warmup):
                zero_grad(set_to_none=True)
                step_fn()
        torch.cuda.current_stream().wait_stream(side)
        zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = step_fn().detach()

    def __call__(self) -> torch.Tensor:
        """Replay the step; returns the (static) loss tensor, valid until the next replay."""
        self.graph.replay()
        return self.loss
