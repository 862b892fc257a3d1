"""Row filters, registered by name. A filter sees a `RowView` and returns True to keep the row.

Built-ins: length (characters or tokens), regex, language (langdetect), repetition (repeated word n-grams).
Custom filters: `@register_filter("name", Params)` in a module listed under the mixture's `plugins:`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mixlab.errors import MixlabError
from mixlab.validation import dotted, first_error
from mixlab.yamlio import did_you_mean

Part = Literal["all", "prompt", "response"]


@dataclass
class RowView:
    row: dict[str, Any]
    kind: str
    n_tokens: int
    n_trainable_tokens: int

    @cached_property
    def prompt(self) -> str:
        return "\n".join(prompt_texts(self.row, self.kind))

    @cached_property
    def response(self) -> str:
        return "\n".join(response_texts(self.row, self.kind))

    def text(self, part: str = "all") -> str:
        if part == "prompt":
            return self.prompt
        if part == "response":
            return self.response
        return self.prompt + "\n" + self.response


def prompt_texts(row: dict[str, Any], kind: str) -> list[str]:
    if kind == "sft":
        return [m["content"] for m in row["messages"] if m["role"] != "assistant"]
    return [m["content"] for m in row["prompt"]]


def response_texts(row: dict[str, Any], kind: str) -> list[str]:
    if kind == "sft":
        return [m["content"] for m in row["messages"] if m["role"] == "assistant"]
    if kind == "preference":
        return [m["content"] for m in row["chosen"] + row["rejected"]]
    return [row["ground_truth"]]


class FilterParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


@dataclass
class FilterDef:
    name: str
    params: type[FilterParams]
    fn: Callable[[RowView, Any], bool]


_FILTERS: dict[str, FilterDef] = {}


def register_filter(name: str, params: type[FilterParams] = FilterParams):
    """Decorator: `fn(view: RowView, params) -> bool` (True keeps the row)."""

    def deco(fn):
        _FILTERS[name] = FilterDef(name, params, fn)
        return fn

    return deco


def filter_names() -> list[str]:
    return sorted(_FILTERS)


@dataclass
class BoundFilter:
    label: str  # name, plus the index when a filter appears twice
    definition: FilterDef
    params: Any

    def keep(self, view: RowView) -> bool:
        return bool(self.definition.fn(view, self.params))


def bind(raw: dict[str, Any]) -> tuple[FilterDef, Any]:
    """Validate one `filters:` entry; errors are plain messages (the caller adds file:line: field)."""
    name = raw.get("name") if isinstance(raw, dict) else None
    if not isinstance(name, str):
        raise MixlabError("filter entries need `name`")
    if name not in _FILTERS:
        raise MixlabError(f"unknown filter {name!r}{did_you_mean(name, _FILTERS)}; known: {filter_names()}")
    definition = _FILTERS[name]
    try:
        return definition, definition.params.model_validate(raw)
    except ValidationError as exc:
        err = first_error(exc, definition.params, unknown="parameter")
        msg = err.message if err.type == "extra_forbidden" else f"{dotted(err.loc)}: {err.message}"
        raise MixlabError(f"filter {name}: {msg}") from None


# ---------------------------------------------------------------------------------------------------------------
# Built-ins


class LengthParams(FilterParams):
    part: Part = "all"
    min_chars: int | None = Field(None, ge=0)
    max_chars: int | None = Field(None, ge=1)
    min_tokens: int | None = Field(None, ge=0)  # templated tokens of the whole row
    max_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _some_bound(self) -> "LengthParams":
        if all(v is None for v in (self.min_chars, self.max_chars, self.min_tokens, self.max_tokens)):
            raise ValueError("give at least one of min_chars, max_chars, min_tokens, max_tokens")
        return self


@register_filter("length", LengthParams)
def _length(view: RowView, p: LengthParams) -> bool:
    n_chars = len(view.text(p.part))
    if p.min_chars is not None and n_chars < p.min_chars:
        return False
    if p.max_chars is not None and n_chars > p.max_chars:
        return False
    if p.min_tokens is not None and view.n_tokens < p.min_tokens:
        return False
    return p.max_tokens is None or view.n_tokens <= p.max_tokens


class RegexParams(FilterParams):
    pattern: str
    part: Part = "all"
    action: Literal["drop", "keep"] = "drop"  # drop matching rows, or keep only matching rows
    ignore_case: bool = False

    @model_validator(mode="after")
    def _compiles(self) -> "RegexParams":
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"pattern {self.pattern!r} is not a valid regex: {exc}") from None
        return self


@register_filter("regex", RegexParams)
def _regex(view: RowView, p: RegexParams) -> bool:
    found = re.search(p.pattern, view.text(p.part), re.IGNORECASE if p.ignore_case else 0) is not None
    return not found if p.action == "drop" else found


class LanguageParams(FilterParams):
    languages: list[str] = Field(default_factory=lambda: ["en"])  # ISO 639-1 codes langdetect reports
    part: Part = "all"
    min_chars: int = 20  # shorter texts are too short to identify and are kept
    min_probability: float = Field(0.5, ge=0, le=1)
    sample_chars: int = Field(400, ge=20)  # langdetect's cost grows with length; a prefix identifies the language


@register_filter("language", LanguageParams)
def _language(view: RowView, p: LanguageParams) -> bool:
    text = view.text(p.part)[: p.sample_chars]
    letters = re.sub(r"[^\w\s]|\d|_", " ", text)
    if len(letters.strip()) < p.min_chars:
        return True
    # langdetect loads its language profiles on import: only mixtures with a language filter pay for it
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0  # langdetect is randomised; fix it so builds are reproducible
    try:
        guesses = detect_langs(letters)
    except LangDetectException:
        return True
    return any(g.lang in p.languages and g.prob >= p.min_probability for g in guesses)


class RepetitionParams(FilterParams):
    n: int = Field(3, ge=1)  # word n-gram length
    max_ratio: float = Field(0.3, ge=0, le=1)  # drop when this share of n-grams are repeats
    part: Part = "response"
    min_words: int = 10  # shorter texts are kept


@register_filter("repetition", RepetitionParams)
def _repetition(view: RowView, p: RepetitionParams) -> bool:
    words = re.findall(r"\w+", view.text(p.part).lower())
    if len(words) < max(p.min_words, p.n):
        return True
    grams = [tuple(words[i : i + p.n]) for i in range(len(words) - p.n + 1)]
    repeated = len(grams) - len(set(grams))
    return repeated / len(grams) <= p.max_ratio
