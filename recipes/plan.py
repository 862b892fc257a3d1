"""`mixlab plan RECIPE --gpus 8xH100`: per-GPU memory of a full fine-tune under FSDP2, from the model config.

What is counted (bytes; P = parameters, N = GPUs; mixlab's FSDP2 setting in recipes/distributed.py):
- parameters: fp32 master weights, sharded: 4P/N;
- gradients: fp32 (reduced in fp32 into the fp32 shard): 4P/N;
- optimizer: AdamW, two fp32 moments: 8P/N;
- working set (never sharded away): the unsharded bf16 parameters of the layer that runs and of the one prefetched
  (2 × 2 bytes × the largest layer), that layer's unsharded gradient before its reduce-scatter (bf16 + the fp32
  copy that is reduced: 6 bytes × the largest layer), and the root group (embeddings, LM head, final norm; bf16,
  gathered for the whole step, plus its gradient);
- activations: what autograd keeps per token of the micro-batch, counted tensor by tensor for each layer type with
  the fast (fused) kernels and mixlab's Triton KDA (the default; `kda="fla"` counts fla-core's, which keeps less for
  its backward: the measured peaks in MEASURED were taken with it), plus the logits (bf16, their fp32 upcast and
  its gradient). With activation checkpointing only each layer's input is kept, plus one layer recomputed.
With `offload` (FSDP2's CPUOffloadPolicy) parameters, gradients and optimizer state live in host memory: the GPU
holds the working set and the activations; the host needs 16P/N bytes per GPU.
Not counted: the CUDA context and allocator fragmentation (leave ~10 % headroom; the minimum GPU count below
keeps 10 % free) and NCCL buffers. BENCHMARKS.md compares `step_memory` with measured peaks.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from mixlab.errors import MixlabError
from mixlab.model.config import KimiLinearConfig
from mixlab.model.modeling import KimiLinearForCausalLM
from mixlab.model.presets import get_preset

GIB = 2**30
GPUS = {"H100": 80 * 10**9, "H200": 141 * 10**9, "A100": 80 * 10**9, "A100-40": 40 * 10**9, "L40S": 48 * 10**9,
        "B200": 192 * 10**9}  # vendor capacity in bytes (an H100 80GB shows 79.2 GiB to torch)
HEADROOM = 0.9
HOST_GIB_PER_GPU = 256  # an 8-GPU H100 node (DGX H100) has 2 TiB of host RAM; `--host-gib` changes it
# Measured peaks this plan is checked against (bench/results/; forward + backward, bf16 weights, one GPU).
MEASURED = [
    {"source": "bench/results/step_h100.json (fast)", "gpu": "NVIDIA H100 80GB HBM3", "preset": "1b-a150m",
     "tokens": 8192, "peak_gib": 11.265, "kernels": "fast (fla KDA + fused Triton)"},
    {"source": "bench/results/step_h100.json (fast)", "gpu": "NVIDIA H100 80GB HBM3", "preset": "1b-a150m",
     "tokens": 16384, "peak_gib": 20.807, "kernels": "fast (fla KDA + fused Triton)"},
    {"source": "bench/results/gpu_h200.json (fla)", "gpu": "NVIDIA H200", "preset": "1b-a150m", "tokens": 8192,
     "peak_gib": 16.427, "kernels": "fla KDA, torch MoE (before the fused kernels)"},
    {"source": "bench/results/gpu_h200.json (torch)", "gpu": "NVIDIA H200", "preset": "1b-a150m", "tokens": 8192,
     "peak_gib": 22.333, "kernels": "pure-torch kernels"},
]
BF16, FP32 = 2, 4


@dataclass
class ParamCounts:
    total: int
    root: int  # embeddings, LM head, final norm
    layers: list[int]  # per decoder layer

    @property
    def largest_layer(self) -> int:
        return max(self.layers)


def param_counts(config: KimiLinearConfig) -> ParamCounts:
    """Exact counts from the model built on the meta device (no memory)."""
    with torch.device("meta"):
        model = KimiLinearForCausalLM(config)
    layers = [sum(p.numel() for p in layer.parameters()) for layer in model.model.layers]
    total = sum(p.numel() for p in model.parameters())
    return ParamCounts(total=total, root=total - sum(layers), layers=layers)


def kda_kernel_bytes_per_token(H: int, K: int, kda: str = "mixlab") -> float:
    """What the chunked-KDA kernel itself saves for its backward, per token (K = V, chunks of 64 tokens, bf16 run).
    mixlab's (kernels/kda_triton.py, `KDATritonFunction.forward`): the chunk-local cumulative gate (fp32), three
    64-wide per-chunk matrices per head (fp32: scores, decay-masked keys, the solved inverse), five bf16 [H, K]
    intermediates (w, qg, kd, u, v_new), the state at each chunk start (bf16) and the q, k L2 norms. fla-core's
    (chunk_kda): the fp32 state once per chunk. On an H100 the 1b-a150m step peaked 1.4 / 2.7 GiB higher with
    mixlab's at 8k / 16k tokens (BENCHMARKS.md, wave 8); this difference predicts 1.5 / 3.0."""
    P = H * K
    if kda == "fla":
        return P * K * FP32 / 64
    if kda != "mixlab":
        raise MixlabError(f"kda {kda!r}: choose mixlab or fla")
    return P * FP32 + 3 * H * 64 * FP32 + 5 * P * BF16 + P * K * BF16 / 64 + 2 * H * FP32


