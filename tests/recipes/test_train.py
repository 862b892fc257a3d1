"""Real tiny SFT, GRPO and DPO stages end to end into DuckDB, chained; preflight errors; packing boundaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mixlab.errors import MixlabError
from mixlab.recipes.runner import RecipeRunner
from mixlab.recipes.schema import load_recipe

from .helpers import EVAL, SFT_ARGS, mixlab, write_recipe


def _runner(path: Path, store) -> RecipeRunner:
    recipe, text = load_recipe(path)
    return RecipeRunner(recipe, text, store=store, progress=False)


def test_sft_grpo_dpo_chain_end_to_end(tmp_path, store):
    path = write_recipe(tmp_path, "chain", [
        {"name": "sft", "trainer": "sft", "mixture": "demo-balanced", "packing": True, "args": SFT_ARGS,
         "eval": {**EVAL, "every_n_steps": 2}},
        {"name": "grpo", "trainer": "grpo", "mixture": "demo-rl",
         "args": {"max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 2,
                  "max_completion_length": 8, "logging_steps": 1}},
        {"name": "dpo", "trainer": "dpo", "init": "sft", "mixture": "demo-pref",
         "args": {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 96, "logging_steps": 1}},
    ], router_bias_update_rate=0.01)
    from mixlab.kernels.dispatch import backend_scope, get_backend

    with backend_scope("auto"):  # what an in-process caller had chosen; the recipe on CPU runs under "torch"
        results = _runner(path, store).run()
        assert get_backend() == "auto"
    assert [r.trainer for r in results] == ["sft", "grpo", "dpo"]
    assert all(r.status == "completed" for r in results)

    runs = {r["stage"]: r for r in store.query("SELECT * FROM runs WHERE kind = 'train'")}
    assert set(runs) == {"sft", "grpo", "dpo"}
    sft, grpo, dpo = runs["sft"], runs["grpo"], runs["dpo"]
    for run in runs.values():
        assert run["status"] == "completed" and run["finished_at"] is not None
        assert run["git_sha"] and run["device"] and "trl" in json.loads(run["packages"])
        assert run["recipe_yaml"] == path.read_text() and run["seed"] == 0
        assert run["mixture_id"].startswith(run["mixture_name"])
    # Chaining: GRPO starts from the SFT checkpoint, DPO (init: sft) too; parents recorded.
    assert grpo["parent_run_id"] == sft["run_id"]
    assert json.loads(grpo["config"])["init"] == sft["checkpoint_path"]
    assert json.loads(dpo["config"])["init"] == sft["checkpoint_path"]

    # Train metrics while running: loss, lr, grad norm, tokens/s; GRPO rewards per verifier; DPO margins.
    names = {(r["run_id"], r["name"]) for r in store.query("SELECT DISTINCT run_id, name FROM train_metrics")}
    for metric in ("loss", "learning_rate", "grad_norm", "tokens_per_s"):
        assert (sft["run_id"], metric) in names, metric
    assert (grpo["run_id"], "rewards/math_verifier/mean") in names
    assert (dpo["run_id"], "rewards/margins") in names
    # MoE: expert load per layer and router-bias drift (the balancing update ran: rate 0.01).
    loads = store.query("SELECT layer, sum(load) AS total, count(*) AS n FROM expert_load WHERE run_id = ? "
                        "AND step = 1 GROUP BY layer ORDER BY layer", [sft["run_id"]])
    assert loads and all(abs(row["total"] - 1.0) < 1e-4 for row in loads)
    drift = store.query("SELECT max(value) AS v FROM train_metrics WHERE run_id = ? AND name LIKE "
                        "'router_bias_drift_l2/%'", [sft["run_id"]])
    assert drift[0]["v"] > 0

    # Eval after training (SFT stage has its own eval; later stages have none here except the explicit one).
    metrics = store.query("SELECT task, metric, n, mean, ci_low, ci_high FROM eval_metrics WHERE run_id = ? "
                          "AND metric = 'accuracy'", [sft["run_id"]])
    assert metrics and metrics[0]["n"] == 2 and metrics[0]["ci_low"] <= metrics[0]["mean"] <= metrics[0]["ci_high"]
    # ... and every N steps during training, as train metrics at that step.
    periodic = store.query("SELECT step FROM train_metrics WHERE run_id = ? AND name = 'eval/proc-math/accuracy'",
                           [sft["run_id"]])
    assert [r["step"] for r in periodic] == [2]

    # The final checkpoint is full official-format weights that reload bit-identically.
    from mixlab.model import load_model

    final = Path(dpo["checkpoint_path"])
    assert final.name == "final" and (final / "config.json").is_file() and list(final.glob("*.safetensors"))
    reloaded = load_model(str(final))
    from safetensors.torch import load_file

    saved = {}
    for shard in final.glob("*.safetensors"):
        saved.update(load_file(shard))
    assert "model.layers.1.block_sparse_moe.gate.e_score_correction_bias" in saved
    ids = torch.tensor([[1, 2, 3, 4]])
    again = load_model(str(final))
    assert torch.equal(reloaded(input_ids=ids).logits, again(input_ids=ids).logits)


def test_missing_mixture_fails_before_training(tmp_path, store):
    path = write_recipe(tmp_path, "bad-mix", [
        {"name": "sft", "trainer": "sft", "mixture": "demo-math-heavyy", "args": SFT_ARGS}])
    with pytest.raises(MixlabError) as info:
        _runner(path, store).run()
    assert "demo-math-heavyy" in str(info.value) and "demo-math-heavy" in str(info.value)
    assert store.query("SELECT count(*) AS n FROM runs")[0]["n"] == 0  # nothing started


def test_missing_checkpoint_fails_before_training_via_cli(tmp_path):
    path = write_recipe(tmp_path, "bad-ckpt", [
        {"name": "sft", "trainer": "sft", "mixture": "demo-math-heavy", "args": SFT_ARGS}])
    text = path.read_text().replace("preset: tiny", f"path: {tmp_path / 'nope'}")
    path.write_text(text)
    proc = mixlab("run", str(path))
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "does not exist" in last and "nope" in last


def test_bad_recipe_field_via_cli_exit_2(tmp_path):
    path = write_recipe(tmp_path, "typo", [
        {"name": "sft", "trainer": "sft", "mixture": "demo-math-heavy", "args": {"max_stpes": 3}}])
    proc = mixlab("run", str(path))
    assert proc.returncode == 2
    assert "did you mean 'max_steps'" in proc.stderr and f"{path}:" in proc.stderr


def test_packed_batches_from_trl_match_unpacked(tmp_path):
    """TRL's BFD packing passes only position_ids (+ cu_seq_lens); the model must not leak state across samples."""
    import trl

    from mixlab.mixtures import load_dataset
    from mixlab.model import get_preset, KimiLinearForCausalLM, load_tokenizer

    torch.manual_seed(0)
    model = KimiLinearForCausalLM(get_preset("tiny")).eval()
    tokenizer = load_tokenizer("mixlab-bpe")
    dataset = load_dataset("demo-balanced", kind="sft").select(range(16)).select_columns(["messages"])
    args = trl.SFTConfig(output_dir=str(tmp_path / "o"), packing=True, max_length=256, per_device_train_batch_size=4,
                         use_cpu=True, report_to="none", loss_type="nll", assistant_only_loss=True, max_steps=1)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and "position_ids" in batch
    pos = batch["position_ids"][0]
    starts = (pos == 0).nonzero().flatten().tolist() + [pos.numel()]
    assert len(starts) > 2, "several samples packed into one row"
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        for a, b in zip(starts[:-1], starts[1:]):
            alone = model(input_ids=batch["input_ids"][:, a:b]).logits[0]
            torch.testing.assert_close(packed[a:b], alone, atol=1e-4, rtol=1e-4)
    # Assistant-only loss: prompt tokens are masked, assistant tokens are not.
    labels = batch["labels"][0]
    assert (labels == -100).any() and (labels != -100).any()
