"""torchrun worker for test_expert_parallel.py: the tiny model with its experts split over the ranks
(`apply_expert_parallel`, all_to_all dispatch) against the whole model in this process on the same global batch."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from mixlab.model.loading import load_model_and_tokenizer
from mixlab.recipes.distributed import DistContext, apply_expert_parallel, init_distributed


def main() -> None:
    out = sys.argv[1]
    ctx = DistContext.from_env()
    init_distributed(ctx)
    ref = load_model_and_tokenizer("tiny", None, device="cpu", dtype=torch.float32, seed=0).model.train()
    model = load_model_and_tokenizer("tiny", None, device="cpu", dtype=torch.float32, seed=0).model.train()
    local = {id(p) for p in apply_expert_parallel(model)}
    names = dict(model.named_parameters())
    E = model.config.num_experts
    part = slice(ctx.rank * E // ctx.world_size, (ctx.rank + 1) * E // ctx.world_size)
    gen = torch.Generator().manual_seed(1)
    report = {"losses": [], "ref_losses": [], "max_grad_diff": 0.0, "max_expert_grad_diff": 0.0}
    for _ in range(2):
        batch = torch.randint(0, 1000, (2 * ctx.world_size, 16), generator=gen)
        mine = batch.chunk(ctx.world_size)[ctx.rank]
        loss = model(mine, labels=mine).loss
        loss.backward()
        ref_loss = ref(batch, labels=batch).loss
        ref_loss.backward()
        ref_params = dict(ref.named_parameters())
        for name, p in names.items():
            if p.grad is None:
                continue
            if id(p) in local:  # the sum over every rank's loss: the mean loss's gradient / world size
                p.grad /= ctx.world_size
                diff = (p.grad - ref_params[name].grad[part]).abs().max()
                report["max_expert_grad_diff"] = max(report["max_expert_grad_diff"], float(diff))
            else:
                dist.all_reduce(p.grad)
                p.grad /= ctx.world_size
                diff = (p.grad - ref_params[name].grad).abs().max()
                report["max_grad_diff"] = max(report["max_grad_diff"], float(diff))
        with torch.no_grad():
            for p in list(model.parameters()) + list(ref.parameters()):
                if p.grad is not None:
                    p -= 0.5 * p.grad
                    p.grad = None
        total = loss.detach().clone()
        dist.all_reduce(total)
        report["losses"].append(float(total) / ctx.world_size)
        report["ref_losses"].append(float(ref_loss.detach()))
    if ctx.is_main:
        with open(out, "w") as f:
            json.dump(report, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