def activation_bytes_per_token(config: KimiLinearConfig, kda: str = "mixlab") -> dict[str, float]:
    """Bytes autograd keeps per token, per layer (bf16 activations, fp32 where the model computes in fp32); `kda`:
    which chunked-KDA kernel (`kda_kernel_bytes_per_token`)."""
    d = config.hidden_size
    norms = 2 * (d * BF16 + d * BF16 + FP32)  # two RMSNorms: input and output kept (the output feeds the linears)
    out: dict[str, float] = {}
    for i in range(config.num_hidden_layers):
        if config.is_kda_layer(i):
            H, K = config.kda_num_heads, config.kda_head_dim
            P = H * K
            attn = (3 * P * BF16  # q, k, v projections (the conv inputs)
                    + 3 * P * BF16  # conv outputs (silu inputs)
                    + 3 * P * BF16  # q, k, v after silu (+ l2norm of q, k: kept by the kernel)
                    + K * BF16 * 2  # f_a, g_a low-rank outputs
                    + P * FP32  # the fp32 forget gate g
                    + H * FP32  # beta
                    + kda_kernel_bytes_per_token(H, K, kda)
                    + 3 * P * BF16)  # output: gated-norm input, gate, o_proj input
        else:
            Hq = config.num_attention_heads
            q = Hq * (config.qk_nope_head_dim + config.qk_rope_head_dim)
            kv = Hq * (config.qk_nope_head_dim + config.v_head_dim)
            attn = ((config.kv_lora_rank + config.qk_rope_head_dim) * BF16 * 2  # kv_a out, kv norm out
                    + (q + q + Hq * config.v_head_dim) * BF16  # q, k, v for attention
                    + kv * BF16  # kv_b output
                    + Hq * config.v_head_dim * BF16  # attention output (o_proj input)
                    + Hq * FP32)  # softmax log-sum-exp
        if config.is_moe_layer(i):
            k, I, E = config.num_experts_per_token, config.moe_intermediate_size, config.num_experts
            shared = I * config.num_shared_experts
            ffn = (2 * E * FP32  # router logits and scores (fp32)
                   + k * d * BF16  # gathered expert inputs
                   + 3 * k * I * BF16  # w1, w3 outputs and their SwiGLU product
                   + k * d * BF16  # expert outputs (the combine weights' gradient needs them)
                   + 3 * shared * BF16)  # shared expert
        else:
            ffn = 3 * config.intermediate_size * BF16
        out[f"layer_{i}"] = norms + attn + ffn
    return out


def logits_bytes_per_token(config: KimiLinearConfig) -> float:
    return config.vocab_size * (BF16 + FP32 + FP32)  # bf16 logits, fp32 upcast for the loss, its gradient


