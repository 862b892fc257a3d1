"""mixlab.kernels: the ops the model calls, each with a pure-torch implementation (any device, bf16 inputs computed
in fp32 where the reference does) and, through the dispatcher, GPU kernels where available: on CUDA tensors the
fast path is taken automatically (backend "auto"), CPU tensors run the references. Never imports mixlab.model.

| op | file | notes |
| --- | --- | --- |
| kda_gate | kda_gate.py (+ kda_gate_triton.py) | g = -exp(A_log)·softplus(f + dt_bias), fp32; fused on CUDA |
| naive_recurrent_kda | kda_naive.py | token-loop oracle (tests only; slow) |
| chunk_kda | kda_chunk.py, kda_chunk_fn.py | chunked WY/UT form, hand-written backward, cu_seqlens, any decay |
| chunk_kda_triton | kda_triton.py, kda_triton_kernels.py | mixlab's own Triton chunked KDA fwd+bwd (chunk 64, varlen, states); the CUDA default (MIXLAB_KDA_BACKEND=fla: fla-core's) |
| recurrent_kda_step | kda_recurrent.py | decode from an fp32 state |
| kda_decode_step, kda_decode_layer | kda_decode.py (+ kda_decode_triton.py) | engine decode: conv window + gate + state update + gated norm over cache slots; one launch on CUDA (MIXLAB_FUSED_DECODE=0: the reference) |
| mla_decode_paged | mla_decode.py (+ mla_decode_triton.py) | engine decode: appends the latent, absorbed MLA over the paged cache; flash-decoding over the block table on CUDA (MIXLAB_FUSED_DECODE=0: the reference) |
| moe_decode_block | decode_moe.py (+ decode_moe_triton.py) | engine decode: router + experts + combine without host sync; 5 launches on CUDA (MIXLAB_FUSED_DECODE=0: the reference) |
| short_conv | short_conv.py (+ short_conv_triton.py) | causal depthwise conv + SiLU, cache, cu_seqlens; fused on CUDA for training calls (no cache) |
| joint_linear | joint_linear.py | several projections of one input as one GEMM on CUDA with the fused kernels on (no gradient adds) |
| rms_norm, gated_rms_norm | norm.py (+ norm_triton.py) | fp32 compute; one fused launch each way on CUDA |
| moe_route, moe_experts (+ _fused, _grouped, _reference, _naive), expert_counts | moe.py (+ moe_triton.py) | sigmoid+bias top-k (vLLM/HF weights); on CUDA one autograd Function over grouped GEMMs with Triton sort / SwiGLU / gather-sum (MIXLAB_MOE_IMPL=auto, the default; `grouped`: autograd over grouped GEMMs) |
| CapturedStep, StaticBatchStep | step_graph.py | a whole fwd+bwd step as one CUDA graph (static shapes, no host sync); StaticBatchStep: copy-in buffers, fixed gradients that survive zero_grad, accumulation (recipes' graph step) |
| get_backend, set_backend, set_fused | dispatch.py | "auto" (default: fast path on CUDA), "torch" (references), "triton" (auto with fla-core's KDA; fla required) |
"""

if __name__ == "kernels":  # this folder, imported as a top-level package: the repo root is on sys.path
    raise ImportError(
        "mixlab's kernels/ folder shadows the PyPI `kernels` package (transformers imports it) because the repo root "
        "is on sys.path: run Python with -P or PYTHONSAFEPATH=1 (or from another folder), or use the `mixlab` command"
    )

from .decode_moe import moe_decode_block
from .dispatch import fla_available, get_backend, set_backend, set_fused
from .joint_linear import joint_linear
from .kda_chunk import DEFAULT_CHUNK_SIZE, chunk_kda, chunk_kda_torch, default_chunk_size
from .kda_common import l2norm
from .kda_decode import kda_decode_layer, kda_decode_step
from .kda_gate import kda_gate
from .kda_naive import naive_recurrent_kda
from .kda_recurrent import recurrent_kda_step
from .mla_decode import mla_decode_paged
from .moe import (
    expert_counts,
    moe_experts,
    moe_experts_grouped,
    moe_experts_naive,
    moe_experts_reference,
    moe_route,
)
from .norm import gated_rms_norm, rms_norm
from .short_conv import short_conv

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "chunk_kda",
    "chunk_kda_torch",
    "default_chunk_size",
    "expert_counts",
    "fla_available",
    "gated_rms_norm",
    "get_backend",
    "joint_linear",
    "kda_decode_layer",
    "kda_decode_step",
    "kda_gate",
    "l2norm",
    "moe_experts",
    "moe_experts_grouped",
    "moe_experts_naive",
    "moe_experts_reference",
    "mla_decode_paged",
    "moe_decode_block",
    "moe_route",
    "naive_recurrent_kda",
    "recurrent_kda_step",
    "rms_norm",
    "set_backend",
    "set_fused",
    "short_conv",
]
