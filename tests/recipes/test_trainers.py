"""Training methods are registered specs: a new method is one `register_trainer` call (KTO is a real one; a
throwaway spec registered here runs a recipe without touching any other module)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import trl

from mixlab.errors import MixlabError
from mixlab.recipes.runner import RecipeRunner
from mixlab.recipes.schema import load_recipe
from mixlab.recipes.trainers import TRAINERS, BuildContext, TrainerSpec, get_trainer, register_trainer

from .helpers import SFT_ARGS, write_recipe


def _run(path: Path, store):
    recipe, text = load_recipe(path)
    return RecipeRunner(recipe, text, store=store, progress=False).run()


def test_every_method_names_its_config_data_and_build():
    assert {"sft", "dpo", "grpo", "kto"} <= set(TRAINERS)
    for name, spec in TRAINERS.items():
        assert spec.name == name and spec.dataset_kind in ("sft", "preference", "rl") and spec.columns
        fields = {f for f in spec.config_class().__dataclass_fields__}
        assert set(spec.defaults) <= fields and set(spec.required) <= fields, name
    assert get_trainer("sft").required["loss_type"] == "nll"
    assert get_trainer("grpo").required["use_vllm"] is False
    with pytest.raises(MixlabError, match="did you mean 'kto'"):
        get_trainer("ktoo")


def test_kto_stage_trains_on_a_preference_mixture(tmp_path, store):
    path = write_recipe(tmp_path, "kto", [
        {"name": "kto", "trainer": "kto", "mixture": "demo-pref",
         "args": {"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 96, "logging_steps": 1}}])
    [result] = _run(path, store)
    assert result.status == "completed" and result.trainer == "kto" and result.steps == 2
    run = store.get_run(result.run_id)
    assert run["trainer"] == "kto" and run["status"] == "completed" and Path(run["checkpoint_path"]).is_dir()
    names = {r["name"] for r in store.query("SELECT DISTINCT name FROM train_metrics WHERE run_id = ?",
                                            [result.run_id])}
    assert "loss" in names and any(n.startswith("rewards/") for n in names), names


def test_a_new_method_is_one_registered_entry(tmp_path, store):
    built: list[BuildContext] = []

    def build(ctx: BuildContext):
        built.append(ctx)
        return trl.SFTTrainer(**ctx.common())

    path = write_recipe(tmp_path, "plugin", [
        {"name": "s", "trainer": "sft-plugin", "mixture": "demo-math-heavy", "args": SFT_ARGS, "packing": True}])
    with pytest.raises(MixlabError, match="unknown trainer 'sft-plugin'"):
        load_recipe(path)
    register_trainer(TrainerSpec(
        name="sft-plugin", config_class=lambda: trl.SFTConfig, build=build, dataset_kind="sft",
        columns=("messages",), required={"loss_type": "nll"}, defaults={"max_length": 64},
        stage_args=lambda stage: {"packing": stage.packing}, packing=True,
    ))
    try:
        [result] = _run(path, store)
    finally:
        del TRAINERS["sft-plugin"]
    assert result.status == "completed" and result.steps == SFT_ARGS["max_steps"]
    [ctx] = built
    assert ctx.dataset.column_names == ["messages"]
    assert ctx.args.loss_type == "nll" and ctx.args.packing is True
    assert ctx.args.max_length == SFT_ARGS["max_length"]  # the stage's args beat the spec's defaults
    assert store.get_run(result.run_id)["trainer"] == "sft-plugin"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only errors")
def test_device_and_precision_are_resolved_in_preflight(tmp_path, store):
    stages = [{"name": "s", "trainer": "sft", "mixture": "demo-math-heavy", "args": SFT_ARGS}]
    for top, message in (({"precision": "bf16"}, "recipe bad: precision bf16 needs a GPU"),
                         ({"devices": 2}, "recipe bad: devices=2 but 0 CUDA device")):
        recipe, text = load_recipe(write_recipe(tmp_path, "bad", stages, **top))
        with pytest.raises(MixlabError, match=message):
            RecipeRunner(recipe, text, store=store, progress=False).preflight()
    assert store.query("SELECT count(*) AS n FROM runs")[0]["n"] == 0
    recipe, text = load_recipe(write_recipe(tmp_path, "ok", stages))
    runner = RecipeRunner(recipe, text, store=store, progress=False)
    runner.preflight()
    assert (runner.device, runner.precision) == ("cpu", "fp32")
