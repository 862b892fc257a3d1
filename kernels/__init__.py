"""mixlab.kernels: the ops the model calls, each with a pure-torch implementation (any device) and, through the
dispatcher, GPU kernels where available. Never imports mixlab.model."""

from .dispatch import fla_available, get_backend, set_backend
from .kda_chunk import DEFAULT_CHUNK_SIZE, chunk_kda, chunk_kda_torch, default_chunk_size
from .kda_common import l2norm
from .kda_gate import kda_gate
from .kda_naive import naive_recurrent_kda
from .kda_recurrent import recurrent_kda_step
from .moe import moe_experts, moe_experts_naive, moe_route
from .norm import gated_rms_norm, rms_norm
from .short_conv import short_conv

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "chunk_kda",
    "chunk_kda_torch",
    "default_chunk_size",
    "fla_available",
    "gated_rms_norm",
    "get_backend",
    "kda_gate",
    "l2norm",
    "moe_experts",
    "moe_experts_naive",
    "moe_route",
    "naive_recurrent_kda",
    "recurrent_kda_step",
    "rms_norm",
    "set_backend",
    "short_conv",
]
