"""Training behaviour: loss, MoE balancing, aux loss, gradient checkpointing, fp32 islands, TRL SFT."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def test_loss_is_shifted_ce_ignoring_masked_labels(tiny_model):
    ids = torch.randint(0, 1000, (2, 16))
    labels = ids.clone()
    labels[:, :5] = -100
    out = tiny_model(ids, labels=labels)
    want = F.cross_entropy(out.logits[:, :-1].reshape(-1, 1024), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, want)


def test_gradient_checkpointing_gives_the_same_gradients(make_model):
    ids = torch.randint(0, 1000, (2, 40))
    grads = []
    for ckpt in (False, True):
        model = make_model(seed=7).train()
        if ckpt:
            model.gradient_checkpointing_enable()
            assert model.model.gradient_checkpointing
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        counts = model.model._load_counts
        assert all(int(c.sum()) == 80 * model.config.num_experts_per_token for c in counts.values())  # no recount
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5, msg=name)
    assert all(torch.isfinite(g).all() for g in grads[0].values())


def test_router_bias_update_and_expert_load(make_model):
    model = make_model(seed=1, router_bias_update_rate=0.01).train()
    blocks = model.model.moe_blocks()
    before = {i: b.gate.e_score_correction_bias.clone() for i, b in blocks.items()}
    model(torch.randint(0, 1000, (4, 32)))
    load = model.expert_load()
    assert set(load) == set(blocks) and all(abs(float(v.sum()) - 1) < 1e-6 for v in load.values())
    imbalance = model.update_router_bias()
    assert set(imbalance) == set(blocks)
    for i, b in blocks.items():
        step = b.gate.e_score_correction_bias - before[i]
        assert torch.all(step.abs() <= 0.01 + 1e-7) and step.abs().max() > 0
        over = load[i] > load[i].mean()  # overloaded experts get pushed down
        assert torch.all(step[over] < 0)
    # eval mode and the default rate 0 leave the bias frozen
    snapshot = {i: b.gate.e_score_correction_bias.clone() for i, b in blocks.items()}
    model.eval()
    model(torch.randint(0, 1000, (2, 8)))
    assert model.update_router_bias() == {}
    frozen = make_model(seed=1).train()
    frozen(torch.randint(0, 1000, (2, 8)))
    assert frozen.update_router_bias() == {}
    assert all(torch.equal(snapshot[i], b.gate.e_score_correction_bias) for i, b in blocks.items())
    rows = model.expert_load_rows()
    assert len(rows) == len(blocks) * model.config.num_experts and all(len(r) == 4 for r in rows)


def test_sequence_aux_loss_trains_the_router(make_model):
    ids = torch.randint(0, 1000, (2, 24))
    gate_grads = []
    for coef in (0.0, 0.5):
        model = make_model(seed=2, seq_aux_loss_coef=coef).train()
        out = model(ids, labels=ids)
        assert (out.aux_loss is None) == (coef == 0)
        out.loss.backward()
        gate_grads.append(model.model.layers[1].block_sparse_moe.gate.weight.grad.clone())
    assert (gate_grads[0] - gate_grads[1]).abs().max() > 1e-6
    # the aux gradient arrives even when the caller ignores model.loss (TRL's fused LM head)
    model = make_model(seed=2, seq_aux_loss_coef=0.5).train()
    h = model.model(ids).last_hidden_state
    (h.sum() * 0).backward()
    assert model.model.layers[1].block_sparse_moe.gate.weight.grad.abs().max() > 0


def test_router_weight_convention_flag(make_model):
    ids = torch.randint(0, 1000, (1, 12))
    with torch.no_grad():
        a = make_model(seed=5)(ids).logits
        b = make_model(seed=5, router_weights_use_bias=True)(ids).logits
    assert (a - b).abs().max() > 1e-6


def test_bf16_keeps_fp32_islands_and_runs(make_model):
    model = make_model(seed=6).to(torch.bfloat16).train()
    attn = model.model.layers[0].self_attn
    assert attn.A_log.dtype == attn.dt_bias.dtype == torch.float32
    assert model.model.layers[1].block_sparse_moe.gate.e_score_correction_bias.dtype == torch.float32
    assert attn.q_proj.weight.dtype == torch.bfloat16
    ids = torch.randint(0, 1000, (2, 20))
    out = model(ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss) and attn.A_log.grad is not None and torch.isfinite(attn.A_log.grad).all()


def test_trl_sft_lowers_the_loss(tmp_path, make_model):
    """20 steps of TRL SFTTrainer (nll loss, padding-free packing, assistant-only loss) on the tiny preset."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from mixlab.model import load_tokenizer
    from mixlab.model.training import RouterBiasCallback

    tok = load_tokenizer()
    rows = []
    for i in range(160):
        a, b = (i * 7) % 50, (i * 13) % 50
        rows.append({"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                                  {"role": "assistant", "content": f"{a} + {b} = {a + b}."}]})
    model = make_model(seed=0, router_bias_update_rate=1e-3).train()
    args = SFTConfig(
        output_dir=str(tmp_path / "out"), max_steps=20, per_device_train_batch_size=8, learning_rate=3e-3,
        lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        bf16=False, loss_type="nll", max_length=64, packing=True, assistant_only_loss=True,
        dataloader_num_workers=0, seed=0, disable_tqdm=True,
    )
    bias = model.model.layers[1].block_sparse_moe.gate.e_score_correction_bias
    bias_before = bias.clone()
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         callbacks=[RouterBiasCallback()])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 20
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses
    assert not torch.equal(bias_before, bias)  # the balancing update ran between optimizer steps


def test_trl_grpo_and_dpo_run_on_the_hybrid(tmp_path, make_model):
    """GRPO generates through the hybrid cache (HF generate, left padding); DPO rebuilds its reference model from
    the checkpoint folder through AutoConfig / AutoModelForCausalLM.from_pretrained."""
    import math

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer

    from mixlab.model import load_model, load_tokenizer

    tok = load_tokenizer()
    common = dict(use_cpu=True, bf16=False, report_to=[], logging_steps=1, save_strategy="no", disable_tqdm=True,
                  per_device_train_batch_size=4)
    prompts = [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}]} for i in range(8)]

    def reward(completions, **_):
        return [float(len(c[0]["content"]) % 3) for c in completions]

    grpo = GRPOTrainer(model=make_model(seed=0).train(), reward_funcs=reward, processing_class=tok,
                       train_dataset=Dataset.from_list(prompts),
                       args=GRPOConfig(output_dir=str(tmp_path / "grpo"), max_steps=2, num_generations=4,
                                       max_completion_length=8, **common))
    grpo.train()
    logs = [h for h in grpo.state.log_history if "reward" in h]
    assert len(logs) == 2 and all(math.isfinite(h["grad_norm"]) and h["completions/mean_length"] > 0 for h in logs)

    make_model(seed=0).save_pretrained(tmp_path / "policy")
    pairs = [{**p, "chosen": [{"role": "assistant", "content": str(2 * i)}],
              "rejected": [{"role": "assistant", "content": f"{2 * i + 1} maybe"}]} for i, p in enumerate(prompts)]
    dpo = DPOTrainer(model=load_model(tmp_path / "policy"), processing_class=tok, train_dataset=Dataset.from_list(pairs),
                     args=DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=3, learning_rate=1e-3, **common))
    dpo.train()
    losses = [h["loss"] for h in dpo.state.log_history if "loss" in h]
    assert abs(losses[0] - math.log(2)) < 1e-3 and losses[-1] < losses[0]  # starts at ln 2 (policy == reference)


