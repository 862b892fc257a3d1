"""One registered spec per training method: what a recipe stage's `trainer:` name means (as torchtitan registers
its train specs, and as TRL pairs one Config with one Trainer per method).

A `TrainerSpec` holds everything that differs between methods:
- `config_class`: TRL's config dataclass; a stage's `args` are checked against its fields;
- `dataset_kind` and `columns`: the kind of built mixture it trains on and the columns the trainer gets
  (`optional_columns` are kept when present, e.g. GRPO forwards `source_id` to the reward functions);
- `defaults`: config values mixlab picks unless a stage's `args` set them; `required`: values a stage may not change
  (correctness with the hybrid model); `stage_args`: config values that come from stage fields (packing, ...);
- `packing` / `rewards`: whether the stage fields `packing` and `rewards` apply;
- `build`: the trainer, from a `BuildContext`.
Adding a method is one `register_trainer(TrainerSpec(...))` call (KTO below is the example).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping

import trl  # a lazy module: the trainer classes load on first attribute access

from mixlab.errors import MixlabError
from mixlab.recipes.grpo_engine import engine_grpo_trainer
from mixlab.recipes.rewards import make_reward_funcs
from mixlab.yamlio import did_you_mean

if TYPE_CHECKING:  # schema.py imports this module to validate `trainer:`; Stage is only an annotation here
    from mixlab.recipes.schema import Stage


@dataclass
class BuildContext:
    """What every method's `build` gets: the model (fp32 master weights), its tokenizer, the TRL config built from
    the spec and the stage, the stage's dataset and the callbacks that log to DuckDB."""

    model: Any
    tokenizer: Any
    args: Any
    dataset: Any
    callbacks: list[Any]
    stage: "Stage"

    def common(self) -> dict[str, Any]:
        return dict(model=self.model, args=self.args, train_dataset=self.dataset, processing_class=self.tokenizer,
                    callbacks=self.callbacks)


@dataclass(frozen=True)
class TrainerSpec:
    name: str
    config_class: Callable[[], type]  # a thunk: touching trl.XConfig imports the trainer stack
    build: Callable[[BuildContext], Any]
    dataset_kind: str  # sft | preference | rl (the mixture kinds)
    columns: tuple[str, ...]
    optional_columns: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    required: Mapping[str, Any] = field(default_factory=dict)
    stage_args: Callable[["Stage"], dict[str, Any]] = lambda stage: {}
    packing: bool = False
    rewards: bool = False
    description: str = ""


TRAINERS: dict[str, TrainerSpec] = {}


def register_trainer(spec: TrainerSpec) -> TrainerSpec:
    if spec.name in TRAINERS:
        raise ValueError(f"trainer {spec.name!r} is already registered")
    TRAINERS[spec.name] = spec
    return spec


def get_trainer(name: str) -> TrainerSpec:
    spec = TRAINERS.get(name)
    if spec is None:
        raise MixlabError(f"unknown trainer {name!r}{did_you_mean(name, TRAINERS)}; trainers: {sorted(TRAINERS)}")
    return spec


def frozen_copy(model: Any) -> Any:
    """A reference model: the start weights, frozen. TRL would otherwise rebuild it from `config.architectures`
    through the transformers namespace, which has its own, different KimiLinear class."""
    ref = copy.deepcopy(model)
    ref.eval()
    ref.requires_grad_(False)
    return ref


# -- the methods ------------------------------------------------------------------------------------------------


def _build_sft(ctx: BuildContext) -> Any:
    # Imported here, not at the top: it imports torch, and recipe validation imports this module without it.
    from mixlab.recipes.graph_step import with_graph_step

    # On a GPU, fixed-shape dense micro-batches replay one CUDA graph (graph_step.py); everything else is TRL's step.
    return with_graph_step(trl.SFTTrainer)(**ctx.common())


def _build_dpo(ctx: BuildContext) -> Any:
    return trl.DPOTrainer(ref_model=frozen_copy(ctx.model), **ctx.common())


def _build_kto(ctx: BuildContext) -> Any:
    # KTOTrainer unpairs prompt/chosen/rejected rows itself (chosen -> desirable, rejected -> undesirable).
    return trl.KTOTrainer(ref_model=frozen_copy(ctx.model), **ctx.common())


def _build_grpo(ctx: BuildContext) -> Any:
    ctx.tokenizer.padding_side = "left"  # GRPO generates from left-padded prompts
    start = frozen_copy(ctx.model) if ctx.args.beta != 0.0 else None
    # Rollouts through mixlab's generation engine for Kimi Linear policies (TRL's own path otherwise).
    trainer = engine_grpo_trainer()(reward_funcs=make_reward_funcs(ctx.stage.rewards), **ctx.common())
    if start is not None and getattr(trainer, "ref_model", None) is not None:
        # TRL loaded its reference through the transformers namespace (see frozen_copy): use the start weights.
        trainer.ref_model = trainer.accelerator.prepare_model(start, evaluation_mode=True)
    return trainer


def _preference_packing(stage: "Stage") -> dict[str, Any]:
    return {"padding_free": True} if stage.packing else {}


register_trainer(TrainerSpec(
    name="sft",
    description="supervised fine-tuning on chat `messages` (assistant-only loss from the template's markers)",
    config_class=lambda: trl.SFTConfig,
    build=_build_sft,
    dataset_kind="sft",
    columns=("messages",),
    # bfd packing keeps per-sample position_ids, which the hybrid's KDA/conv layers use to reset state.
    defaults=MappingProxyType({"packing_strategy": "bfd"}),
    # TRL's chunked default loss patches forward and bypasses the model's own loss and MoE aux terms.
    required=MappingProxyType({"loss_type": "nll"}),
    stage_args=lambda stage: {"packing": stage.packing, "assistant_only_loss": stage.assistant_only_loss},
    packing=True,
))

register_trainer(TrainerSpec(
    name="dpo",
    description="direct preference optimisation on prompt/chosen/rejected pairs",
    config_class=lambda: trl.DPOConfig,
    build=_build_dpo,
    dataset_kind="preference",
    columns=("prompt", "chosen", "rejected"),
    stage_args=_preference_packing,
    packing=True,
))

register_trainer(TrainerSpec(
    name="grpo",
    description="group relative policy optimisation with mixlab's verifiers as rewards",
    config_class=lambda: trl.GRPOConfig,
    build=_build_grpo,
    dataset_kind="rl",
    columns=("prompt", "verifier", "ground_truth"),
    optional_columns=("source_id", "row_id"),  # forwarded to the reward functions
    # vLLM cannot serve the hybrid model without a native implementation; GRPO generates with the model's cache.
    required=MappingProxyType({"use_vllm": False}),
    rewards=True,
))

register_trainer(TrainerSpec(
    name="kto",
    description="Kahneman-Tversky optimisation; paired preference mixtures are unpaired by TRL",
    config_class=lambda: trl.KTOConfig,
    build=_build_kto,
    dataset_kind="preference",
    columns=("prompt", "chosen", "rejected"),
))
