"""Several processes, one recipe: PyTorch FSDP2 under TRL's trainers (accelerate's FSDP2 support).

Why TRL + accelerate and not a thin loop of our own: the trainers own data collation, packing, logging, resume and
sharded checkpoints (accelerate writes model and optimizer shards with torch.distributed.checkpoint and reloads
them on resume), and DESIGN.md forbids re-implementing a trainer TRL has. Two things accelerate's FSDP2 plugin cannot
do, so mixlab does them before the trainer sees the model (`shard_model`); accelerate's `fsdp2_prepare_model`
leaves an already-sharded model as it is and only remaps the optimizer:
- fp32 islands: accelerate applies one MixedPrecisionPolicy to every group. Here each KDA attention block is its
  own FSDP group with fp32 parameters (it holds `A_log` and `dt_bias`; its matmuls still run in bf16 under the
  trainer's autocast), the rest of each decoder layer gathers in bf16, and gradients reduce in fp32.
- the router correction bias (`e_score_correction_bias`) is not trained by the optimizer; it is updated in place
  from the expert load (`update_router_bias`). It is left out of sharding (`ignored_params`): a plain fp32 tensor,
  replicated, that every rank updates identically because the load is all-reduced first.
accelerate turns its FSDP plugin on only for accelerator devices; on CPU (gloo) it silently falls back to DDP.
`adopt_fsdp` switches the accelerator state to FSDP2 there, so CPU processes take exactly the code path a GPU
run takes (sharded save/resume included); that is what the CPU tests exercise.

Launch: `mixlab run RECIPE --nproc N` starts `torchrun --nproc_per_node N` (through mixlab.procs) on one node;
the multi-node form is in the README (`torchrun --nnodes M --node_rank R --rdzv-endpoint HOST:PORT -m mixlab run`).
Only rank 0 writes to the DuckDB store and runs the eval suite.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.nn.functional import all_to_all_single
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from transformers import TrainerCallback

from mixlab import procs
from mixlab.errors import MixlabError
from mixlab.model.config import KimiLinearConfig
from mixlab.model.modeling import KimiLinearForCausalLM, KimiSparseMoeBlock

# The model's sharded state inside an accelerate FSDP checkpoint (`checkpoint-N/pytorch_model_fsdp_0/`).
FSDP_MODEL_DIR = "pytorch_model_fsdp_0"
ROUTER_BIAS = "e_score_correction_bias"
SUPPORTED_TRAINERS = ("sft",)  # DPO/KTO/GRPO hold a second (reference) model: not sharded yet


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launcher: bool = False  # the `mixlab run --nproc N` parent: preflights and starts torchrun, trains nothing

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "DistContext":
        """torchrun's variables (WORLD_SIZE, RANK, LOCAL_RANK); one process without them."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(rank=int(os.environ.get("RANK", "0")), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                   world_size=world)


def init_distributed(ctx: DistContext) -> str:
    """Join the process group (NCCL with one GPU per local rank, else gloo); return this rank's device."""
    cuda = torch.cuda.is_available() and torch.cuda.device_count() > ctx.local_rank
    if ctx.launcher:
        if torch.cuda.is_available() and torch.cuda.device_count() < ctx.world_size:
            raise MixlabError(f"--nproc {ctx.world_size} but {torch.cuda.device_count()} CUDA device(s) are visible")
        return "cuda" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(ctx.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return f"cuda:{ctx.local_rank}" if cuda else "cpu"


def router_bias_params(model: torch.nn.Module) -> set[torch.nn.Parameter]:
    return {p for name, p in model.named_parameters() if name.endswith(ROUTER_BIAS)}


def fp32_islands(layer: torch.nn.Module) -> list[torch.nn.Module]:
    """Submodules holding trainable fp32-only parameters (the KDA block: A_log, dt_bias). The router gate is not one:
    its bias is ignored by FSDP and its weight is used inside the MoE block's forward, not through its own."""
    return [m for m in layer.modules() if getattr(m, "_fp32_names", ())
            and any(getattr(m, n, None) is not None and getattr(m, n).requires_grad for n in m._fp32_names)]


def shard_model(model: KimiLinearForCausalLM, *, device: str, param_dtype: torch.dtype, offload: bool = False,
                reshard_after_forward: bool = True, mesh: Any = None) -> KimiLinearForCausalLM:
    """FSDP2 `fully_shard` per decoder layer (KDA blocks as fp32 groups of their own when `param_dtype` is lower),
    then the root (embeddings, final norm, LM head). Gradients reduce in fp32; `offload` keeps the sharded
    parameters, gradients and optimizer state in CPU memory (OffloadPolicy)."""
    model.to(device)
    ignored = router_bias_params(model)
    common: dict[str, Any] = dict(mesh=mesh, reshard_after_forward=reshard_after_forward,
                                  offload_policy=CPUOffloadPolicy(pin_memory=device.startswith("cuda"))
                                  if offload else OffloadPolicy(), ignored_params=ignored)
    low = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    # The fp32 group hands its output back in the low dtype, so the rest of the layer sees one dtype with or
    # without autocast.
    full = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32, output_dtype=param_dtype)
    for layer in model.model.layers:
        if param_dtype != torch.float32:
            for island in fp32_islands(layer):
                fully_shard(island, mp_policy=full, **common)
        fully_shard(layer, mp_policy=low, **common)
    fully_shard(model, mp_policy=low, **common)
    return model


