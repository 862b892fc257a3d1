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


def batch_signature(batch: dict[str, torch.Tensor]) -> tuple:
    """What a captured step is specialised on: every input's name, shape, dtype and device."""
    return tuple(sorted((k, tuple(v.shape), v.dtype, str(v.device)) for k, v in batch.items()))


class StaticBatchStep:
    """A forward + backward over static input buffers, replayed as one CUDA graph (`capture=True`, CUDA only) or run
    eagerly on the same buffers (`capture=False`: the CPU twin the tests compare against plain eager training).

    `loss_fn(buffers)` runs forward + backward itself and returns the (detached) loss to report. Gradients live in one
    fixed tensor per parameter (`grads`), because a graph always writes to the memory it was captured with; every
    `param.grad` is that tensor again after each step. Two kinds of step:
    - assign: a trainer's `zero_grad(set_to_none=True)` left every `.grad` None (an optimizer step begins) and this
      step owns its `grads` (none were passed in). The backward runs with `.grad` None, so autograd hands each
      parameter its new gradient instead of adding it to zeros, and those tensors become `grads` (replaced in place
      in the list). Under fp32 master weights this saves a zero-fill and a read-add-write of every fp32 gradient per
      step: on an H100 the `1b-a150m` step at 8k tokens lost 343 fp32 add launches and 4.2 ms of GPU time, ran
      1.038x faster and peaked 3.5 GiB lower (BENCHMARKS.md, wave 12).
    - accumulate: otherwise (gradient accumulation, an eager micro-step in between, or `grads` shared with another
      step). If every `.grad` was None the fixed tensors are zeroed in one foreach launch first; autograd then adds
      into them. Both kinds give the same bits (0 + g = g in floating point).
    Each kind is captured on its first use (warm-up: `warmup` eager runs on a side stream for Triton compilation,
    autotuning and allocator state; then capture, then one replay), and a graph is captured again if the gradient
    tensors it was captured with were since replaced. `before_capture` / `after_capture` let the caller save and
    restore state the warm-up runs touch (e.g. expert-load counters). A batch whose signature differs from the
    captured one raises ValueError: the caller decides to run it eagerly.
    """

    def __init__(self, loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], params: list[torch.nn.Parameter],
                 *, capture: bool = True, warmup: int = 2, grads: list[torch.Tensor] | None = None,
                 pool: object | None = None,
                 before_capture: Callable[[], object] | None = None,
                 after_capture: Callable[[object], None] | None = None):
        self.loss_fn = loss_fn
        self.params = [p for p in params if p.requires_grad]
        self.capture = capture
        self.warmup = warmup
        self.before_capture, self.after_capture = before_capture, after_capture
        self.signature: tuple | None = None
        self.buffers: dict[str, torch.Tensor] = {}
        # Steps for several batch shapes share `grads` (micro-batches of different shapes accumulate into the same
        # tensors) and may share a graph memory `pool` (they never run concurrently).
        self.owns_grads = grads is None  # only then may an assign step replace the tensors in `grads`
        self.grads = grads if grads is not None else [torch.zeros_like(p) for p in self.params]
        if len(self.grads) != len(self.params):
            raise MixlabError(f"StaticBatchStep: {len(self.grads)} gradient tensors for {len(self.params)} parameters")
        self.pool = pool
        self._graphs: dict[str, torch.cuda.CUDAGraph] = {}  # "assign" / "accumulate" -> its captured graph
        self._captured_with: dict[str, list[int]] = {}  # graph kind -> data_ptr of each gradient tensor at capture
        self._unreached: list[int] = []  # parameters the assign step's backward gives no gradient
        # each graph's own loss output: it must stay alive, or a later capture in the same pool could reuse its memory
        self._graph_loss: dict[str, torch.Tensor] = {}
        self.loss: torch.Tensor | None = None
        self.replays = 0
        if capture and not torch.cuda.is_available():
            raise MixlabError("StaticBatchStep(capture=True) needs a CUDA device")

    def _sync_grads(self) -> None:
        """Make every `param.grad` the fixed tensor again. All None (a trainer's `zero_grad(set_to_none=True)` at the
        start of an optimizer step): zero them in one foreach launch. A tensor an eager step left: copy it in."""
        if all(p.grad is None for p in self.params):
            torch._foreach_zero_(self.grads)
            for p, g in zip(self.params, self.grads):
                p.grad = g
            return
        for p, g in zip(self.params, self.grads):
            if p.grad is g:
                continue
            if p.grad is None:
                g.zero_()
            else:
                g.copy_(p.grad)
            p.grad = g

    def accepts(self, batch: dict[str, torch.Tensor]) -> bool:
        return self.signature is None or batch_signature(batch) == self.signature

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        sig = batch_signature(batch)
        if self.signature is None:
            self.signature = sig
            self.buffers = {k: v.clone() for k, v in batch.items()}
        elif sig != self.signature:
            raise ValueError("batch signature differs from the captured one")
        else:
            for k, v in batch.items():
                self.buffers[k].copy_(v, non_blocking=True)
        if self.owns_grads and all(p.grad is None for p in self.params):
            return self._assign_step()
        self._sync_grads()
        if not self.capture:
            self.loss = self.loss_fn(self.buffers)
            return self.loss
        return self._replay("accumulate")

    @property
    def graph(self) -> torch.cuda.CUDAGraph | None:
        """The accumulate step's graph (None until one was captured)."""
        return self._graphs.get("accumulate")

    @property
    def assign_graph(self) -> torch.cuda.CUDAGraph | None:
        return self._graphs.get("assign")

    def _replay(self, kind: str) -> torch.Tensor:
        """Replay the `kind` graph, captured first (again, if the gradient tensors changed since) when needed."""
        if kind not in self._graphs or self._captured_with[kind] != self._grad_ptrs():
            self._graphs[kind] = self._capture(kind)
        self._graphs[kind].replay()
        self.replays += 1
        self.loss = self._graph_loss[kind]
        return self.loss

    def _assign_step(self) -> torch.Tensor:
        """The first micro-step of an optimizer step: every `.grad` is None, so the backward assigns the gradients;
        they become the fixed tensors (captured once: each replay writes the same memory)."""
        if not self.capture:
            self.loss = self.loss_fn(self.buffers)
            self._adopt_grads()
            return self.loss
        self._replay("assign")
        for p, g in zip(self.params, self.grads):
            p.grad = g
        if self._unreached:  # an eager micro-step may have written them since
            torch._foreach_zero_([self.grads[i] for i in self._unreached])
        return self.loss

    def _adopt_grads(self) -> None:
        """Make the gradients autograd just assigned the fixed tensors (in place: steps sharing `grads` see them);
        a parameter the backward did not reach keeps its tensor, zeroed, as the accumulate step would leave it."""
        self._unreached = [i for i, p in enumerate(self.params) if p.grad is None]
        for i, p in enumerate(self.params):
            if p.grad is None:
                p.grad = self.grads[i]
            else:
                self.grads[i] = p.grad
        if self._unreached:
            torch._foreach_zero_([self.grads[i] for i in self._unreached])

    def _grad_ptrs(self) -> list[int]:
        return [g.data_ptr() for g in self.grads]

    def _capture(self, kind: str) -> torch.cuda.CUDAGraph:
        """Warm up and capture the `kind` step ("assign" or "accumulate"); the gradients and the caller's state are
        as before afterwards (the warm-up runs add into the accumulate step's tensors too)."""
        assign = kind == "assign"
        saved_grads = [] if assign else [g.clone() for g in self.grads]
        state = self.before_capture() if self.before_capture is not None else None
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    if assign:
                        for p in self.params:
                            p.grad = None
                    self.loss_fn(self.buffers)
            torch.cuda.current_stream().wait_stream(side)
            if assign:
                for p in self.params:
                    p.grad = None
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self._graph_loss[kind] = self.loss_fn(self.buffers)
            if assign:  # the tensors autograd allocated inside the capture: every replay writes them
                self._adopt_grads()
        except BaseException:
            if assign:  # clean state for the caller's eager retry: an optimizer step that has not begun
                for p in self.params:
                    p.grad = None
            raise
        finally:
            if not assign:  # also when capture fails: the caller then runs this batch eagerly on clean state
                torch._foreach_copy_(self.grads, saved_grads)
                for p, g in zip(self.params, self.grads):
                    p.grad = g
            if self.after_capture is not None:
                self.after_capture(state)
        self._captured_with[kind] = self._grad_ptrs()
        return graph
