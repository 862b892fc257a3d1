"""TRL/transformers callbacks that write a run's live state to DuckDB while it trains.

- `DuckDBLogger`: every `on_log` row TRL produces (loss, learning rate, grad norm, GRPO rewards, ...) plus
  tokens per second, and the MoE state per layer: expert load fractions and the router correction bias, with
  the bias drift from the start of the run (L2 and max-abs) as train metrics.
(The aux-loss-free balancing update itself is `mixlab.model.training.RouterBiasCallback`.)
- `PeriodicEval`: the recipe's eval suite every N steps on a temporary official-format checkpoint.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import TrainerCallback

from mixlab.store import Store

_LAYER_RE = re.compile(r"layers\.(\d+)\.")


def unwrap(model: Any) -> Any:
    """The underlying KimiLinearForCausalLM (accelerate/DDP wrap it in `.module`)."""
    while hasattr(model, "module"):
        model = model.module
    return model


def router_biases(model: Any) -> dict[int, torch.Tensor]:
    """layer index -> router correction bias (`...layers.{i}...gate.e_score_correction_bias`)."""
    out: dict[int, torch.Tensor] = {}
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if name.endswith("e_score_correction_bias"):
            match = _LAYER_RE.search(name)
            if match:
                out[int(match.group(1))] = tensor.detach().float().cpu().clone()
    return out


def expert_load_table(model: Any) -> dict[int, list[float]]:
    """layer -> load fraction per expert since the previous call (`model.expert_load(reset=True)`)."""
    fn = getattr(model, "expert_load", None)
    if fn is None:
        return {}
    try:
        loads = fn(reset=True)
    except TypeError:
        loads = fn()
    out: dict[int, list[float]] = {}
    for layer, row in (loads or {}).items():
        values = row.detach().float().cpu().tolist() if isinstance(row, torch.Tensor) else list(row)
        out[int(layer)] = [float(v) for v in values]
    return out


class DuckDBLogger(TrainerCallback):
    def __init__(self, store: Store, run_id: str, *, log_moe: bool = True):
        self.store = store
        self.run_id = run_id
        self.log_moe = log_moe
        self._initial_bias: dict[int, torch.Tensor] | None = None
        self._last_time: float | None = None
        self._last_tokens: float | None = None
        self._last_step: int = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and self._initial_bias is None:
            self._initial_bias = router_biases(unwrap(model))
            reset = getattr(unwrap(model), "reset_expert_load", None)
            if reset is not None:  # loads from before training (e.g. a previous stage's eval) are not this run's
                reset()
        self._last_time = time.perf_counter()
        self._last_step = state.global_step

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not logs or not args.process_index == 0:
            return
        metrics: dict[str, float] = {}
        for key, value in logs.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                continue
            metrics[key] = float(value)
        now = time.perf_counter()
        tokens = logs.get("num_tokens", getattr(state, "num_input_tokens_seen", None) or None)
        if self._last_time is not None and now > self._last_time:
            dt = now - self._last_time
            steps = state.global_step - self._last_step
            if tokens is not None and self._last_tokens is not None and tokens > self._last_tokens:
                metrics["tokens_per_s"] = (tokens - self._last_tokens) / dt
            if steps > 0:
                metrics["steps_per_s"] = steps / dt
        if tokens is not None:
            self._last_tokens = float(tokens)
        self._last_time, self._last_step = now, state.global_step
        if model is not None and self.log_moe:
            metrics.update(self._log_moe(unwrap(model), state.global_step))
        if metrics:
            self.store.log_train_metrics(self.run_id, state.global_step, metrics)

    def _log_moe(self, model: Any, step: int) -> dict[str, float]:
        loads = expert_load_table(model)
        biases = router_biases(model)
        rows = []
        drift: dict[str, float] = {}
        for layer in sorted(set(loads) | set(biases)):
            bias = biases.get(layer)
            load = loads.get(layer) or []  # empty when nothing was routed since the last log (e.g. train end)
            for expert, fraction in enumerate(load):
                b = float(bias[expert]) if bias is not None and expert < len(bias) else None
                rows.append((layer, expert, fraction, b))
            if bias is not None and self._initial_bias and layer in self._initial_bias:
                delta = bias - self._initial_bias[layer]
                drift[f"router_bias_drift_l2/layer_{layer}"] = float(delta.norm())
                drift[f"router_bias_drift_maxabs/layer_{layer}"] = float(delta.abs().max())
            if load and all(math.isfinite(x) for x in load) and sum(load) > 0:
                # max/mean load: 1.0 is perfectly balanced.
                drift[f"expert_load_imbalance/layer_{layer}"] = max(load) / (sum(load) / len(load))
        if rows:
            self.store.log_expert_load(self.run_id, step, rows)
        return drift


class PeriodicEval(TrainerCallback):
    """Run `evaluate_fn(checkpoint_dir, step)` every `every_n_steps` steps on a throwaway official-format save."""

    def __init__(self, every_n_steps: int, evaluate_fn: Callable[[Path, int], None], tokenizer: Any = None):
        self.every = every_n_steps
        self.evaluate_fn = evaluate_fn
        self.tokenizer = tokenizer

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is None or state.global_step == 0 or state.global_step % self.every or args.process_index != 0:
            return
        if state.global_step >= state.max_steps:  # the final eval runs after training
            return
        model = unwrap(model)
        tmp = Path(tempfile.mkdtemp(prefix=f"mixlab-eval-{state.global_step}-"))
        was_training = model.training
        try:
            model.save_pretrained(tmp)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
            self.evaluate_fn(tmp, state.global_step)
        finally:
            model.train(was_training)
            shutil.rmtree(tmp, ignore_errors=True)
