"""The CUDA-graph training step inside TRL/transformers trainers: on a GPU, a stage's micro-batches of one fixed
shape run forward + backward as one captured CUDA graph (`mixlab.kernels.step_graph.StaticBatchStep`); the optimizer,
clipping, scheduler and logging stay the Trainer's own, eager, outside the graph.

The default on one GPU (MIXLAB_GRAPH_STEP=auto; "off" for TRL's eager step). Verified on CPU against TRL's own step
(tests/recipes/test_graph_step.py) and its capture on an H100 (tests/recipes/test_graph_step_gpu.py). 200 AdamW steps
of `1b-a150m` on an H100 stay within bf16 noise of the reference path: largest |Δloss| 0.42 (bf16 reference vs fp32
reference: 0.41), mean over the last 20 steps 0.018 (0.013) (BENCHMARKS.md, "Wave 7").

Why: the `1b-a150m` step is launch-bound when eager (GPU busy 64 % at 8k tokens); replaying one graph took it to 99 %
and 1.76x the off-the-shelf peer (BENCHMARKS.md, "Step").

When a micro-batch is graphed (checked per batch; anything else runs the trainer's eager `training_step`, and each
distinct reason is logged once):
- the model is mixlab's Kimi Linear on one CUDA device (no DDP/FSDP/DeepSpeed), precision bf16 or fp32 (fp16 needs a
  loss scaler), TRL's `loss_type="nll"`, no custom loss function or label smoothing (gradient checkpointing, TRL's
  SFT default, is captured too; if a capture fails, the trainer goes eager for the rest of the run and says why);
- the batch is dense: `input_ids` and `labels` [B, T], each row one sequence from position 0, padded (if at all) on
  the right only, which TRL's SFT collator does. Right padding stays in the dense [B, T] layout instead of the varlen
  one the model uses for padding masks: every layer is causal, so padding after a row's last real token never reaches
  a real one, its labels are -100, and `count_mask` keeps it out of the expert-load counts (loss, gradients and loads
  equal the varlen step's; the padding only costs compute). Packed batches (position-id resets), left or inner
  padding, and right padding with the sequence aux loss on (it counts tokens per row) take the varlen layout, whose
  boundaries are data-dependent and not capturable: they run eagerly;
- one graph per batch shape, up to MIXLAB_GRAPH_STEP_SHAPES (default 4) shapes sharing one memory pool; with the
  graph step on, the runner pads unpacked SFT batches on a GPU to a multiple of max_length / 4 (`bucket_multiple`),
  so they come in <= 4 shapes.
The step turns MIXLAB_MOE_AUTOCAST's cast on for its model, even where that variable is 0 (fp32 master weights under
autocast take the grouped MoE path; the per-expert reference would read group sizes on the host, which a capture
refuses).

What the graph computes is what the eager step computes: the model's own shifted cross-entropy (sum / TRL's
`num_items_in_batch` when given, else the mean), scaled for gradient accumulation exactly as `Trainer.training_step`
does, the MoE aux-loss gradient attached inside the blocks. TRL's per-batch entropy / token-accuracy metrics are not
computed on graphed steps (they need the logits on the host); `num_tokens` is still counted, and the metric
`graph_step` (fraction of graphed micro-steps) is logged beside the loss.

`MIXLAB_GRAPH_STEP`: "auto" (default: graphs on CUDA, TRL's eager step elsewhere), "off" (TRL's eager step
everywhere), "eager" (the same static-buffer step without capture, on any device: the CPU twin the tests compare
against the trainer's own step).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections import Counter
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from mixlab.errors import MixlabError
from mixlab.kernels.step_graph import StaticBatchStep, batch_signature

logger = logging.getLogger(__name__)

GRAPH_MODES = ("auto", "off", "eager")
_BATCH_KEYS = {"input_ids", "labels", "attention_mask", "position_ids"}
# what TRL's padding-free collator adds for flash-attention varlen kernels
_PACKED_KEYS = {"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx"}


def graph_mode() -> str:
    mode = os.environ.get("MIXLAB_GRAPH_STEP", "").strip().lower() or "auto"  # unset: graphs on CUDA only
    if mode in ("0", "false", "no"):
        mode = "off"
    if mode not in GRAPH_MODES:
        raise MixlabError(f"MIXLAB_GRAPH_STEP={mode!r}: choose one of {', '.join(GRAPH_MODES)}")
    return mode


def inspect_batch(inputs: dict[str, Any], *, allow_right_padding: bool = True) -> tuple[str | None, int]:
    """(why the batch cannot run on the dense static layout, or None; its number of real tokens). One host read.

    Dense means [B, T] rows that each hold one sequence from position 0: no packing, and padding (if any, and if
    allowed) only after a row's last real token, which no real token can see in a causal model."""
    if _PACKED_KEYS & set(inputs):
        return "packed batch (varlen layout)", 0
    extra = sorted(set(inputs) - _BATCH_KEYS)
    if extra:
        return f"unsupported batch keys {extra}", 0
    ids, labels = inputs.get("input_ids"), inputs.get("labels")
    if not isinstance(ids, torch.Tensor) or not isinstance(labels, torch.Tensor):
        return "batch needs input_ids and labels tensors", 0
    if ids.dim() != 2 or labels.shape != ids.shape:
        return f"input_ids {tuple(ids.shape)} / labels {tuple(labels.shape)} are not both [B, T]", 0
    mask, pos = inputs.get("attention_mask"), inputs.get("position_ids")
    ok = torch.ones((), dtype=torch.bool, device=ids.device)
    tokens = torch.full((), ids.numel(), device=ids.device)
    if mask is not None:
        if mask.shape != ids.shape:
            return f"attention_mask {tuple(mask.shape)} is not [B, T]", 0
        m = mask.bool()
        ok = ok & ((m[:, 1:] <= m[:, :-1]).all() if allow_right_padding else m.all())
        tokens = m.sum()
    if pos is not None:
        if pos.shape != ids.shape:
            return f"position_ids {tuple(pos.shape)} is not [B, T]", 0
        ok = ok & (pos == torch.arange(ids.shape[1], device=pos.device)).all()
    ok_host, tokens_host = torch.stack([ok.long(), tokens.long()]).tolist()
    if not ok_host:
        what = "left padding, padding inside a row" if allow_right_padding else "padding"
        return f"{what} or position resets (varlen layout)", 0
    return None, tokens_host


