"""The mixture YAML schema (pydantic v2). Every field is documented in the README; `parse_mixture` turns
validation errors into one-line `MixlabError`s naming file, line and field, with the closest valid name for
typos."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mixlab.errors import MixlabError
from mixlab.validation import dotted, first_error
from mixlab.yamlio import Where, did_you_mean

Kind = Literal["sft", "preference", "rl"]
WeightUnit = Literal["samples", "tokens", "trainable_tokens"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def _checked_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{what} name {name!r} must match {_NAME.pattern}")
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Budget(_Strict):
    """How much data the mixture holds: `total` units of `unit`, split between components by weight."""

    unit: WeightUnit = "samples"
    total: int = Field(gt=0)


class SourceSpec(_Strict):
    """Where a leaf's rows come from: exactly one of `local`, `hub`, `procedural`."""

    local: str | None = None  # file or glob, relative to the data root (or absolute)
    format: Literal["jsonl", "json", "parquet"] | None = None  # default: from the file extension
    hub: str | None = None  # Hugging Face dataset name
    config: str | None = None
    split: str | None = None  # hub split (default train) or procedural split (train | heldout)
    revision: str | None = None  # hub commit; resolved and pinned in mixture.lock when omitted (online only)
    procedural: Literal["math", "code", "chat"] | None = None
    level: int | None = None  # procedural difficulty; None mixes all levels
    n: int | None = Field(None, gt=0)  # procedural rows; default: as many as the budget asks for
    seed: int | None = None  # procedural seed; default: the mixture seed
    adapter: str | dict[str, Any] | None = None  # name, or {name: ..., options...}
    limit: int | None = Field(None, gt=0)  # keep only the first `limit` rows of the source

    @model_validator(mode="after")
    def _one_origin(self) -> "SourceSpec":
        origins = [k for k in ("local", "hub", "procedural") if getattr(self, k) is not None]
        if len(origins) != 1:
            raise ValueError(f"a source needs exactly one of local, hub, procedural (got {origins or 'none'})")
        misplaced = {
            "format": "local", "config": "hub", "revision": "hub", "level": "procedural", "n": "procedural",
            "seed": "procedural",
        }
        for field, owner in misplaced.items():
            if getattr(self, field) is not None and origins[0] != owner:
                raise ValueError(f"`{field}` applies to {owner} sources only")
        if self.procedural and self.split not in (None, "train", "heldout"):
            raise ValueError(f"procedural split must be train or heldout, got {self.split!r}")
        if self.split is not None and self.local is not None:
            raise ValueError("`split` applies to hub and procedural sources only")
        return self

    @property
    def origin(self) -> str:
        return "local" if self.local is not None else "hub" if self.hub is not None else "procedural"


class Component(_Strict):
    """A leaf (with `source`) or a group (with `components`); weights are relative among siblings."""

    name: str
    weight: float = Field(1.0, ge=0)
    max_epochs: float | None = Field(None, gt=0)  # cap on reuse of this leaf's rows (groups pass it down)
    source: SourceSpec | None = None
    components: list["Component"] | None = None
    filters: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _checked_name(v, "component")

    @model_validator(mode="after")
    def _leaf_or_group(self) -> "Component":
        if (self.source is None) == (self.components is None):
            raise ValueError(f"component {self.name!r} needs exactly one of `source` (a leaf) or `components` (a group)")
        if self.components is not None:
            if not self.components:
                raise ValueError(f"group {self.name!r} has no components")
            if sum(c.weight for c in self.components) <= 0:
                raise ValueError(f"group {self.name!r}: the weights of {[c.name for c in self.components]} are all zero")
        return self

    @property
    def is_leaf(self) -> bool:
        return self.source is not None


class Phase(_Strict):
    """A curriculum phase: its share of the budget and weight overrides by component name."""

    name: str
    share: float = Field(gt=0)
    weights: dict[str, float] = Field(default_factory=dict)

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: w for k, w in v.items() if w < 0}
        if bad:
            raise ValueError(f"weights must be >= 0, got {bad}")
        return v


