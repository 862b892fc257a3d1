"""Turn weights into rows: per phase, per leaf, how many rows (and which) realise the budget.

Weights are relative among siblings; a leaf's share of a phase is the product of normalised weights on its path
(phase `weights` override them by component name). Targets are in the budget's unit (samples, tokens or
trainable tokens). Each leaf is a seeded stream of its rows, repeating in fresh permutations; a leaf may use at
most `max_epochs` × its rows (samples) or × its units (token budgets). A budget that does not fit fails, naming
every leaf's shortfall and the largest total that would fit; nothing is silently upsampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mixlab.errors import MixlabError
from mixlab.mixtures.schema import Component, MixtureSpec


@dataclass
class LeafPool:
    path: str
    units: np.ndarray  # per available row, in the budget unit (1 for samples)
    max_epochs: float
    seed: int


@dataclass
class Allocation:
    path: str
    phase: str
    target_share: float
    target_units: float
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # indices into the pool
    epochs_from: int = 0  # position in the leaf's stream where this phase starts


def leaf_shares(spec: MixtureSpec, overrides: dict[str, float] | None = None) -> dict[str, float]:
    """Leaf path -> share of the budget (sums to 1)."""
    overrides = overrides or {}
    out: dict[str, float] = {}

    def walk(components: list[Component], prefix: str, mass: float) -> None:
        weights = [overrides.get(c.name, c.weight) for c in components]
        total = sum(weights)
        for c, w in zip(components, weights):
            share = mass * (w / total if total > 0 else 0.0)
            path = f"{prefix}{c.name}"
            if c.is_leaf:
                out[path] = share
            else:
                walk(c.components or [], path + "/", share)

    walk(spec.components, "", 1.0)
    if sum(out.values()) <= 0:
        raise MixlabError("all component weights are zero in this phase")
    return out


def leaf_max_epochs(spec: MixtureSpec) -> dict[str, float]:
    out: dict[str, float] = {}

    def walk(components: list[Component], prefix: str, inherited: float) -> None:
        for c in components:
            cap = c.max_epochs if c.max_epochs is not None else inherited
            path = f"{prefix}{c.name}"
            if c.is_leaf:
                out[path] = cap
            else:
                walk(c.components or [], path + "/", cap)

    walk(spec.components, "", spec.max_epochs)
    return out


def phases(spec: MixtureSpec) -> list[tuple[str, float, dict[str, float]]]:
    """(name, share of budget, leaf shares) per phase; one implicit phase `main` without `phases:`."""
    if not spec.phases:
        return [("main", 1.0, leaf_shares(spec))]
    total = sum(p.share for p in spec.phases)
    return [(p.name, p.share / total, leaf_shares(spec, p.weights)) for p in spec.phases]


def _largest_remainder(values: dict[str, float], total: int) -> dict[str, int]:
    floors = {k: math.floor(v) for k, v in values.items()}
    left = total - sum(floors.values())
    order = sorted(values, key=lambda k: (-(values[k] - floors[k]), k))
    for k in order[: max(left, 0)]:
        floors[k] += 1
    return floors


def plan_targets(spec: MixtureSpec) -> list[tuple[str, float, dict[str, float]]]:
    """(phase, phase share, {leaf: target units}); sample budgets are integers that sum to the total.
    The unrounded share of each (phase, leaf) is `phase share × leaf share` (see `phases`)."""
    out = []
    phase_list = phases(spec)
    total = spec.budget.total
    if spec.budget.unit == "samples":
        phase_totals = _largest_remainder({p: s * total for p, s, _ in phase_list}, total)
    else:
        phase_totals = {p: s * total for p, s, _ in phase_list}
    for name, share, leaves in phase_list:
        t = phase_totals[name]
        if spec.budget.unit == "samples":
            targets = {k: float(v) for k, v in _largest_remainder({k: s * t for k, s in leaves.items()}, int(t)).items()}
        else:
            targets = {k: s * t for k, s in leaves.items()}
        out.append((name, share, targets))
    return out


def _stream(n: int, start: int, count: int, seed: int) -> np.ndarray:
    """Positions start..start+count of a leaf's row stream: permutation 0, then permutation 1, ..."""
    if count <= 0:
        return np.zeros(0, np.int64)
    out = []
    pos = start
    end = start + count
    while pos < end:
        epoch, offset = divmod(pos, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        take = min(n - offset, end - pos)
        out.append(perm[offset : offset + take])
        pos += take
    return np.concatenate(out)


def allocate(spec: MixtureSpec, pools: dict[str, LeafPool]) -> list[Allocation]:
    """Rows per (phase, leaf), or a MixlabError listing every leaf that cannot reach its target."""
    unit = spec.budget.unit
    targets = plan_targets(spec)
    # Each leaf's stream position advances across phases, so phases do not repeat rows while the pool lasts.
    position: dict[str, int] = {path: 0 for path in pools}
    allocations: list[Allocation] = []
    shortfalls: list[str] = []
    used_units: dict[str, float] = {path: 0.0 for path in pools}
    shares = {name: (share, leaves) for name, share, leaves in phases(spec)}
    for phase, _, leaf_targets in targets:
        phase_share, leaf_share = shares[phase]
        for path, target in leaf_targets.items():
            pool = pools[path]
            alloc = Allocation(path, phase, phase_share * leaf_share[path], target)
            n = len(pool.units)
            if target <= 0:
                allocations.append(alloc)
                continue
            if n == 0 or pool.units.sum() <= 0:
                shortfalls.append(f"{path} has no rows left after filters/dedup/decontamination but needs {target:g} {unit}")
                allocations.append(alloc)
                continue
            if unit == "samples":
                count = int(target)
            else:
                # Walk the stream until the cumulative units reach the target.
                count, got, chunk = 0, 0.0, max(64, int(target / max(pool.units.mean(), 1e-9) * 1.1) + 1)
                while got < target:
                    idx = _stream(n, position[path] + count, chunk, pool.seed)
                    cum = got + np.cumsum(pool.units[idx])
                    reach = int(np.searchsorted(cum, target))  # first index with cum >= target
                    if reach < len(idx):
                        count += reach + 1
                        got = float(cum[reach])
                        break
                    count += len(idx)
                    got = float(cum[-1])
                    if count > n * (pool.max_epochs + 1) + 1:
                        break
            alloc.rows = _stream(n, position[path], count, pool.seed)
            alloc.epochs_from = position[path]
            position[path] += count
            used_units[path] += float(pool.units[alloc.rows].sum())
            allocations.append(alloc)
    for path, pool in pools.items():
        n = len(pool.units)
        if n == 0:
            continue
        epochs = position[path] / n if unit == "samples" else used_units[path] / float(pool.units.sum())
        if epochs > pool.max_epochs + 1e-9:
            shortfalls.append(f"{path} needs {epochs:.2f} epochs of its {n} rows (max_epochs {pool.max_epochs:g})")
    if shortfalls:
        fit = max_total(spec, pools)
        raise MixlabError(
            f"budget {spec.budget.total} {unit} is impossible under the caps: " + "; ".join(shortfalls)
            + f". Raise max_epochs, change weights, or lower budget.total to at most {fit}"
        )
    return allocations


def max_total(spec: MixtureSpec, pools: dict[str, LeafPool]) -> int:
    """The largest budget total every leaf can serve within its cap (ignoring rounding)."""
    best = math.inf
    shares: dict[str, float] = {}
    for _, phase_share, leaves in phases(spec):
        for path, s in leaves.items():
            shares[path] = shares.get(path, 0.0) + phase_share * s
    for path, share in shares.items():
        if share <= 0:
            continue
        pool = pools[path]
        capacity = pool.max_epochs * (len(pool.units) if spec.budget.unit == "samples" else float(pool.units.sum()))
        best = min(best, capacity / share)
    return int(math.floor(best)) if best != math.inf else 0
