"""The recipe's graph training step (recipes/graph_step.py) on CPU, through real TRL SFTTrainers: its static-buffer
step (MIXLAB_GRAPH_STEP=eager: everything but the CUDA capture) trains exactly as TRL's own step, gradient
accumulation, several batch shapes, right padding kept dense, the MoE aux loss and expert-load counters included;
batches it cannot hold (packed, left-padded, over the shape limit) fall back to TRL's step with the reason recorded;
SFT recipes build the graph-capable trainer."""

from __future__ import annotations

import pytest
import torch
import trl
from datasets import Dataset

from mixlab.errors import MixlabError
from mixlab.model import load_model_and_tokenizer
from mixlab.model.training import RouterBiasCallback
from mixlab.recipes.graph_step import (
    GraphStepMixin,
    bucket_multiple,
    graph_mode,
    graph_shapes,
    inspect_batch,
    with_graph_step,
)
from mixlab.recipes.trainers import BuildContext, get_trainer


def _rows(n=18, T=32, ragged=False):
    gen = torch.Generator().manual_seed(0)
    lens = torch.randint(6, T + 1, (n,), generator=gen).tolist() if ragged else [T] * n
    return [{"input_ids": torch.randint(0, 1000, (L,), generator=gen).tolist()} for L in lens]


def _train(tmp_path, mode, monkeypatch, *, rows, packing=False, ga=2, overrides=None, shapes=4, pad_to=None):
    if mode is None:  # the default
        monkeypatch.delenv("MIXLAB_GRAPH_STEP", raising=False)
    else:
        monkeypatch.setenv("MIXLAB_GRAPH_STEP", mode)
    monkeypatch.setenv("MIXLAB_GRAPH_STEP_SHAPES", str(shapes))
    lm = load_model_and_tokenizer("tiny", device="cpu", dtype=torch.float32, seed=0, overrides=overrides)
    args = trl.SFTConfig(output_dir=str(tmp_path / (mode or "default")), max_steps=3, per_device_train_batch_size=4,
                         gradient_accumulation_steps=ga, use_cpu=True, report_to="none", loss_type="nll",
                         logging_steps=1, max_length=64, optim="sgd", learning_rate=0.5, disable_tqdm=True,
                         packing=packing, seed=0, bf16=False, pad_to_multiple_of=pad_to)
    trainer = with_graph_step(trl.SFTTrainer)(model=lm.model, args=args, processing_class=lm.tokenizer,
                                               train_dataset=Dataset.from_list(rows),
                                               callbacks=[RouterBiasCallback()])  # as the runner adds it
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    params = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    return trainer, logs, params, lm.model


def _assert_same_training(a, b, tol=2e-5):
    (_, la, pa, ma), (_, lb, pb, mb) = a, b
    assert [h["loss"] for h in la] == pytest.approx([h["loss"] for h in lb], rel=1e-5, abs=1e-6)
    assert [h["num_tokens"] for h in la] == [h["num_tokens"] for h in lb]
    assert [h["grad_norm"] for h in la] == pytest.approx([h["grad_norm"] for h in lb], rel=1e-4)
    worst = max(float((pa[n] - pb[n]).abs().max()) for n in pa)
    assert worst < tol, worst
    la_load, lb_load = ma.expert_load(), mb.expert_load()
    assert la_load.keys() == lb_load.keys() and la_load
    for k in la_load:
        assert torch.equal(la_load[k], lb_load[k]), k


def test_static_step_trains_exactly_as_trls_step(tmp_path, monkeypatch):
    # 18 rows, batch 4, accumulation 2: two optimizer steps of two graphed micro-batches, then the epoch's last
    # batch of 2 rows alone (a shape not graphed: TRL's own step)
    # the aux loss's gradient is attached inside the MoE blocks; the router-bias update reads the graphed load counters
    overrides = {"seq_aux_loss_coef": 0.01, "router_bias_update_rate": 0.01}
    graphed = _train(tmp_path, "eager", monkeypatch, rows=_rows(), overrides=overrides, shapes=1)
    plain = _train(tmp_path, "off", monkeypatch, rows=_rows(), overrides=overrides)
    _assert_same_training(graphed, plain)  # parameters include each router's e_score_correction_bias
    bias = [p for n, p in graphed[3].named_parameters() if n.endswith("e_score_correction_bias")]
    assert bias and any(float(b.abs().sum()) > 0 for b in bias)  # the balancing update did move them
    stats = graphed[0].graph_stats
    assert stats["graph"] == 4 and stats["eager"] == 1, stats
    assert list(stats["reasons"]) == ["batch shape (2, 32): 1 other shapes are graphed (MIXLAB_GRAPH_STEP_SHAPES)"]
    assert [h["graph_step"] for h in graphed[1]] == [1.0, 1.0, 0.0]
    assert "graph_step" not in plain[1][0] and plain[0].graph_stats["reasons"] == {"MIXLAB_GRAPH_STEP=off": 5}


def test_right_padding_stays_dense_and_trains_as_the_varlen_step(tmp_path, monkeypatch):
    # 16 rows of 6-12 tokens and 4 of 32 in 5 batches of 4, padded to a multiple of 8: at least one batch has no
    # long row, so there are several shapes, mixed within one accumulation. TRL's step packs each padded batch into
    # the varlen layout; the graph step keeps it [B, T] with the padding left out of the expert loads.
    rows = _rows(n=16, T=12, ragged=True) + _rows(n=4, T=32)
    graphed = _train(tmp_path, "eager", monkeypatch, rows=rows, pad_to=8)
    plain = _train(tmp_path, "off", monkeypatch, rows=rows, pad_to=8)
    _assert_same_training(graphed, plain)
    stats = graphed[0].graph_stats
    assert stats["eager"] == 0 and stats["graph"] == 5 and len(graphed[0].graph_steps) >= 2, stats
    steps = list(graphed[0].graph_steps.values())
    assert all(s.grads is steps[0].grads for s in steps)  # shapes accumulate into the same gradients