def graph_shapes() -> int:
    """How many batch shapes get a graph (MIXLAB_GRAPH_STEP_SHAPES, default 4); they share one memory pool."""
    raw = os.environ.get("MIXLAB_GRAPH_STEP_SHAPES", "4")
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if n < 1:
        raise MixlabError(f"MIXLAB_GRAPH_STEP_SHAPES={raw!r}: must be a whole number >= 1")
    return n


def bucket_multiple(max_length: int | None) -> int | None:
    """The `pad_to_multiple_of` that gives padded (unpacked) SFT batches at most `graph_shapes()` lengths up to
    max_length (rounded up to a multiple of 64), so every batch can replay a captured graph."""
    if not max_length:
        return None
    return max(64, -(-max_length // (graph_shapes() * 64)) * 64)


class GraphStepMixin:
    """Put before a transformers `Trainer` subclass: `class T(GraphStepMixin, trl.SFTTrainer)`."""

    _graph_disabled: str | None = None

    @property
    def graph_stats(self) -> dict[str, Any]:
        return self.__dict__.setdefault("_graph_stats", {"graph": 0, "eager": 0, "reasons": Counter()})

    @property
    def graph_steps(self) -> dict[tuple, StaticBatchStep]:
        """One captured step per batch signature."""
        return self.__dict__.setdefault("_graph_steps", {})

    # -- decisions --------------------------------------------------------------------------------------------

    def _static_reason(self, model) -> str | None:
        """Reasons that hold for the whole run (checked once)."""
        mode = graph_mode()
        if mode == "off":
            return "MIXLAB_GRAPH_STEP=off"
        core = self.accelerator.unwrap_model(model)
        if getattr(getattr(core, "config", None), "model_type", None) != "kimi_linear":
            return f"model {type(core).__name__} is not mixlab's Kimi Linear"
        device = next(core.parameters()).device
        if mode == "auto" and device.type != "cuda":
            return f"model on {device.type}, not CUDA"
        if self.accelerator.num_processes > 1 or self.args.n_gpu > 1:
            return "more than one process or GPU (DDP/FSDP/DeepSpeed)"
        if self.accelerator.mixed_precision == "fp16":
            return "fp16 (needs a loss scaler)"
        if self.compute_loss_func is not None or self.label_smoother is not None:
            return "custom loss function or label smoothing"
        if getattr(self.args, "loss_type", "nll") != "nll":
            return f"loss_type {self.args.loss_type!r} (the graph computes the nll loss)"
        if getattr(self, "aux_loss_enabled", False):
            return "TRL router aux loss (output_router_logits)"
        if getattr(self.args, "activation_offloading", False):
            return "activation offloading"
        return None

    # -- the step ---------------------------------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self._graph_disabled is None:
            self._graph_disabled = self._static_reason(model) or ""
            if self._graph_disabled:
                logger.info("graph step off: %s", self._graph_disabled)
        reason = self._graph_disabled or None
        if reason is None:
            inputs = self._prepare_inputs(inputs)
            core = self.accelerator.unwrap_model(model)
            # The sequence aux loss counts tokens per row: padding kept dense would count, so it goes varlen.
            dense_padding = not core.config.seq_aux_loss_coef > 0
            reason, tokens = inspect_batch(inputs, allow_right_padding=dense_padding)
        if reason is None:
            batch = self._static_batch(inputs, num_items_in_batch, dense_padding)
            step = self.graph_steps.get(batch_signature(batch))
            if step is None and len(self.graph_steps) >= graph_shapes():
                reason = (f"batch shape {tuple(inputs['input_ids'].shape)}: {graph_shapes()} other shapes are graphed "
                          "(MIXLAB_GRAPH_STEP_SHAPES)")
        if reason is not None:
            return self._eager(model, inputs, num_items_in_batch, reason)
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        if step is None:
            step = self.graph_steps[batch_signature(batch)] = self._make_step(model, batch)
        try:
            loss = step.step(batch)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # capture failed (a host sync, an op graphs cannot hold): eager from now on
            self._graph_disabled = f"capture failed: {type(exc).__name__}: {str(exc)[:300]}"
            logger.warning("graph step off: %s", self._graph_disabled)
            self.graph_steps.clear()
            return self._eager(model, inputs, num_items_in_batch, self._graph_disabled)
        self.graph_stats["graph"] += 1
        self._count_tokens(tokens)
        return loss.clone()  # the graph overwrites its output on the next replay

    def _eager(self, model, inputs, num_items_in_batch, reason: str):
        stats = self.graph_stats
        if not stats["reasons"][reason]:
            logger.warning("eager training step (%s)", reason)
        stats["reasons"][reason] += 1
        stats["eager"] += 1
        metrics = getattr(self, "_metrics", None)
        if metrics is not None and not self._graph_disabled:  # the metric exists only where graphs could run
            metrics["train"]["graph_step"].append(0.0)
        return super().training_step(model, inputs, num_items_in_batch)

    def _count_tokens(self, n: int) -> None:
        """What TRL's compute_loss records per step (its `num_tokens` feeds the tokens/s mixlab logs)."""
        metrics = getattr(self, "_metrics", None)
        if metrics is None:
            return
        if hasattr(self, "_total_train_tokens"):
            self._total_train_tokens += n
            metrics["train"]["num_tokens"] = [self._total_train_tokens]
        metrics["train"]["graph_step"].append(1.0)

    def _static_batch(self, inputs, num_items_in_batch, dense_padding: bool) -> dict[str, torch.Tensor]:
        """The graph's inputs: ids, labels, the tokens to count (where padding may stay dense; always given then, so
        padded and unpadded batches of one shape share a graph), the gradient-accumulation scale and TRL's token
        count, as tensors."""
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        batch = {"input_ids": ids, "labels": inputs["labels"]}
        if dense_padding:
            batch["count_mask"] = mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
        # As Trainer.training_step: a loss normalised by num_items_in_batch is already scaled for accumulation.
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        steps = 1 if scaled else self.current_gradient_accumulation_steps
        batch["scale"] = torch.full((), 1.0 / steps, dtype=torch.float32, device=ids.device)
        if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
            batch["num_items"] = torch.as_tensor(num_items_in_batch, device=ids.device).reshape(()).float()
        return batch

    def _make_step(self, model, batch) -> StaticBatchStep:
        core = self.accelerator.unwrap_model(model)
        first = next(iter(self.graph_steps.values()), None)
        capture = graph_mode() == "auto"
        if first is None and capture:
            self.__dict__["_graph_pool"] = torch.cuda.graph_pool_handle()
        return model_step(core, bf16=self.accelerator.mixed_precision == "bf16",
                          with_num_items="num_items" in batch, capture=capture,
                          grads=first.grads if first is not None else None,
                          pool=self.__dict__.get("_graph_pool"))


def model_step(core, *, bf16: bool, with_num_items: bool = False, capture: bool = True,
               grads: list[torch.Tensor] | None = None, pool: object | None = None) -> StaticBatchStep:
    """The static-buffer forward + backward of a Kimi Linear model (what the trainer hook replays; bench_step.py
    times it too). Batches: input_ids, labels, scale (0-d: the gradient-accumulation factor), optionally count_mask
    ([B, T] bool: right padding kept dense is not counted in the expert loads) and, with `with_num_items`, num_items
    (0-d: the loss is the token sum over it, as TRL's)."""
    # The class's forward, not the instance's: TRL's fused-LM-head wrapper and accelerate's autocast wrapper sit on
    # the instance. Autocast is applied here with its weight-cast cache off, as graph capture needs.
    forward = functools.partial(type(core).forward, core)
    device_type = next(core.parameters()).device.type
    coef = float(getattr(core.config, "seq_aux_loss_coef", 0.0) or 0.0)
    # fp32 master weights under autocast: the MoE must cast its experts to bf16 to take the grouped path (the
    # per-expert reference reads group sizes on the host, which a capture refuses). On by default; forced on here.
    for block in core.model.moe_blocks().values():
        block.autocast_experts = True

    def autocast():
        if bf16:
            return torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()

    inner = core.model

    @contextlib.contextmanager
    def checkpointing_without_rng():
        """Gradient checkpointing inside a graph: the model draws no random numbers (no dropout; routing is
        deterministic), so the recompute need not save and restore the RNG state, which a capture does not allow."""
        saved = inner.__dict__.get("_gradient_checkpointing_func")
        if inner.gradient_checkpointing:
            inner._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False,
                                                                   preserve_rng_state=False)
        try:
            yield
        finally:
            if inner.gradient_checkpointing:
                if saved is None:
                    inner.__dict__.pop("_gradient_checkpointing_func", None)
                else:
                    inner._gradient_checkpointing_func = saved

    def loss_fn(buf: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(), checkpointing_without_rng():
            out = forward(input_ids=buf["input_ids"], labels=buf["labels"], use_cache=False,
                          num_items_in_batch=buf["num_items"] if with_num_items else None,
                          count_mask=buf.get("count_mask"))
        loss = out.loss * buf["scale"]
        loss.backward()
        if out.aux_loss is not None and coef > 0:  # the model adds the aux value for reporting; TRL does not
            loss = loss - (coef * out.aux_loss.detach()) * buf["scale"]
        return loss.detach()

    # The expert-load counters (device tensors the forward adds into): the warm-up runs before capture must not
    # count, so they are saved before and put back after.
    names = [n for n in ("_load_buf", "_bias_buf") if hasattr(inner, n)]

    def save_counters():
        return {n: None if getattr(inner, n) is None else getattr(inner, n).clone() for n in names}

    def restore_counters(saved):
        for n, before in saved.items():
            buf = getattr(inner, n)
            if buf is not None and before is None:
                buf.zero_()
            elif buf is not None:
                buf.copy_(before)

    return StaticBatchStep(loss_fn, list(core.parameters()), capture=capture, grads=grads, pool=pool,
                           before_capture=save_counters, after_capture=restore_counters)


@functools.cache
def with_graph_step(trainer_cls: type) -> type:
    """`trainer_cls` with the graph step (one subclass per class, same name + 'Graph')."""
    return type(f"Graph{trainer_cls.__name__}", (GraphStepMixin, trainer_cls), {})
