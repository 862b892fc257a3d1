"""Training helpers for `transformers.Trainer` / TRL trainers."""

from __future__ import annotations

from transformers import TrainerCallback


class RouterBiasCallback(TrainerCallback):
    """Applies the aux-loss-free router-bias update after every optimizer step (`on_step_end` runs after
    `optimizer.step()`), at `config.router_bias_update_rate` unless `rate` is given. A no-op at rate 0."""

    def __init__(self, rate: float | None = None) -> None:
        self.rate = rate
        self.last_imbalance: dict[int, float] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        target = model
        while target is not None and not hasattr(target, "update_router_bias") and hasattr(target, "module"):
            target = target.module  # DDP / accelerate wrappers
        if target is not None and hasattr(target, "update_router_bias"):
            self.last_imbalance = target.update_router_bias(self.rate)
        return control