@pytest.mark.slow
def test_packed_batches_and_padding_with_the_aux_loss_run_trls_step(tmp_path, monkeypatch):
    packed, logs, _, _ = _train(tmp_path, "eager", monkeypatch, rows=_rows(n=24, ragged=True), packing=True, ga=1)
    assert packed.graph_stats["graph"] == 0
    assert list(packed.graph_stats["reasons"]) == ["packed batch (varlen layout)"]
    assert all(h["graph_step"] == 0.0 for h in logs)
    aux, _, _, _ = _train(tmp_path, "eager", monkeypatch, rows=_rows(n=8, ragged=True), ga=1,
                          overrides={"seq_aux_loss_coef": 0.01})
    assert list(aux.graph_stats["reasons"]) == ["padding or position resets (varlen layout)"]


def test_on_cpu_the_default_auto_mode_trains_as_off(tmp_path, monkeypatch):
    # the default is "auto": on CPU it runs TRL's own step, exactly as MIXLAB_GRAPH_STEP=off does
    default = _train(tmp_path, None, monkeypatch, rows=_rows(n=8), ga=1)
    trainer, logs, params, _ = default
    assert trainer.graph_stats["graph"] == 0 and trainer.graph_stats["eager"] == len(logs) == 3
    assert list(trainer.graph_stats["reasons"]) == ["model on cpu, not CUDA"]
    assert "graph_step" not in logs[0]
    off = _train(tmp_path, "off", monkeypatch, rows=_rows(n=8), ga=1)
    assert off[0].graph_stats["reasons"] == {"MIXLAB_GRAPH_STEP=off": 3}
    assert [h["loss"] for h in logs] == [h["loss"] for h in off[1]]
    assert all(torch.equal(params[n], off[2][n]) for n in params)


def test_inspect_batch():
    ids = torch.zeros(2, 5, dtype=torch.long)
    dense = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones(2, 5, dtype=torch.long),
             "position_ids": torch.arange(5).expand(2, 5)}
    assert inspect_batch(dense) == (None, 10)
    assert inspect_batch({"input_ids": ids, "labels": ids}) == (None, 10)
    right = {**dense, "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])}
    assert inspect_batch(right) == (None, 6)
    assert "padding" in inspect_batch(right, allow_right_padding=False)[0]
    assert "left padding" in inspect_batch({**dense, "attention_mask": torch.tensor([[0, 1, 1, 1, 1]] * 2)})[0]
    assert "position resets" in inspect_batch({**dense, "position_ids": torch.tensor([[0, 1, 0, 1, 2]] * 2)})[0]
    assert "keys" in inspect_batch({**dense, "pixel_values": ids})[0]
    assert "packed" in inspect_batch({**dense, "cu_seq_lens_q": ids})[0]
    assert "[B, T]" in inspect_batch({"input_ids": ids, "labels": ids[:, :4]})[0]


def test_graph_mode_setting(monkeypatch):
    monkeypatch.delenv("MIXLAB_GRAPH_STEP", raising=False)
    assert graph_mode() == "auto"  # the default: graphs on CUDA, TRL's step elsewhere
    for raw, want in (("", "auto"), (" Auto ", "auto"), ("off", "off"), ("0", "off"), ("false", "off"),
                      ("eager", "eager")):
        monkeypatch.setenv("MIXLAB_GRAPH_STEP", raw)
        assert graph_mode() == want, raw
    monkeypatch.setenv("MIXLAB_GRAPH_STEP", "always")
    with pytest.raises(MixlabError, match="MIXLAB_GRAPH_STEP='always'"):
        graph_mode()
    monkeypatch.setenv("MIXLAB_GRAPH_STEP_SHAPES", "0")
    with pytest.raises(MixlabError, match="MIXLAB_GRAPH_STEP_SHAPES='0'"):
        graph_shapes()
    monkeypatch.setenv("MIXLAB_GRAPH_STEP_SHAPES", "4")
    assert bucket_multiple(1024) == 256 and bucket_multiple(100) == 64 and bucket_multiple(None) is None


def test_sft_recipes_build_the_graph_capable_trainer(tmp_path):
    lm = load_model_and_tokenizer("tiny", device="cpu", dtype=torch.float32, seed=0)
    args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to="none", loss_type="nll",
                         bf16=False)
    trainer = get_trainer("sft").build(BuildContext(model=lm.model, tokenizer=lm.tokenizer, args=args,
                                                    dataset=Dataset.from_list(_rows(n=4)), callbacks=[], stage=None))
    assert isinstance(trainer, GraphStepMixin) and isinstance(trainer, trl.SFTTrainer)


def test_the_moe_autocast_cast_is_on_by_default_and_the_graph_step_forces_it(monkeypatch):
    from mixlab.recipes.graph_step import model_step

    monkeypatch.delenv("MIXLAB_MOE_AUTOCAST", raising=False)
    model = load_model_and_tokenizer("tiny", device="cpu", dtype=torch.float32, seed=0).model
    assert all(b.autocast_experts for b in model.model.moe_blocks().values())  # unset: on
    monkeypatch.setenv("MIXLAB_MOE_AUTOCAST", "0")
    model = load_model_and_tokenizer("tiny", device="cpu", dtype=torch.float32, seed=0).model
    blocks = model.model.moe_blocks().values()
    assert blocks and not any(b.autocast_experts for b in blocks)  # MIXLAB_MOE_AUTOCAST=0: off
    model_step(model, bf16=False, capture=False)
    assert all(b.autocast_experts for b in blocks)  # the graph step needs the grouped path
