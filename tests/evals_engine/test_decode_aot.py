"""The engine's decode kernels compile for the H100/H200 (sm_90) at the 1b-a150m shapes, on CPU, with the launch
options the wrappers use, and fit the per-block shared memory (a kernel over it fails at its first GPU launch).

Triton's compiler and ptxas run here without a GPU (the approach of kernels/kda_triton_aot.py); the compile needs a
process without TRITON_INTERPRET, so it runs in a child process. Slow: ~1 minute.
"""

from __future__ import annotations

import json
import os

import pytest

from mixlab import procs
from mixlab.kernels.dispatch import triton_available

CHILD = r'''
import json
from mixlab.kernels import decode_moe_triton as dm, kda_decode_triton as kd, mla_decode_triton as md
from mixlab.kernels.kda_triton_aot import compile_kernel

P, I64, F = "*fp32", "*i64", "fp32"
out = {}

def comp(name, fn, sig, const, opts):
    # Every integer argument hinted as a multiple of 16, as the JIT specialises most of them at these shapes: only
    # then does the pipeliner stage tiles in shared memory as on the GPU (without, it stages none: an undercount).
    aligned = tuple(a for a, t in sig.items() if t == "i32")
    out[name] = int(compile_kernel(fn, sig, const, 90, opts, aligned).metadata.shared)

for dt in ("*bf16", "*fp32"):
    lowp = dt == "*bf16"
    for lr in (False, True):
        comp(f"kda_decode {dt} lowrank={lr}", kd._kda_decode_kernel, dict(
            XQ=dt, XK=dt, XV=dt, sx="i32", CONV=dt, WQ=dt, WK=dt, WV=dt, F=dt, sf="i32", A_LOG=P, DT=P, BL=dt,
            sbl="i32", STATE=P, SLOTS=I64, GATE=dt, sg="i32", NW=dt, OUT=dt, WFB=dt, WGB=dt, KA="i32", eps=F,
            scale=F), dict(H=8, K=128, V=128, W=4, BK=128, BV=128, BW=4, LOWRANK=lr, BR=32),
            dict(num_warps=8, num_stages=1))
    comp(f"proj {dt}", kd._proj_kernel, dict(X=dt, sx="i32", W0=dt, W1=dt, W2=dt, W3=dt, W4=dt, W5=dt, OUT=dt,
         so="i32", B="i32", D="i32", N0="i32", N1="i32", N2="i32", N3="i32", N4="i32", N5="i32"),
         dict(BM=64, BN=32, BKD=64, LOWP=lowp), dict(num_warps=4))
    for ns in (1, 66):
        comp(f"mla_split {dt} nsplit={ns}", md._split_kernel, dict(
            QL=dt, QR=dt, KVN=dt, KRN=dt, POOL=dt, TABLE=I64, POS=I64, MS=P, LS=P, ACC=P, OUT=dt, sqlb="i32",
            sqlh="i32", sqrb="i32", sqrh="i32", skv="i32", skr="i32", stb="i32", H="i32", split_tokens="i32",
            scale=F), dict(RANK=256, ROPE=64, BR=256, BP=64, BH=16, BS=16, BN=md.BLOCK_N, NSPLIT=ns, LOWP=lowp),
            dict(num_warps=4, num_stages=2))
    tiles = {n: {key: v for key, v in c.items() if key in ("BI", "BD")} for n, c in dm.EXPERT_LAUNCH.items()}
    opts = {n: {key: v for key, v in c.items() if key not in ("BI", "BD")} for n, c in dm.EXPERT_LAUNCH.items()}
    comp(f"moe_up {dt}", dm._up_kernel, dict(X=dt, sx="i32", W1=dt, W3=dt, LISTS="*i32", COUNTS="*i32", H=dt,
         WS1=dt, WS3=dt, HS=dt, N="i32", NK="i32", E="i32", D="i32", I="i32", IS="i32"),
         dict(K=3, BT_=dm.BT, LOWP=lowp, **tiles["up"]), opts["up"])
    comp(f"moe_down {dt}", dm._down_kernel, dict(H=dt, W2=dt, LISTS="*i32", COUNTS="*i32", Y=dt, HS=dt, WS2=dt,
         YS=dt, N="i32", NK="i32", E="i32", D="i32", I="i32", IS="i32"), dict(BT_=dm.BT, LOWP=lowp, **tiles["down"]),
         opts["down"])
    comp(f"moe_route {dt}", dm._route_kernel, dict(X=dt, sx="i32", WG=dt, BIAS=P, IDX=I64, WEIGHT=P, E="i32",
         D="i32", scaling=F), dict(K=3, BE=64, BK=4, BD=64, HAS_BIAS=True, SOFTMAX=False, RENORM=True,
         USE_BIAS_W=False), dict(num_warps=4))
    comp(f"moe_combine {dt}", dm._combine_kernel, dict(Y=dt, WEIGHT=P, SHARED=dt, OUT=dt, D="i32"),
         dict(K=3, BD=1024, HAS_SHARED=True), dict(num_warps=4))
comp("mla_merge", md._merge_kernel, dict(MS=P, LS=P, ACC=P, OUT="*bf16", H="i32"),
     dict(RANK=256, BR=256, NSPLIT=66, BSPLIT=128), dict(num_warps=4))
comp("moe_lists", dm._lists_kernel, dict(IDX=I64, LISTS="*i32", COUNTS="*i32", NK="i32"), dict(BNK=256),
     dict(num_warps=4))
print(json.dumps(out))
'''


@pytest.mark.slow
@pytest.mark.skipif(not triton_available(), reason="needs triton")
def test_decode_kernels_compile_for_sm90():
    from mixlab.kernels.kda_triton_aot import SM90_SHARED_LIMIT  # imports triton: only once triton is known present

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = procs.run(["-c", CHILD], env_base=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shared = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(shared) == 20, shared
    over = {k: v for k, v in shared.items() if v > SM90_SHARED_LIMIT}
    assert not over, over