def test_router_and_gates_stay_fp32_under_autocast(make_model):
    model = make_model(seed=8).train()
    seen = {}
    import mixlab.model.modeling as modeling

    real_route = modeling.moe_route

    def spy(logits, *a, **kw):
        seen["router_logits"] = logits.dtype
        return real_route(logits, *a, **kw)

    modeling.moe_route = spy
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(torch.randint(0, 1000, (2, 12)), labels=torch.randint(0, 1000, (2, 12)))
    finally:
        modeling.moe_route = real_route
    out.loss.backward()
    assert out.logits.dtype == torch.bfloat16  # autocast is active for the projections ...
    assert seen["router_logits"] == torch.float32  # ... but not for the router


def test_moe_autocast_cast_is_on_by_default_and_changes_nothing_on_cpu(make_model, monkeypatch):
    # MIXLAB_MOE_AUTOCAST casts routed experts only under CUDA autocast: on CPU (fp32, or under CPU autocast) a model
    # with the cast on trains bit for bit as one with it off.
    monkeypatch.delenv("MIXLAB_MOE_AUTOCAST", raising=False)
    ids = torch.randint(0, 1000, (2, 12))
    for autocast in (False, True):
        runs = []
        for cast in (True, False):
            model = make_model(seed=9).train()
            blocks = model.model.moe_blocks().values()
            assert blocks and all(b.autocast_experts for b in blocks)  # the default
            for b in blocks:
                b.autocast_experts = cast
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = model(ids, labels=ids)
            out.loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            runs.append((out.loss.detach(), grads))
        (loss_on, grads_on), (loss_off, grads_off) = runs
        assert torch.equal(loss_on, loss_off) and grads_on.keys() == grads_off.keys()
        assert all(torch.equal(grads_on[n], grads_off[n]) for n in grads_on)
    monkeypatch.setenv("MIXLAB_MOE_AUTOCAST", "0")
    assert not any(b.autocast_experts for b in make_model().model.moe_blocks().values())
