"""Ahead-of-time compilation of the Triton KDA kernels for a GPU target, without a GPU.

Compiles each kernel of kda_triton_kernels.py with the launch options kda_triton uses (`launch_options`) for a
CUDA target (default sm_90, Hopper) through Triton's own compiler and ptxas, for bf16 and fp32 intermediates, and
reports the shared memory, registers and register spills of each. A kernel over the device's per-block shared
memory fails at its first launch on the GPU (OutOfResources); this finds that on CPU. Must run in a process
without TRITON_INTERPRET=1 (the interpreter replaces the kernels).

    python -P -m mixlab.kernels.kda_triton_aot   # prints {"kernel[dtype]": {shared, registers, spill_bytes}}
                                                 # at H=32, K=V=128 (JSON on stdout, a table on stderr)
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import kda_triton_kernels as kk
from .kda_triton import CHUNK, L2_ROWS, SCORES_BH, SCORES_OFF_BK, SOLVE_BD, SUB, _bv, _bv_out, launch_options

# Shared memory one block may use: H100 and H200 (sm_90), as the device reported it.
SM90_SHARED_LIMIT = 232448


def _specs(H: int, K: int, DV: int, dt: str = "*bf16"):
    """Signature and constants of every kernel as kda_triton.py launches it (dt: the intermediates' dtype)."""
    P, I, F = "*fp32", "*i32", "fp32"
    BV, BVO = _bv(DV), _bv_out(DV)
    return {
        "_cumsum_kernel": (dict(X=P, Y=P, cu=I, CI=I), dict(H=H, K=K, C=CHUNK, REVERSE=False)),
        "_scores_off_fwd_kernel": (dict(Q=dt, Kt=dt, G=P, AQK=P, AKK=P, cu=I, CI=I, scale=F),
                                   dict(H=H, K=K, C=CHUNK, BC=SUB, BK=min(SCORES_OFF_BK["fwd"], K))),
        "_scores_diag_fwd_kernel": (dict(Q=dt, Kt=dt, G=P, AQK=P, AKK=P, cu=I, CI=I, scale=F),
                                    dict(H=H, K=K, C=CHUNK, BC=SUB, BH=math.gcd(H, SCORES_BH))),
        "_scores_off_bwd_kernel": (dict(Q=dt, Kt=dt, G=P, DAQK=P, DAKK=P, DQ=P, DK=P, DG=P, cu=I, CI=I, scale=F),
                                   dict(H=H, K=K, C=CHUNK, BC=SUB, BK=min(SCORES_OFF_BK["bwd"], K))),
        "_scores_diag_bwd_kernel": (dict(Q=dt, Kt=dt, G=P, DAQK=P, DAKK=P, DQ=P, DK=P, DG=P, cu=I, CI=I, scale=F),
                                    dict(H=H, K=K, C=CHUNK, BC=SUB, BH=math.gcd(H, SCORES_BH))),
        "_solve_fwd_kernel": (dict(Q=dt, Kt=dt, V=dt, G=P, BETA=dt, AKK=P, TM=P, W=dt, U=dt, QG=dt, KD=dt, cu=I,
                                   CI=I, scale=F), dict(H=H, K=K, DV=DV, C=CHUNK, BC=SUB, BD=min(SOLVE_BD, K, DV))),
        "_state_fwd_kernel": (dict(KD=dt, G=P, W=dt, U=dt, VN=dt, S0=P, STARTS=dt, ST=P, cu=I, CO=I),
                              dict(H=H, K=K, DV=DV, C=CHUNK, BV=BV, HAS_S0=True, STORE_ST=True)),
        "_output_fwd_kernel": (dict(QG=dt, STARTS=dt, AQK=P, VN=dt, O=dt, cu=I, CI=I),
                               dict(H=H, K=K, DV=DV, C=CHUNK, BV=BVO)),
        "_dv0_bwd_kernel": (dict(AQK=P, VN=dt, DO=dt, DV0=dt, DAQK=P, cu=I, CI=I), dict(H=H, DV=DV, C=CHUNK, BV=BVO)),
        "_state_bwd_kernel": (dict(QG=dt, KD=dt, G=P, W=dt, DO=dt, DV0=dt, DU=dt, DST=P, DNEXT=dt, DS0=P, cu=I,
                                   CO=I), dict(H=H, K=K, DV=DV, C=CHUNK, BV=BV, HAS_DST=True)),
        "_intra_bwd_v_kernel": (dict(V=dt, BETA=dt, TM=P, U=dt, DU=dt, DV_=dt, DBETA=P, DIL=P, cu=I, CI=I),
                                dict(H=H, DV=DV, C=CHUNK, BV=BVO)),
        "_intra_bwd_kernel": (dict(Kt=dt, G=P, BETA=dt, AKK=P, TM=P, W=dt, QG=dt, VN=dt, STARTS=dt, DNEXT=dt, DO=dt,
                                   DU=dt, DQ=P, DK=P, DG=P, DBETA=P, DAKK=P, cu=I, CI=I),
                              dict(H=H, K=K, DV=DV, C=CHUNK, BV=BV)),
        "_l2norm_fwd_kernel": (dict(X=dt, Y=dt, R=P, n_rows="i32", eps=F), dict(D=K, BR=L2_ROWS)),
        "_l2norm_bwd_kernel": (dict(Y=dt, R=P, DY=P, DX=dt, n_rows="i32"), dict(D=K, BR=L2_ROWS)),
    }


def compile_kernel(fn, sig: dict, const: dict, arch: int = 90, launch: dict | None = None,
                   aligned: tuple[str, ...] = ()):
    """Compile Triton kernel `fn` for CUDA `arch` without a GPU: `sig` {arg: type}, `const` {arg: constexpr value},
    `launch` the launch options (num_warps, num_stages), `aligned` the integer arguments that are multiples of 16 at
    the shape of interest. Shared by every AOT check (KDA, MoE, decode kernels)."""
    signature = {**sig, **{c: "constexpr" for c in const}}
    # Pointers 16-byte aligned, and `aligned` integers divisible by 16, as the JIT specialises them at launch. Without
    # the hints Triton cannot vectorise loads of rows strided by those integers, and its pipeliner then issues no
    # async copies whatever num_stages: registers and shared memory would not be those of the GPU run.
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a, t in sig.items()
             if t.startswith("*") or a in aligned}
    src = ASTSource(fn=fn, signature=signature, constexprs={(fn.arg_names.index(c),): v for c, v in const.items()},
                    attrs=attrs)
    opts = {"num_warps": 4, "num_stages": 3, **(launch or {})}
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)