def fsdp_training_args(*, offload: bool) -> dict[str, Any]:
    """TrainingArguments that select accelerate's FSDP2 plugin with sharded (DCP) checkpoints."""
    return {"fsdp": True, "fsdp_config": {"version": 2, "state_dict_type": "SHARDED_STATE_DICT",
                                          "cpu_offload": offload}}


def adopt_fsdp(trainer: Any) -> Any:
    """On CPU accelerate ignores its FSDP plugin (MULTI_CPU means DDP there): switch its state to FSDP2 so the
    trainer runs the same FSDP2 path as on GPUs. A no-op where accelerate already chose FSDP."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if state.distributed_type == DistributedType.FSDP:
        return trainer
    if state.distributed_type != DistributedType.MULTI_CPU:
        raise MixlabError(f"FSDP2: accelerate chose {state.distributed_type}, expected FSDP or MULTI_CPU")
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    trainer.is_fsdp_enabled = True
    return trainer


class CheckpointConfigCallback(TrainerCallback):
    """Writes config.json and the tokenizer into every sharded `checkpoint-N/` (rank 0), so that one folder is
    enough to consolidate it (`mixlab consolidate`)."""

    def __init__(self, config: KimiLinearConfig, tokenizer: Any) -> None:
        self.config, self.tokenizer = config, tokenizer

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.config.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)
        return control


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """All ranks call it (a collective); rank 0 gets the full fp32 CPU state dict, the others `{}`."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _write_hf(state: dict[str, torch.Tensor], config: KimiLinearConfig, tokenizer: Any, out: Path) -> Path:
    """A fresh CPU model with `state`, saved in the official single-folder format (temp folder, then rename)."""
    model = KimiLinearForCausalLM(config).to(torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MixlabError(f"consolidate: state dict does not match the config: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")
    tmp = out.parent / f".{out.name}-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def save_consolidated(model: torch.nn.Module, tokenizer: Any, out: Path, ctx: DistContext) -> Path:
    """The final weights of a sharded run, gathered to rank 0 and written in the official format."""
    config = model.config
    state = full_state_dict(model)
    if ctx.is_main:
        _write_hf(state, config, tokenizer, out)
    dist.barrier()
    return out


def consolidate_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """A sharded `checkpoint-N/` (DCP shards + config.json) -> one official-format folder; runs in one process."""
    from transformers import AutoTokenizer

    checkpoint, out = Path(checkpoint), Path(out)
    shards = checkpoint / FSDP_MODEL_DIR
    if not (shards / ".metadata").is_file():
        raise MixlabError(f"consolidate: {checkpoint} has no sharded model ({FSDP_MODEL_DIR}/.metadata)")
    if not (checkpoint / "config.json").is_file():
        raise MixlabError(f"consolidate: {checkpoint} has no config.json")
    config = KimiLinearConfig.from_pretrained(checkpoint)
    with torch.device("meta"):
        skeleton = KimiLinearForCausalLM(config)
    state = {k: torch.empty(v.shape, dtype=torch.float32) for k, v in skeleton.state_dict().items()}
    wrapped = {f"model.{k}": v for k, v in state.items()}  # accelerate stores the model under "model."
    dcp.load(wrapped, checkpoint_id=str(shards), no_dist=True)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint) if (checkpoint / "tokenizer_config.json").is_file() else None
    out.parent.mkdir(parents=True, exist_ok=True)
    return _write_hf({k[len("model."):]: v for k, v in wrapped.items()}, config, tokenizer, out)


def torchrun_args(nproc: int, mixlab_argv: list[str], *, nnodes: int = 1, node_rank: int = 0,
                  rdzv_endpoint: str | None = None) -> list[str]:
    """Interpreter arguments of `torchrun ... -m mixlab <argv>` (single node: a free local port)."""
    args = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nnodes}"]
    if nnodes > 1:
        if not rdzv_endpoint:
            raise MixlabError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node)")
        args += [f"--node_rank={node_rank}", "--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv_endpoint}"]
    else:
        args += ["--standalone"]
    return [*args, "-m", "mixlab", *mixlab_argv]


