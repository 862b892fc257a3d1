"""Fill Triton's compile cache (TRITON_CACHE_DIR) with fla-core's and mixlab's kernels at the shapes the GPU benches
use, with the benches' one-autotune-config cap, so that bench_kda_gpu / bench_step / bench_loss_agreement find them
compiled. fla's first use compiles for ~200 s; run_gpu_wave.sh runs this first (WARM_S) and carries the cache to the
next call. Not in the background of timed runs: its compiles and GPU work (B=1, T=2048) disturbed them in wave 5.
    python3 -P bench/fla_warm.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_step import _limit_autotune  # noqa: E402  (same cap, same cache entries as every bench)


def main() -> None:
    _limit_autotune(1)  # before fla is imported
    from fla.ops.kda import chunk_kda as fla_chunk_kda

    from mixlab.kernels import set_backend, set_fused
    from mixlab.model import load_model

    t0 = time.time()
    # bench_kda_gpu --issue: H=32, K=V=128, bf16 q/k/v/β, fp32 g, in-kernel q/k L2 norm
    H, K, T = 32, 128, 2048
    q, k, v = (torch.randn(1, T, H, K, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = (-torch.rand(1, T, H, K, device="cuda") * 0.2 - 0.01).requires_grad_(True)
    beta = torch.rand(1, T, H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    fla_chunk_kda(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)[0].sum().backward()
    torch.cuda.synchronize()
    print(f"fla chunk_kda H=32 fwd+bwd compiled: {time.time() - t0:.0f} s", flush=True)
    # bench_step / bench_loss_agreement: the 1b-a150m model, fla KDA, peer (unfused) and fast (fused) paths. fla is
    # asked for by name: since wave 12 "auto" takes mixlab's KDA (which compiles in seconds, no warming needed).
    os.environ["MIXLAB_KDA_BACKEND"] = "fla"
    model = load_model("1b-a150m", dtype=torch.bfloat16, device="cuda", seed=0).train()
    ids = torch.randint(0, model.config.vocab_size, (1, T), device="cuda")
    for fused in (False, True):
        set_backend("auto")
        set_fused(fused)
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        print(f"1b-a150m fwd+bwd (fused={fused}) compiled: {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
