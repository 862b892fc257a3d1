"""Ahead-of-time compilation of the Triton KDA kernels for a GPU target, without a GPU.

Compiles each kernel of kda_triton_kernels.py with the launch options of `kda_triton.LAUNCH` for a CUDA target
(default sm_90, Hopper) through Triton's own compiler and ptxas, and reports the shared memory each needs. A kernel
over the device's per-block limit fails at its first launch on the GPU (OutOfResources); this finds that on CPU.
Must run in a process without TRITON_INTERPRET=1 (the interpreter replaces the kernels).

    python -P -m mixlab.kernels.kda_triton_aot        # prints {kernel: shared bytes} at H=32, K=V=128
"""

from __future__ import annotations

import json

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import kda_triton_kernels as kk
from .kda_triton import CHUNK, LAUNCH, SUB, _bv

# Shared memory one block may use: H100 and H200 (sm_90), as the device reported it.
SM90_SHARED_LIMIT = 232448


def _specs(H: int, K: int, DV: int):
    P, BF, I, F = "*fp32", "*bf16", "*i32", "fp32"
    BV = _bv(DV)
    return {
        "_cumsum_kernel": (dict(X=P, Y=P, cu=I, CI=I), dict(H=H, K=K, C=CHUNK, REVERSE=False)),
        "_scores_fwd_kernel": (dict(Q=P, Kt=P, G=P, AQK=P, AKK=P, cu=I, CI=I, scale=F),
                               dict(H=H, K=K, C=CHUNK, BC=SUB)),
        "_solve_fwd_kernel": (dict(Kt=P, V=BF, G=P, BETA=BF, AKK=P, TM=P, W=P, U=P, cu=I, CI=I),
                              dict(H=H, K=K, DV=DV, C=CHUNK)),
        "_state_fwd_kernel": (dict(Q=P, Kt=P, G=P, W=P, U=P, AQK=P, O=BF, S0=P, STARTS=P, ST=P, cu=I, CO=I, scale=F),
                              dict(H=H, K=K, DV=DV, C=CHUNK, BV=BV, HAS_S0=True, STORE_ST=True)),
        "_state_bwd_kernel": (dict(Q=P, Kt=P, G=P, W=P, AQK=P, DO=BF, DST=P, DNEXT=P, DS0=P, cu=I, CO=I, scale=F),
                              dict(H=H, K=K, DV=DV, C=CHUNK, BV=BV, HAS_DST=True)),
        "_intra_bwd_kernel": (dict(Q=P, Kt=P, V=BF, G=P, BETA=BF, AQK=P, AKK=P, TM=P, W=P, U=P, STARTS=P, DNEXT=P,
                                   DO=BF, DQ=P, DK=P, DV_=BF, DG=P, DBETA=P, DAQK=P, DAKK=P, cu=I, CI=I, scale=F),
                              dict(H=H, K=K, DV=DV, C=CHUNK, BV=BV)),
        "_scores_bwd_kernel": (dict(Q=P, Kt=P, G=P, DAQK=P, DAKK=P, DQ=P, DK=P, DG=P, cu=I, CI=I, scale=F),
                               dict(H=H, K=K, C=CHUNK, BC=SUB)),
    }


def shared_memory(H: int = 32, K: int = 128, DV: int = 128, arch: int = 90) -> dict[str, int]:
    """{kernel name: shared memory bytes per block} when compiled for CUDA `arch` with mixlab's launch options."""
    out = {}
    for name, (sig, const) in _specs(H, K, DV).items():
        fn = getattr(kk, name)
        signature = {**sig, **{c: "constexpr" for c in const}}
        src = ASTSource(fn=fn, signature=signature, constexprs={(fn.arg_names.index(c),): v for c, v in const.items()})
        opts = {"num_warps": 4, "num_stages": 3, **LAUNCH[name]}
        out[name] = int(triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts).metadata.shared)
    return out


if __name__ == "__main__":
    print(json.dumps(shared_memory()))