def launch(nproc: int, mixlab_argv: list[str], *, nnodes: int = 1, node_rank: int = 0,
           rdzv_endpoint: str | None = None, threads: int | None = None) -> int:
    """Run `mixlab <argv>` in `nproc` processes on this node (torchrun); return torchrun's exit code."""
    if nproc < 1:
        raise MixlabError(f"--nproc {nproc}: expected >= 1")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads or max(1, (os.cpu_count() or 1) // nproc)))
    cmd = torchrun_args(nproc, mixlab_argv, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint)
    return procs.run(cmd, env_base=env).returncode


# ---------------------------------------------------------------------------------------------------------------
# Expert parallelism (a tested prototype: forward and backward equal the one-process model; not wired into
# `mixlab run` and its checkpoints yet, see README "Expert parallelism")
# ---------------------------------------------------------------------------------------------------------------


def _exchange(x: torch.Tensor, send: list[int], recv: list[int], group: Any) -> torch.Tensor:
    """all_to_all with uneven splits; differentiable (the backward is the reverse exchange)."""
    out = x.new_empty((sum(recv), *x.shape[1:]))
    if x.requires_grad:
        return all_to_all_single(out, x, output_split_sizes=recv, input_split_sizes=send, group=group)
    dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv, input_split_sizes=send, group=group)
    return out


def ep_experts(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, idx: torch.Tensor,
               weight: torch.Tensor, num_experts: int, group: Any) -> torch.Tensor:
    """Σ_k weight · Expert_idx(x) with each rank holding experts [r·E/ep, (r+1)·E/ep) (w1/w3/w2 are the local
    slices): token slots sorted by expert go to the rank that owns it (all_to_all), run there, come back."""
    ep, rank = dist.get_world_size(group), dist.get_rank(group)
    local_e = num_experts // ep
    n, k = idx.shape
    slot_expert = idx.reshape(-1)
    order = torch.argsort(slot_expert, stable=True)
    expert_sorted = slot_expert[order]
    token_sorted = torch.arange(n, device=x.device).repeat_interleave(k)[order]
    send_counts = torch.bincount(expert_sorted // local_e, minlength=ep)
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=group)
    send, recv = send_counts.tolist(), recv_counts.tolist()
    got_x = _exchange(x[token_sorted], send, recv, group)
    got_e = _exchange(expert_sorted, send, recv, group) - rank * local_e
    out = torch.zeros_like(got_x)
    for e in range(local_e):
        rows = (got_e == e).nonzero(as_tuple=True)[0]
        if rows.numel():
            h = F.silu(F.linear(got_x[rows], w1[e])) * F.linear(got_x[rows], w3[e])
            out = out.index_put((rows,), F.linear(h, w2[e]))
    back = _exchange(out, recv, send, group)
    contrib = back.float() * weight.reshape(-1)[order][:, None]
    return torch.zeros(n, x.shape[1], device=x.device, dtype=torch.float32).index_add(0, token_sorted, contrib).to(x.dtype)


class ExpertParallelMoeBlock(KimiSparseMoeBlock):
    """The MoE block with its routed experts split over a process group (the shared expert, router and bias stay
    replicated). Routing, shared expert, load counts and aux loss are KimiSparseMoeBlock.forward's own."""

    ep_group: Any = None

    def routed_experts(self, flat: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return ep_experts(flat, self.experts.w1, self.experts.w3, self.experts.w2, idx, weight,
                          self.config.num_experts, self.ep_group)


def apply_expert_parallel(model: KimiLinearForCausalLM, group: Any = None) -> list[torch.nn.Parameter]:
    """Keep this rank's slice of every MoE layer's experts (E must divide by the group size) and route through
    all_to_all. Returns the local expert parameters: they are not replicated, so they take no data-parallel
    gradient reduction (shard or replicate the rest of the model with `ignored_params` = these); their gradient is
    the sum over every rank's tokens of that rank's loss, so with mean-per-rank losses scale it by 1/world size."""
    ep, rank = dist.get_world_size(group), dist.get_rank(group)
    local: list[torch.nn.Parameter] = []
    for block in model.model.moe_blocks().values():
        E = block.config.num_experts
        if E % ep:
            raise MixlabError(f"expert parallelism: {E} experts do not split over {ep} ranks")
        part = slice(rank * E // ep, (rank + 1) * E // ep)
        for name in ("w1", "w3", "w2"):
            param = torch.nn.Parameter(getattr(block.experts, name).detach()[part].clone())
            setattr(block.experts, name, param)
            local.append(param)
        block.__class__ = ExpertParallelMoeBlock
        block.ep_group = group
    return local


def is_sharded(model: Any) -> bool:
    return isinstance(model, FSDPModule)