@dataclass
class Plan:
    preset: str
    gpus: int
    gpu: str
    gpu_bytes: int
    micro_batch_tokens: int
    activation_checkpointing: bool
    params_total: int
    per_gpu_gib: dict[str, dict[str, float]] = field(default_factory=dict)  # mode -> part -> GiB
    host_gib_per_gpu: dict[str, float] = field(default_factory=dict)
    fits: dict[str, bool] = field(default_factory=dict)
    min_gpus: dict[str, int | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fsdp_memory(counts: ParamCounts, config: KimiLinearConfig, n: int, tokens: int, *, offload: bool,
                activation_checkpointing: bool) -> dict[str, float]:
    """Per-GPU bytes by part for N GPUs and `tokens` per micro-batch per GPU."""
    P = counts.total
    sharded = {"params": FP32 * P / n, "grads": FP32 * P / n, "optimizer": 2 * FP32 * P / n}
    per_layer = activation_bytes_per_token(config)
    if activation_checkpointing:
        acts = tokens * (len(per_layer) * config.hidden_size * BF16 + max(per_layer.values()))
    else:
        acts = tokens * sum(per_layer.values())
    acts += tokens * logits_bytes_per_token(config)
    working = (2 * BF16 * counts.largest_layer + (BF16 + FP32) * counts.largest_layer
               + (BF16 + FP32) * counts.root)
    parts = {k: (0.0 if offload else v) for k, v in sharded.items()}
    parts.update(working=working, activations=acts)
    parts["total"] = sum(parts.values())
    return parts


def plan(config: KimiLinearConfig, preset: str, *, gpus: int, gpu: str, tokens: int,
         activation_checkpointing: bool = False, host_gib_per_gpu: float = HOST_GIB_PER_GPU) -> Plan:
    if gpu not in GPUS:
        raise MixlabError(f"--gpus: unknown GPU {gpu!r}; known: {', '.join(GPUS)}")
    counts = param_counts(config)
    cap = GPUS[gpu]
    result = Plan(preset=preset, gpus=gpus, gpu=gpu, gpu_bytes=cap, micro_batch_tokens=tokens,
                  activation_checkpointing=activation_checkpointing, params_total=counts.total)
    for mode, offload in (("fsdp", False), ("fsdp+offload", True)):
        parts = fsdp_memory(counts, config, gpus, tokens, offload=offload,
                            activation_checkpointing=activation_checkpointing)
        result.per_gpu_gib[mode] = {k: v / GIB for k, v in parts.items()}
        result.host_gib_per_gpu[mode] = (16 * counts.total / gpus / GIB) if offload else 0.0
        result.fits[mode] = parts["total"] <= HEADROOM * cap
        result.min_gpus[mode] = _min_gpus(counts, config, tokens, cap, offload, activation_checkpointing,
                                          host_gib_per_gpu)
    return result


def _min_gpus(counts: ParamCounts, config: KimiLinearConfig, tokens: int, cap: int, offload: bool,
              ac: bool, host_gib_per_gpu: float) -> int | None:
    """Smallest N whose per-GPU total stays under 90 % of the card, and with offload whose host share (16P/N) fits
    the host RAM per GPU (None: not even with 4096 GPUs: the unsharded working set plus activations alone do not
    fit; lower the micro-batch or turn on activation checkpointing)."""
    def ok(n: int) -> bool:
        gpu_ok = fsdp_memory(counts, config, n, tokens, offload=offload, activation_checkpointing=ac)["total"] \
            <= HEADROOM * cap
        return gpu_ok and (not offload or 16 * counts.total / n <= HEADROOM * host_gib_per_gpu * GIB)

    for n in (2**i for i in range(13)):
        if ok(n):
            return next(m for m in range(n // 2 + 1 if n > 1 else 1, n + 1) if ok(m))
    return None


def step_memory(config: KimiLinearConfig, tokens: int, kda: str = "mixlab") -> dict[str, float]:
    """One GPU, bf16 weights, forward + backward, no optimizer (the setting of bench/bench_step.py and
    bench_gpu.py): weights + bf16 gradients + activations, bytes."""
    counts = param_counts(config)
    acts = tokens * (sum(activation_bytes_per_token(config, kda).values()) + logits_bytes_per_token(config))
    parts = {"weights": BF16 * counts.total, "grads": BF16 * counts.total, "activations": acts}
    parts["total"] = sum(parts.values())
    return parts


def validate() -> list[dict[str, Any]]:
    """`step_memory` against every measured peak in MEASURED: relative error of the plan. Those peaks were taken
    before mixlab's KDA became the default, so the plan counts fla-core's KDA for them."""
    rows = []
    for m in MEASURED:
        predicted = step_memory(get_preset(m["preset"]), m["tokens"], kda="fla")["total"] / GIB
        rows.append({**m, "plan_gib": round(predicted, 2), "error_pct": round(100 * (predicted / m["peak_gib"] - 1), 1)})
    return rows


def parse_gpus(text: str) -> tuple[int, str]:
    """`8xH100` -> (8, "H100"); `H100` -> (1, "H100")."""
    match = re.fullmatch(r"(?:(\d+)\s*[xX×])?\s*([A-Za-z0-9-]+)", text.strip())
    if not match or int(match.group(1) or 1) < 1:
        raise MixlabError(f"--gpus {text!r}: expected COUNTxNAME, e.g. 8xH100")
    name = match.group(2).upper()
    if name not in GPUS:
        raise MixlabError(f"--gpus {text!r}: unknown GPU {name!r}; known: {', '.join(GPUS)}")
    return int(match.group(1) or 1), name


def format_plan(p: Plan) -> str:
    lines = [f"plan: {p.preset} ({p.params_total / 1e9:.2f}B parameters) on {p.gpus}x{p.gpu} "
             f"({p.gpu_bytes / GIB:.1f} GiB each), {p.micro_batch_tokens} tokens per GPU micro-batch, "
             f"activation checkpointing {'on' if p.activation_checkpointing else 'off'}",
             f"{'per GPU (GiB)':<16}" + "".join(f"{m:>16}" for m in p.per_gpu_gib)]
    for part in ("params", "grads", "optimizer", "working", "activations", "total"):
        lines.append(f"{part:<16}" + "".join(f"{p.per_gpu_gib[m][part]:>16.1f}" for m in p.per_gpu_gib))
    lines.append(f"{'host RAM / GPU':<16}" + "".join(f"{p.host_gib_per_gpu[m]:>16.1f}" for m in p.per_gpu_gib))
    lines.append(f"{'fits (90 %)':<16}" + "".join(f"{('yes' if p.fits[m] else 'NO'):>16}" for m in p.per_gpu_gib))
    lines.append(f"{'min GPUs':<16}" + "".join(
        f"{(str(p.min_gpus[m]) if p.min_gpus[m] else 'none'):>16}" for m in p.per_gpu_gib))
    nodes = {m: math.ceil(v / 8) for m, v in p.min_gpus.items() if v}
    if nodes:
        lines.append("nodes of 8: " + ", ".join(f"{m} {v}" for m, v in nodes.items()))
    return "\n".join(lines)
