"""Ahead-of-time compilation of the Triton KDA kernels for a GPU target, without a GPU.

Compiles each kernel of kda_triton_kernels.py with the launch options of `kda_triton.LAUNCH` for a CUDA target
(default sm_90, Hopper) through Triton's own compiler and ptxas, and reports the shared memory each needs. A kernel
over the device's per-block limit fails at its first launch on the GPU (OutOfResources); this finds that on CPU.
Must run in a process without TRITON_INTERPRET=1 (the interpreter replaces the kernels).

    python -P -m mixlab.kernels.kda_triton_aot        # prints {kernel: shared bytes} at H=32, K=V=128
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import kda_triton_kernels as kk
from .kda_triton import CHUNK, L2_ROWS, LAUNCH, SUB, _bv, _bv_out

# Shared memory one block may use: H100 and H200 (sm_90), as the device reported it.
SM90_SHARED_LIMIT = 232448


def _specs(H: int, K: int, DV: int, dt: str = "*bf16"):
    """Signature and constants of every kernel as kda_triton.py launches it (dt: the intermediates' dtype)."""
    P, I, F = "*fp32", "*i32", "fp32"
    BV, BVO = _bv(DV), _bv_out(DV)
    return {
        "_cumsum_kernel": (dict(X=P, Y=P, cu=I, CI=I), dict(H=H, K=K, C=CHUNK, REVERSE=False)),
        "_scores_fwd_kernel": (dict(Q=dt, Kt=dt, G=P, AQK=P, AKK=P, cu=I, CI=I, scale=F),
                               dict(H=H, K=K, C=CHUNK, BC=SUB)),
        "_solve_fwd_kernel": (dict(Q=dt, Kt=dt, V=dt, G=P, BETA=dt, AKK=P, TM=P, W=dt, U=dt, QG=dt, KD=dt, cu=I,
                                   CI=I, scale=F), dict(H=H, K=K, DV=DV, C=CHUNK, BC=SUB)),
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
        "_scores_bwd_kernel": (dict(Q=dt, Kt=dt, G=P, DAQK=P, DAKK=P, DQ=P, DK=P, DG=P, cu=I, CI=I, scale=F),
                               dict(H=H, K=K, C=CHUNK, BC=SUB)),
        "_l2norm_fwd_kernel": (dict(X=dt, Y=P, R=P, n_rows="i32", eps=F), dict(D=K, BR=L2_ROWS)),
        "_l2norm_bwd_kernel": (dict(Y=P, R=P, DY=P, DX=dt, n_rows="i32"), dict(D=K, BR=L2_ROWS)),
    }


def _compile(name: str, sig: dict, const: dict, arch: int, launch: dict):
    fn = getattr(kk, name)
    signature = {**sig, **{c: "constexpr" for c in const}}
    # Pointers 16-byte aligned, as the JIT specialises them for torch's allocations (without this hint Triton
    # cannot vectorise loads and the register counts are not those of the GPU run).
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a, t in sig.items() if t.startswith("*")}
    src = ASTSource(fn=fn, signature=signature, constexprs={(fn.arg_names.index(c),): v for c, v in const.items()},
                    attrs=attrs)
    opts = {"num_warps": 4, "num_stages": 3, **launch}
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)


def shared_memory(H: int = 32, K: int = 128, DV: int = 128, arch: int = 90) -> dict[str, int]:
    """{kernel name: shared memory bytes per block} when compiled for CUDA `arch` with mixlab's launch options."""
    return {name: int(_compile(name, sig, const, arch, LAUNCH[name]).metadata.shared)
            for name, (sig, const) in _specs(H, K, DV).items()}


def ptxas_report(H: int = 32, K: int = 128, DV: int = 128, arch: int = 90, launch: dict | None = None) -> dict:
    """{kernel: {shared, registers, spill_bytes}}: ptxas -v on each kernel's PTX (registers and spills are what
    limit occupancy and cost local-memory traffic; the GPU reports them only at load time). `launch` overrides
    LAUNCH per kernel name, to compare options without a GPU."""
    from triton.backends.nvidia.compiler import get_ptxas

    out = {}
    for name, (sig, const) in _specs(H, K, DV).items():
        compiled = _compile(name, sig, const, arch, {**LAUNCH[name], **(launch or {}).get(name, {})})
        with tempfile.TemporaryDirectory() as tmp:
            ptx = os.path.join(tmp, "k.ptx")
            with open(ptx, "w") as f:
                f.write(compiled.asm["ptx"])
            log = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name=sm_{arch}a", ptx, "-o", ptx + ".o"],
                                 capture_output=True, text=True, check=True).stderr
        regs = re.search(r"Used (\d+) registers", log)
        spills = re.search(r"(\d+) bytes spill stores", log)
        out[name] = {"shared": int(compiled.metadata.shared), "registers": int(regs.group(1)) if regs else None,
                     "spill_bytes": int(spills.group(1)) if spills else None}
    return out


if __name__ == "__main__":
    if "--ptxas" in sys.argv:
        for name, r in ptxas_report().items():
            print(f"{name:<22} {r}", file=sys.stderr)
    print(json.dumps(shared_memory()))
