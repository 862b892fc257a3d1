"""torchrun worker for test_shard.py: the tiny model sharded by `shard_model` (with activation checkpointing,
CPU offload, bf16 parameters) against the same model unsharded in this process, on the same global batch."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule

from mixlab.model.loading import load_model_and_tokenizer
from mixlab.recipes.distributed import DistContext, full_state_dict, init_distributed, shard_model


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    ctx = DistContext.from_env()
    device = init_distributed(ctx)
    torch.manual_seed(0)
    ref = load_model_and_tokenizer("tiny", None, device="cpu", dtype=torch.float32, seed=0).model.train()
    model = load_model_and_tokenizer("tiny", None, device="cpu", dtype=torch.float32, seed=0).model.train()
    model.config.router_bias_update_rate = ref.config.router_bias_update_rate = 0.01
    if mode == "ac":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    shard_model(model, device=device, param_dtype=torch.bfloat16 if mode == "bf16" else torch.float32,
                offload=mode == "offload")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # Adam would turn ~0 gradient noise into lr-sized steps
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(1)
    losses, ref_losses = [], []
    for _ in range(3):
        batch = torch.randint(0, 1000, (2 * ctx.world_size, 16), generator=gen)
        mine = batch.chunk(ctx.world_size)[ctx.rank]
        loss = model(mine, labels=mine).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        model.update_router_bias()
        ref_loss = ref(batch, labels=batch).loss  # one process, the whole global batch
        ref_loss.backward()
        ref_opt.step()
        ref_opt.zero_grad()
        ref.update_router_bias()
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(float(total) / ctx.world_size)
        ref_losses.append(float(ref_loss.detach()))
    state = full_state_dict(model)
    islands = [type(layer.self_attn).__name__ for layer in model.model.layers
               if layer.is_kda and isinstance(layer.self_attn, FSDPModule)]
    if ctx.is_main:
        ref_state = ref.state_dict()
        diffs = {k: float((state[k].float() - ref_state[k].float()).abs().max()) for k in ref_state}
        bias = max(v for k, v in diffs.items() if k.endswith("e_score_correction_bias"))
        with open(out, "w") as f:
            json.dump({"losses": losses, "ref_losses": ref_losses, "max_param_diff": max(diffs.values()),
                       "max_bias_diff": bias, "kda_fp32_groups": len(islands),
                       "bias_moved": max(float(v.abs().max()) for k, v in state.items()
                                         if k.endswith("e_score_correction_bias"))}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
