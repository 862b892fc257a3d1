"""torch.compile over the model does not recompile per layer index: the expert-load bookkeeping is one in-place add
per forward (model._record_load), not per-layer Python state that dynamo specialises on (issue 11 measured the old
form hitting the recompile limit). A layer's code is specialised once per layer kind (KDA or MLA, MoE or dense), so
the recompile limit is set to the number of kinds and a hit fails. Checked with dynamo's "eager" backend (tracing and
guards only, no codegen), which is where recompiles come from; on CPU the reference kernels' data-dependent ops
break the graph, which is allowed."""

from __future__ import annotations

import torch
import torch._dynamo

from mixlab.kernels.dispatch import fused_enabled, get_backend
from mixlab.model import load_model


def test_compiled_layers_and_model_do_not_recompile():
    torch._dynamo.reset()
    model = load_model("tiny", dtype=torch.float32, seed=0).train()
    for layer in model.model.layers:  # one code object for every layer: a layer-index guard would recompile
        layer.forward = torch.compile(layer.forward, backend="eager")
    model.model.forward = torch.compile(model.model.forward, backend="eager")
    ids = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    get_backend(), fused_enabled()  # the dispatcher reads its settings lazily once: a one-time guard change
    try:
        kinds = {(layer.is_kda, layer.is_moe) for layer in model.model.layers}
        assert len(kinds) < len(model.model.layers)  # else the check below could not tell kinds from indices
        with torch._dynamo.config.patch(recompile_limit=len(kinds), fail_on_recompile_limit_hit=True):
            model(input_ids=ids, labels=ids)  # every layer once: kinds, not indices, may differ
    finally:
        torch._dynamo.reset()
    assert model.expert_load()  # the counters were recorded through the compiled forward