def resources(compiled, arch: int = 90) -> dict:
    """{shared, registers, spill_bytes} of a compiled kernel: shared memory from Triton, registers and spills from
    ptxas -v on its PTX (what limits occupancy and costs local-memory traffic; a GPU reports them only at load)."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        log = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name=sm_{arch}a", ptx, "-o", ptx + ".o"],
                             capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    return {"shared": int(compiled.metadata.shared), "registers": int(regs.group(1)) if regs else None,
            "spill_bytes": int(spills.group(1)) if spills else None}


DTYPES = {"bf16": ("*bf16", torch.bfloat16), "fp32": ("*fp32", torch.float32)}  # storage dtypes the GPU runs


def ptxas_report(H: int = 32, K: int = 128, DV: int = 128, arch: int = 90, launch: dict | None = None,
                 dtypes: tuple[str, ...] = ("bf16", "fp32")) -> dict:
    """{"kernel[dtype]": {shared, registers, spill_bytes}} (`resources`) for every kernel and intermediates' dtype,
    with the launch options kda_triton uses for it. `launch` overrides options per kernel name, to compare them
    without a GPU."""
    out = {}
    for dname in dtypes:
        dt, store = DTYPES[dname]
        for name, (sig, const) in _specs(H, K, DV, dt).items():
            opts = {**launch_options(name, store), **(launch or {}).get(name, {})}
            out[f"{name}[{dname}]"] = resources(compile_kernel(getattr(kk, name), sig, const, arch, opts), arch)
    return out


if __name__ == "__main__":
    report = ptxas_report()
    for name, r in report.items():
        print(f"{name:<28} {r}", file=sys.stderr)
    print(json.dumps(report))
