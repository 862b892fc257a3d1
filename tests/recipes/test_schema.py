"""Recipe validation: every bad input is one MixlabError naming file, line and field (no training, no model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixlab.errors import MixlabError
from mixlab.recipes.schema import load_recipe, recipe_from_text

GOOD = """\
name: ok
model: {preset: tiny}
stages:
  - name: sft
    trainer: sft
    mixture: demo-math-heavy
    args: {learning_rate: 2e-3, max_steps: 5}
  - name: grpo
    trainer: grpo
    mixture: demo-rl
    args: {num_generations: 2}
"""


def _err(tmp_path: Path, text: str) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(MixlabError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    assert str(path) in message
    return message


def test_good_recipe_parses_with_2e3_as_float(tmp_path):
    recipe = recipe_from_text(GOOD)
    assert recipe.stages[0].args["learning_rate"] == pytest.approx(2e-3)
    assert recipe.stages[1].init == "previous"
    assert recipe.model.preset == "tiny"


def test_unknown_top_level_key_suggests_closest(tmp_path):
    message = _err(tmp_path, GOOD.replace("model:", "modle:"))
    assert ":2:" in message and "modle" in message and "did you mean 'model'" in message


def test_unknown_trl_arg_names_line_field_and_closest(tmp_path):
    message = _err(tmp_path, GOOD.replace("learning_rate", "learnig_rate"))
    assert ":7:" in message
    assert "stages[0].args.learnig_rate" in message
    assert "SFTConfig" in message and "did you mean 'learning_rate'" in message


def test_grpo_args_are_checked_against_grpoconfig(tmp_path):
    message = _err(tmp_path, GOOD.replace("num_generations", "num_generation"))
    assert "GRPOConfig" in message and "did you mean 'num_generations'" in message and ":11:" in message


def test_wrong_type_for_trl_field(tmp_path):
    message = _err(tmp_path, GOOD.replace("max_steps: 5", "max_steps: five"))
    assert "stages[0].args.max_steps" in message and "integer" in message


def test_reserved_arg_points_to_recipe_field(tmp_path):
    message = _err(tmp_path, GOOD.replace("max_steps: 5", "output_dir: /tmp/x"))
    assert "output_dir" in message and "runs/checkpoints" in message


def test_sft_loss_type_must_be_nll(tmp_path):
    message = _err(tmp_path, GOOD.replace("max_steps: 5", "loss_type: chunked_nll"))
    assert "loss_type" in message and "'nll'" in message


def test_stage_init_must_name_an_earlier_stage(tmp_path):
    text = GOOD + "    init: sfft\n"
    message = _err(tmp_path, text)
    assert "stages[1].init" in message and "did you mean 'sft'" in message and ":12:" in message


def test_model_needs_exactly_one_source(tmp_path):
    message = _err(tmp_path, GOOD.replace("{preset: tiny}", "{preset: tiny, path: /x}"))
    assert "exactly one of preset, path, hub, run" in message


def test_unknown_trainer_and_missing_mixture(tmp_path):
    assert "trainer" in _err(tmp_path, GOOD.replace("trainer: sft", "trainer: ppo"))
    message = _err(tmp_path, GOOD.replace("    mixture: demo-math-heavy\n", ""))
    assert "stages[0].mixture" in message and "missing" in message


def test_malformed_yaml_names_line(tmp_path):
    message = _err(tmp_path, "name: x\nstages: [\n")
    assert "malformed YAML" in message


def test_every_registry_recipe_validates():
    registry = Path(__file__).resolve().parents[2] / "recipes" / "registry"
    files = sorted(registry.glob("*.yaml"))
    assert files, "the registry ships example recipes"
    for path in files:
        load_recipe(path)
