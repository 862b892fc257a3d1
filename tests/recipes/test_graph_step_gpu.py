"""GPU checks of the recipe's CUDA-graph training step (marker `gpu`, never on CI): the captured step of a real model
(fp32 master weights under bf16 autocast, as a recipe trains) gives the eager step's loss and gradients, and a real
TRL SFTTrainer on CUDA takes the graph by itself."""

from __future__ import annotations

import pytest
import torch

from mixlab.model import load_model
from mixlab.recipes.graph_step import model_step

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _batch(model, B=2, T=256, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (B, T), device="cuda", generator=gen)
    labels = ids.clone()
    labels[:, :8] = -100
    mask = torch.ones(B, T, dtype=torch.bool, device="cuda")
    mask[1, T // 2:] = False  # row 1 right-padded: kept dense, left out of the expert loads
    labels[~mask] = -100
    return {"input_ids": ids, "labels": labels, "count_mask": mask, "scale": torch.full((), 0.5, device="cuda")}


# One MoE implementation in both steps, each in turn: bf16 rounding differences between two implementations are
# amplified in some gradients (A_log, dt_bias: sums over all tokens that cancel), which is not what this test is
# about (test_moe_gpu.py checks auto's choice).
@pytest.mark.parametrize("moe_impl", ["fused", "grouped"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_captured_model_step_matches_eager(checkpointing, moe_impl, monkeypatch):
    monkeypatch.setenv("MIXLAB_MOE_IMPL", moe_impl)
    model = load_model("small", dtype=torch.float32, device="cuda", seed=0).train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    graphed = model_step(model, bf16=True, capture=True)
    eager = model_step(model, bf16=True, capture=False)
    batches = [_batch(model, seed=s) for s in range(3)]
    # two micro-batches accumulate, then a fresh optimizer step (grads set to None, as the Trainer does)
    for step in (graphed, eager):
        model.zero_grad(set_to_none=True)
        losses = [float(step.step(b)) for b in batches[:2]]
        model.zero_grad(set_to_none=True)
        losses.append(float(step.step(batches[2])))
        step.result = (losses, [g.clone() for g in step.grads])
    # the first micro-step of each optimizer step replays the assign graph, the second the accumulate graph
    assert graphed.assign_graph is not None and graphed.graph is not None and graphed.replays == 3
    loads = model.expert_load()
    assert loads and all(float(v.sum()) == pytest.approx(1.0) for v in loads.values())
    (lg, gg), (le, ge) = graphed.result, eager.result
    assert lg == pytest.approx(le, rel=1e-3)
    num = sum(float((a - b).float().pow(2).sum()) for a, b in zip(gg, ge))
    den = sum(float(b.float().pow(2).sum()) for b in ge)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    worst = sorted(((float((a - b).float().norm() / b.float().norm().clamp_min(1e-12)), n)
                    for n, a, b in zip(names, gg, ge)), reverse=True)[:6]
    # bf16 autocast: different kernels order reductions
    assert (num / den) ** 0.5 < 2e-2, ((num / den) ** 0.5, worst)


def test_sft_trainer_on_cuda_replays_the_graph(tmp_path, monkeypatch):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from mixlab.model import load_model_and_tokenizer
    from mixlab.recipes.graph_step import with_graph_step

    monkeypatch.delenv("MIXLAB_GRAPH_STEP", raising=False)  # the default, "auto"
    lm = load_model_and_tokenizer("small", device="cpu", dtype=torch.float32, seed=0)
    gen = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(0, 1000, (128,), generator=gen).tolist()} for _ in range(32)]
    args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, bf16=True,
                         report_to="none", loss_type="nll", logging_steps=1, max_length=128, disable_tqdm=True)
    trainer = with_graph_step(trl.SFTTrainer)(model=lm.model, args=args, processing_class=lm.tokenizer,
                                               train_dataset=datasets.Dataset.from_list(rows))
    trainer.train()
    assert trainer.graph_stats["graph"] == 4, trainer.graph_stats
    # one batch shape, no gradient accumulation: every step is an optimizer step's first micro-step, one graph
    assert [(s.assign_graph is not None, s.graph) for s in trainer.graph_steps.values()] == [(True, None)]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(l == l and 0 < l < 20 for l in losses), losses