class NearDedup(_Strict):
    threshold: float = Field(0.85, gt=0, le=1)  # estimated Jaccard similarity of word shingles
    num_perm: int = Field(128, ge=16, le=1024)
    shingle: int = Field(5, ge=1)  # words per shingle


class DedupSpec(_Strict):
    exact: bool = True
    near: NearDedup | None = Field(default_factory=NearDedup)
    scope: Literal["global", "source"] = "global"  # across sources, or within each source only

    @field_validator("near", mode="before")
    @classmethod
    def _bool_near(cls, v: Any) -> Any:
        if v is True:
            return {}
        if v is False:
            return None
        return v


class DecontamSpec(_Strict):
    enabled: bool = True
    n: int = Field(13, ge=3)  # word n-gram length
    tasks: Literal["all"] | list[str] = "all"  # registered eval tasks to check against
    exclude: list[str] = Field(default_factory=list)
    fields: list[Literal["prompt", "response"]] = Field(default_factory=lambda: ["prompt", "response"])
    min_short_tokens: int = Field(5, ge=1)  # eval texts shorter than n but this long are matched whole
    fuzzy: bool = True  # also drop near copies: word-3-gram Jaccard >= 0.4 with an eval text (decontam.py)
    max_flagged_fraction: float | None = Field(None, ge=0, le=1)  # fail the build above this share


class MixtureSpec(_Strict):
    name: str
    description: str = ""
    family: str | None = None
    kind: Kind = "sft"
    extends: str | None = None
    seed: int = 0
    tokenizer: str = "mixlab-bpe"
    chat_template: str | None = None  # None: the tokenizer's own; else a .jinja path or inline template
    budget: Budget
    max_epochs: float = Field(1.0, gt=0)  # default cap for every leaf
    components: list[Component] = Field(min_length=1)
    phases: list[Phase] | None = None
    filters: list[dict[str, Any]] = Field(default_factory=list)  # applied to every source
    dedup: DedupSpec = Field(default_factory=DedupSpec)
    decontamination: DecontamSpec = Field(default_factory=DecontamSpec)
    plugins: list[str] = Field(default_factory=list)  # modules imported first (custom filters/adapters)
    shard_rows: int = Field(50_000, gt=0)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _checked_name(v, "mixture")

    @model_validator(mode="after")
    def _tree(self) -> "MixtureSpec":
        if sum(c.weight for c in self.components) <= 0:
            raise ValueError(f"the weights of {[c.name for c in self.components]} are all zero")
        names = [c.name for c, _ in iter_components(self.components)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"component names must be unique, repeated: {dupes}")
        if self.phases is not None:
            phase_names = [p.name for p in self.phases]
            if len(set(phase_names)) != len(phase_names):
                raise ValueError(f"phase names must be unique: {phase_names}")
            for phase in self.phases:
                for key in phase.weights:
                    if key not in names:
                        raise ValueError(f"phase {phase.name!r}: unknown component {key!r}{did_you_mean(key, names)}")
        return self

    def leaves(self) -> list[tuple[Component, str]]:
        return [(c, path) for c, path in iter_components(self.components) if c.is_leaf]


def iter_components(components: list[Component], prefix: str = ""):
    for c in components:
        path = f"{prefix}{c.name}"
        yield c, path
        if c.components:
            yield from iter_components(c.components, path + "/")


# ---------------------------------------------------------------------------------------------------------------
# Validation errors → one line with file:line and the closest valid name


def parse_mixture(data: Any, where: Where) -> MixtureSpec:
    if not isinstance(data, dict):
        raise MixlabError(f"{where.prefix(())}: a mixture file must be a mapping with name, budget and components")
    try:
        spec = MixtureSpec.model_validate(data)
    except ValidationError as exc:
        err = first_error(exc, MixtureSpec)
        field = f" {dotted(err.loc)}:" if err.loc else ""
        raise MixlabError(f"{where.prefix(err.loc)}:{field} {err.message}") from None
    return spec
