"""The one state-dict adapter between mixlab's in-memory layout and the official Kimi-Linear checkpoint format.

In memory, the routed experts of MoE layer i are stacked for grouped compute:

    model.layers.{i}.block_sparse_moe.experts.w1   [E, I, D]   (gate proj of every expert)
    model.layers.{i}.block_sparse_moe.experts.w3   [E, I, D]   (up proj)
    model.layers.{i}.block_sparse_moe.experts.w2   [E, D, I]   (down proj)

On disk (HF remote code, vLLM's loader) every expert is separate, nn.Linear layout [out, in]:

    model.layers.{i}.block_sparse_moe.experts.{e}.w1.weight   [I, D]
    model.layers.{i}.block_sparse_moe.experts.{e}.w3.weight   [I, D]
    model.layers.{i}.block_sparse_moe.experts.{e}.w2.weight   [D, I]

Every other tensor has the same name and shape in both (A_log [1,1,H,1], dt_bias [H*K], convs [P,1,W], ...).
`to_official` returns views (no copy); `from_official` stacks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from mixlab.errors import MixlabError

STACKED_RE = re.compile(r"^(?P<prefix>(?:.*\.)?block_sparse_moe\.experts)\.(?P<w>w[123])$")
OFFICIAL_RE = re.compile(r"^(?P<prefix>(?:.*\.)?block_sparse_moe\.experts)\.(?P<e>\d+)\.(?P<w>w[123])\.weight$")


def is_official(state_dict: Mapping[str, object], config=None) -> bool:
    """True when the experts are stored per expert (the checkpoint format)."""
    has_stacked = any(STACKED_RE.match(k) for k in state_dict)
    has_official = any(OFFICIAL_RE.match(k) for k in state_dict)
    return has_official and not has_stacked


def official_name(stacked_name: str, expert: int) -> str:
    m = STACKED_RE.match(stacked_name)
    return f"{m['prefix']}.{expert}.{m['w']}.weight"


def to_official(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """In-memory (stacked) → official names and shapes. Expert tensors are views into the stacked ones."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state_dict.items():
        m = STACKED_RE.match(name)
        if m is None:
            out[name] = t
            continue
        for e in range(t.shape[0]):
            out[f"{m['prefix']}.{e}.{m['w']}.weight"] = t[e]
    return out


def official_shapes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Official name → shape, for an in-memory state dict (works on the meta device)."""
    out: dict[str, tuple[int, ...]] = {}
    for name, t in state_dict.items():
        m = STACKED_RE.match(name)
        if m is None:
            out[name] = tuple(t.shape)
        else:
            for e in range(t.shape[0]):
                out[f"{m['prefix']}.{e}.{m['w']}.weight"] = tuple(t.shape[1:])
    return out


def stacked_target(official: str) -> tuple[str, int] | None:
    """Official per-expert name → (stacked in-memory name, expert index); None for other tensors."""
    m = OFFICIAL_RE.match(official)
    if m is None:
        return None
    return f"{m['prefix']}.{m['w']}", int(m["e"])


def from_official(state_dict: Mapping[str, torch.Tensor], config=None) -> dict[str, torch.Tensor]:
    """Official names → in-memory layout (experts stacked). Raises if an expert of a stacked tensor is missing."""
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, dict[int, torch.Tensor]] = {}
    for name, t in state_dict.items():
        target = stacked_target(name)
        if target is None:
            out[name] = t
        else:
            groups.setdefault(target[0], {})[target[1]] = t
    for name, experts in groups.items():
        n = max(experts) + 1
        if config is not None and getattr(config, "num_experts", None):
            n = config.num_experts
        missing = [e for e in range(n) if e not in experts]
        if missing:
            raise MixlabError(f"checkpoint is missing experts {missing[:8]} of {name} (expected {n} experts)")
        out[name] = torch.stack([experts[e] for e in range(n)])
    return out


def diff_inventory(expected: Mapping[str, tuple[int, ...]], provided: Mapping[str, tuple[int, ...]],
                   where: str) -> None:
    """One-line MixlabError naming missing, unexpected and mis-shaped tensors (official names)."""
    missing = sorted(set(expected) - set(provided))
    unexpected = sorted(set(provided) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(provided) if tuple(expected[k]) != tuple(provided[k]))
    if not (missing or unexpected or misshaped):
        return

    def show(names, fmt=str, limit=5):
        shown = ", ".join(fmt(n) for n in names[:limit])
        return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {show(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {show(unexpected)}")
    if misshaped:
        parts.append(f"{len(misshaped)} mis-shaped: "
                     + show(misshaped, lambda k: f"{k} {list(provided[k])} != expected {list(expected[k])}"))
    raise MixlabError(f"{where}: checkpoint does not match the config; " + "; ".join(parts))
