"""GPU check (run by the lead on a GPU box): 1b-a150m forward + backward in bf16 on CUDA."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.gpu
def test_1b_a150m_forward_backward_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from mixlab.model import load_model

    model = load_model("1b-a150m", dtype=torch.bfloat16, device="cuda", seed=0).train()
    model.gradient_checkpointing_enable()
    ids = torch.randint(0, model.config.vocab_size - 8, (2, 512), device="cuda")
    pos = torch.cat([torch.arange(300), torch.arange(212)]).to("cuda")[None].expand(2, -1)  # 2 docs per row
    out = model(ids, position_ids=pos, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
    assert model.model.layers[0].self_attn.A_log.dtype == torch.float32
    print(f"{torch.cuda.get_device_name()}: loss {out.loss.item():.4f}, "
          f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
