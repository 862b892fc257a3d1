"""The one formatter of pydantic validation errors: which error to show, where it is, and a one-line message.

Mixtures, recipes, sweeps, filters and adapters all validate YAML with pydantic and report one line naming file,
line and field; they differ only in how they print the location (`file:line: field: message`, `filter NAME: ...`).

    try:
        spec = Model.model_validate(data)
    except ValidationError as exc:
        err = first_error(exc, Model)      # FieldError(loc=("components", 1, "weigth"), message="unknown field ...")
"""

from __future__ import annotations

import re
import sys
import typing
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, ValidationError

from mixlab.errors import MixlabError
from mixlab.yamlio import Where, did_you_mean


class LocatedError(ValueError):
    """Raise from a model validator to point at a nested field (`loc` relative to the model validated)."""

    def __init__(self, loc: tuple, message: str):
        super().__init__(message)
        self.loc = tuple(loc)


@dataclass(frozen=True)
class FieldError:
    loc: tuple  # the field's path, as pydantic gives it (names and list indices), union-branch tags removed
    message: str  # one line, without the location
    type: str  # pydantic's error type (extra_forbidden, missing, literal_error, value_error, ...)


def first_error(exc: ValidationError, model: type[BaseModel] | None = None, *, unknown: str = "field") -> FieldError:
    """The error worth showing. A typo'd key also shows up as a missing required one, so unknown keys come first
    (their message carries the fix: `unknown field 'budjet' (did you mean 'budget'?)`), then the shallowest.
    `model` (the model validated) supplies the valid names for "did you mean"; `unknown` names what a stray key
    is (field, option, parameter)."""
    err = sorted(exc.errors(), key=lambda e: (e["type"] != "extra_forbidden", len(e["loc"])))[0]
    loc = _clean_loc(err["loc"])
    inner = (err.get("ctx") or {}).get("error")
    if isinstance(getattr(inner, "loc", None), tuple):  # a LocatedError from a model validator
        return FieldError(loc + inner.loc, str(inner), err["type"])
    if err["type"] == "extra_forbidden":
        name = str(loc[-1]) if loc else ""
        return FieldError(loc, f"unknown {unknown} {name!r}{did_you_mean(name, fields_at(model, loc[:-1]))}",
                          err["type"])
    if err["type"] == "missing":
        return FieldError(loc, f"missing required {unknown} {str(loc[-1])!r}" if loc else "missing required field",
                          err["type"])
    if err["type"] == "literal_error":
        message = f"{err['msg']}, got {err.get('input')!r}"
        if isinstance(err.get("input"), str):
            message += did_you_mean(err["input"], re.findall(r"'([^']+)'", err["msg"]))
        return FieldError(loc, message, err["type"])
    return FieldError(loc, err["msg"].removeprefix("Value error, "), err["type"])


def file_error(exc: ValidationError, model: type[BaseModel], where: str, lines: Where, *,
               fmt: Callable[[tuple], str] | None = None) -> MixlabError:
    """`file:line: field: message` for a YAML file validated into `model` (`lines` from `load_yaml`)."""
    err = first_error(exc, model)
    line = lines.line(err.loc)
    field = (fmt or dotted)(err.loc)
    return MixlabError(f"{where}{f':{line}' if line else ''}: {field + ': ' if field else ''}{err.message}")


def dotted(loc: tuple) -> str:
    """`components.1.weight`"""
    return ".".join(str(p) for p in loc)


def fields_at(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """The field names of the model found at `loc` inside `model` (list indices and dict keys pass through)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not _is_model(current) or part not in current.model_fields:
            return []
        nested = [_resolve(a, current) for a in _flatten(current.model_fields[part].annotation)]
        nested = [a for a in nested if _is_model(a)]
        current = nested[0] if nested else None
    return list(current.model_fields) if _is_model(current) else []


def _clean_loc(loc: tuple) -> tuple:
    # pydantic inserts union-branch tags into locations: validator functions ('function-after[...]'), model
    # names ('EvalSpec'), literals ('literal['a','b']'), plain types ('str', 'dict[str,any]').
    def tag(p: Any) -> bool:
        return isinstance(p, str) and (p.startswith(("function-", "literal[")) or p[:1].isupper()
                                       or p in _TYPE_TAGS or re.fullmatch(r"(dict|list|tuple|set)\[.*\]", p) is not None)

    return tuple(p for p in loc if not tag(p))


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _resolve(annotation: Any, owner: type) -> Any:
    """A forward reference (a self-referencing model: `list["Component"]`) resolved in its owner's module."""
    name = annotation.__forward_arg__ if isinstance(annotation, typing.ForwardRef) else annotation
    if isinstance(name, str):
        return vars(sys.modules[owner.__module__]).get(name.strip("'\""))
    return annotation


def _flatten(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    if not args:
        return [annotation]
    return [leaf for a in args for leaf in _flatten(a)]
