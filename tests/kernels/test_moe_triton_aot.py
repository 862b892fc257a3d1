"""Compile every MoE Triton kernel for Hopper (sm_90) on CPU, at the 1b-a150m and official shapes' launch options,
and check each block's shared memory against the device limit (what fails at the first launch on a GPU otherwise).
Run as a child without TRITON_INTERPRET (the interpreter replaces the kernels); `python -P <this file>` prints
{kernel: {shared, registers, spill_bytes}} from ptxas."""

from __future__ import annotations

import json
import os
import sys

import pytest

from mixlab import procs
from mixlab.kernels.dispatch import triton_available

if not triton_available():
    pytest.skip("triton not installed", allow_module_level=True)

from mixlab.kernels import moe_triton as mt  # noqa: E402
from mixlab.kernels.kda_triton_aot import SM90_SHARED_LIMIT, compile_kernel, resources  # noqa: E402

BF, F32, I64, I32, P32 = "*bf16", "*fp32", "*i64", "i32", "*i32"


def _specs():
    """(kernel name, signature, constexprs, launch options) as moe_triton.py launches them."""
    out = []
    for e_p in (64, 256):  # 48 and 256 experts
        out += [
            ("_route_hist", dict(IDX=I64, HIST=P32, M=I32, E=I32), dict(E_P=e_p, BLOCK=256 if e_p == 64 else 1024,
                                                                          CHUNK=max(16, min(64, 4096 // e_p))), {}),
            ("_route_place", dict(IDX=I64, W=F32, HIST=P32, OFFS=P32, ORDER=I64, INV=I64, TOKEN=I64, WS=F32, M=I32,
                                  KTOP=I32, NB=I32, E=I32),
             dict(E_P=e_p, BLOCK=256 if e_p == 64 else 1024, CHUNK=max(16, min(64, 4096 // e_p)),
                  NB_CHUNK=max(2, min(16, 4096 // e_p))), {}),
        ]
    out += [
        ("_swiglu_w_fwd", dict(H1=BF, H3=BF, W=F32, A=BF, M=I32, I=I32, s_h1=I32, s_h3=I32, s_a=I32),
         dict(BLOCK_R=8, BLOCK_I=256), {}),
        ("_swiglu_w_bwd", dict(H1=BF, H3=BF, W=F32, DA=BF, DH1=BF, DH3=BF, DW=F32, ORDER=I64, M=I32, I=I32,
                               s_h1=I32, s_h3=I32, s_da=I32, s_dh1=I32, s_dh3=I32), dict(BLOCK_R=4, BLOCK_I=256), {}),
        ("_gather_sum", dict(S1=BF, S2=BF, INV=I64, OUT=BF, N=I32, D=I32),
         dict(KTOP=8, TWO=True, BLOCK_R=2, BLOCK_D=256), {}),
    ]
    return out


def report(arch: int = 90) -> dict:
    res = {}
    for name, sig, const, launch in _specs():
        key = f"{name}[E_P={const['E_P']}]" if "E_P" in const else name
        res[key] = resources(compile_kernel(getattr(mt, name), sig, const, arch, launch), arch)
    return res


def test_moe_kernels_compile_for_hopper_within_shared_memory():  # ~11-15 s on 2 CPU cores
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = procs.run([__file__], env_base=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rep = json.loads(res.stdout.strip().splitlines()[-1])
    print(json.dumps(rep, indent=1))
    assert len(rep) == 7
    assert max(r["shared"] for r in rep.values()) <= SM90_SHARED_LIMIT, rep
    assert all(not r["spill_bytes"] for r in rep.values()), rep  # memory-bound glue: spills would cost bandwidth


if __name__ == "__main__":
    print(json.dumps(report(int(sys.argv[1]) if len(sys.argv) > 1 else 90)))
