"""Adapters: raw source rows → one canonical schema per mixture kind.

- sft:        {"messages": [{"role": system|user|assistant|tool, "content": str, "train": bool}, ...]}
- preference: {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
- rl:         {"prompt": [messages], "ground_truth": str, "verifier": str, "task": str}

Built-ins: messages, alpaca, sharegpt, gsm8k, math, code (MBPP/HumanEval-style), fields (field mapping), and
procedural (mixlab's generators). `register_adapter` adds custom ones. Every adapter declares its options as a
pydantic model, so a typo in an option gets the closest valid name.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, ValidationError

from mixlab.errors import MixlabError
from mixlab.evals.procedural.constraints import check_all
from mixlab.validation import dotted, first_error
from mixlab.yamlio import did_you_mean

ROLES = ("system", "user", "assistant", "tool")


class AdapterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    row_id: str | None = None  # field holding a stable row id (default: the row's position in the source)
    system: str | None = None  # system prompt to prepend


class RowError(ValueError):
    """A malformed row (missing field, wrong type): the build fails naming source, file and row."""


class EmptyRow(RowError):
    """A well-formed row with nothing to learn (e.g. an empty answer): dropped and counted as `invalid`."""


@dataclass
class Adapter:
    name: str
    kinds: tuple[str, ...]
    options: type[AdapterOptions]
    fn: Callable[[dict[str, Any], Any, str], dict[str, Any]]


_ADAPTERS: dict[str, Adapter] = {}


def register_adapter(name: str, kinds: tuple[str, ...], options: type[AdapterOptions] = AdapterOptions):
    """Decorator: `fn(row, options, kind) -> canonical row` (raise RowError for a malformed row)."""

    def deco(fn):
        _ADAPTERS[name] = Adapter(name, tuple(kinds), options, fn)
        return fn

    return deco


def adapter_names() -> list[str]:
    return sorted(_ADAPTERS)


def resolve_adapter(raw: str | dict[str, Any] | None, default: str | None, kind: str) -> tuple[Adapter, Any]:
    """(adapter, validated options). Errors are plain messages; the caller prefixes file:line: field."""
    if raw is None:
        if default is None:
            raise MixlabError(f"adapter: required for this source; one of {adapter_names()}")
        raw = default
    if isinstance(raw, str):
        name, opts = raw, {}
    else:
        opts = dict(raw)
        name = opts.pop("name", None)
        if not isinstance(name, str):
            raise MixlabError("adapter: a mapping needs `name`")
    if name not in _ADAPTERS:
        raise MixlabError(f"adapter: unknown adapter {name!r}{did_you_mean(name, _ADAPTERS)}; known: {adapter_names()}")
    adapter = _ADAPTERS[name]
    if kind not in adapter.kinds:
        raise MixlabError(f"adapter: {name!r} produces {list(adapter.kinds)} rows, this is a {kind} mixture")
    try:
        options = adapter.options.model_validate(opts)
    except ValidationError as exc:
        err = first_error(exc, adapter.options, unknown="option")
        msg = err.message if err.type == "extra_forbidden" else f"{dotted(err.loc)}: {err.message}"
        raise MixlabError(f"adapter.{name}: {msg}") from None
    return adapter, options


# ---------------------------------------------------------------------------------------------------------------
# Canonical-row helpers


def _msg(role: str, content: Any, train: bool | None = None) -> dict[str, Any]:
    if not isinstance(content, str):
        raise RowError(f"{role} content must be text, got {type(content).__name__}")
    return {"role": role, "content": content, "train": (role == "assistant") if train is None else bool(train)}


def _field(row: dict[str, Any], name: str) -> Any:
    if name not in row:
        raise RowError(f"missing field {name!r}{did_you_mean(name, row)} (fields: {sorted(row)})")
    return row[name]


def _with_system(messages: list[dict], options: AdapterOptions) -> list[dict]:
    if options.system and not (messages and messages[0]["role"] == "system"):
        return [_msg("system", options.system)] + messages
    return messages


def _prompt_only(messages: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": m["content"], "train": False} for m in messages]


def validate_row(row: dict[str, Any], kind: str) -> None:
    """Structural check of a canonical row (adapters and custom code both pass through it)."""

    def check_messages(msgs: Any, what: str, need_assistant: bool) -> None:
        if not isinstance(msgs, list) or not msgs:
            raise RowError(f"{what} must be a non-empty list of messages")
        for m in msgs:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise RowError(f"{what}: each message needs role in {list(ROLES)} and text content, got {m!r:.120}")
        if need_assistant and not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
            raise EmptyRow(f"{what} has no non-empty assistant turn")

    if kind == "sft":
        check_messages(row.get("messages"), "messages", True)
    elif kind == "preference":
        check_messages(row.get("prompt"), "prompt", False)
        check_messages(row.get("chosen"), "chosen", True)
        check_messages(row.get("rejected"), "rejected", True)
    else:
        check_messages(row.get("prompt"), "prompt", False)
        for key in ("ground_truth", "verifier", "task"):
            if not isinstance(row.get(key), str) or not row[key]:
                raise RowError(f"rl rows need a non-empty text `{key}`")


# ---------------------------------------------------------------------------------------------------------------
# Built-in adapters


class MessagesOptions(AdapterOptions):
    field: str = "messages"


@register_adapter("messages", ("sft",), MessagesOptions)
def _messages(row, o: MessagesOptions, kind):
    msgs = _field(row, o.field)
    if not isinstance(msgs, list):
        raise RowError(f"{o.field} must be a list of messages")
    out = []
    for m in msgs:
        if not isinstance(m, dict):
            raise RowError(f"{o.field}: each message must be a mapping")
        out.append(_msg(_field(m, "role"), _field(m, "content"), m.get("train")))
    return {"messages": _with_system(out, o)}


class AlpacaOptions(AdapterOptions):
    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    system_field: str | None = None


@register_adapter("alpaca", ("sft",), AlpacaOptions)
def _alpaca(row, o: AlpacaOptions, kind):
    instruction = _field(row, o.instruction)
    extra = row.get(o.input) or ""
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    msgs = [_msg("user", prompt), _msg("assistant", _field(row, o.output))]
    if o.system_field and row.get(o.system_field):
        msgs.insert(0, _msg("system", row[o.system_field]))
    return {"messages": _with_system(msgs, o)}


class ShareGPTOptions(AdapterOptions):
    field: str = "conversations"
    role_key: str = "from"
    content_key: str = "value"
    roles: dict[str, str] = {
        "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
        "function_call": "assistant", "observation": "tool", "tool": "tool",
    }
    chosen: str = "chosen"
    rejected: str = "rejected"


def _sharegpt_turns(turns: Any, o: ShareGPTOptions, what: str) -> list[dict]:
    if isinstance(turns, dict):
        turns = [turns]
    if not isinstance(turns, list):
        raise RowError(f"{what} must be a list of turns")
    out = []
    for t in turns:
        if not isinstance(t, dict):
            raise RowError(f"{what}: each turn must be a mapping")
        speaker = _field(t, o.role_key)
        if speaker not in o.roles:
            raise RowError(f"{what}: unknown speaker {speaker!r}{did_you_mean(str(speaker), o.roles)}")
        out.append(_msg(o.roles[speaker], _field(t, o.content_key)))
    return out


@register_adapter("sharegpt", ("sft", "preference"), ShareGPTOptions)
def _sharegpt(row, o: ShareGPTOptions, kind):
    conv = _with_system(_sharegpt_turns(_field(row, o.field), o, o.field), o)
    if kind == "sft":
        return {"messages": conv}
    return {
        "prompt": _prompt_only(conv),
        "chosen": _sharegpt_turns(_field(row, o.chosen), o, o.chosen),
        "rejected": _sharegpt_turns(_field(row, o.rejected), o, o.rejected),
    }


class GSM8KOptions(AdapterOptions):
    question: str = "question"
    answer: str = "answer"
    prompt_template: str = "{question}"
    keep_calculator: bool = False  # keep GSM8K's <<48/2=24>> annotations in the rationale


_CALC = re.compile(r"<<[^>]*>>")
_GSM_FINAL = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)


@register_adapter("gsm8k", ("sft", "rl"), GSM8KOptions)
def _gsm8k(row, o: GSM8KOptions, kind):
    question = _field(row, o.question)
    answer = _field(row, o.answer)
    m = _GSM_FINAL.search(answer or "")
    if not m:
        raise RowError("GSM8K answer has no '#### <number>' line")
    prompt = [_msg("user", o.prompt_template.format(question=question))]
    if kind == "rl":
        return {"prompt": _with_system(_prompt_only(prompt), o), "ground_truth": m.group(1).replace(",", ""),
                "verifier": "math", "task": "gsm8k"}
    rationale = answer if o.keep_calculator else _CALC.sub("", answer)
    return {"messages": _with_system(prompt + [_msg("assistant", rationale)], o)}


class MathOptions(AdapterOptions):
    problem: str = "problem"
    solution: str = "solution"
    answer: str | None = "answer"  # default: the last \boxed{...} of the solution
    task: str = "math"


def last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


@register_adapter("math", ("sft", "rl"), MathOptions)
def _math(row, o: MathOptions, kind):
    problem = _field(row, o.problem)
    prompt = [_msg("user", problem)]
    if kind == "rl":
        answer = row.get(o.answer) if o.answer else None
        answer = answer if answer not in (None, "") else last_boxed(_field(row, o.solution))
        if answer in (None, ""):
            raise RowError("no answer field and no \\boxed{} in the solution")
        return {"prompt": _with_system(_prompt_only(prompt), o), "ground_truth": str(answer), "verifier": "math",
                "task": o.task}
    return {"messages": _with_system(prompt + [_msg("assistant", _field(row, o.solution))], o)}


class CodeOptions(AdapterOptions):
    task: str | None = None  # default: mbpp or humaneval, from the fields present
    show_first_test: bool = True  # MBPP convention: the prompt shows one test so the function name is known


def _code_fields(row: dict[str, Any], o: CodeOptions) -> tuple[str, str, str, list[str], str]:
    """(task, prompt, reference solution, tests, entry point) for MBPP- or HumanEval-style rows."""
    if "test_list" in row:  # MBPP (original or sanitized)
        text = row.get("text") or row.get("prompt")
        if not isinstance(text, str):
            raise RowError("MBPP rows need `text` or `prompt`")
        tests = list(_field(row, "test_list"))
        setup = row.get("test_setup_code") or ""
        imports = row.get("test_imports") or []
        if imports:
            setup = "\n".join(imports) + ("\n" + setup if setup else "")
        if setup:
            tests = [setup] + tests
        code = _field(row, "code")
        m = re.search(r"assert\s+(?:not\s+)?\(?\s*([A-Za-z_]\w*)\s*\(", tests[-1] if tests else "")
        entry = m.group(1) if m else ""
        shown = f"\nYour code should pass this test:\n{tests[-1]}" if o.show_first_test and tests else ""
        return o.task or "mbpp", f"{text}{shown}", code, tests, entry
    if "entry_point" in row and "test" in row:  # HumanEval
        prompt = _field(row, "prompt")
        entry = row["entry_point"]
        tests = [row["test"], f"check({entry})"]
        return o.task or "humaneval", f"Complete this Python function:\n{prompt}", prompt + row.get(
            "canonical_solution", ""), tests, entry
    raise RowError("code rows need MBPP fields (text, code, test_list) or HumanEval fields (prompt, test, entry_point)")


@register_adapter("code", ("rl", "sft"), CodeOptions)
def _code(row, o: CodeOptions, kind):
    task, prompt, solution, tests, entry = _code_fields(row, o)
    if kind == "rl":
        return {"prompt": _with_system([_msg("user", prompt, False)], o),
                "ground_truth": json.dumps({"entry_point": entry, "tests": tests}), "verifier": "code", "task": task}
    return {"messages": _with_system([_msg("user", prompt), _msg("assistant", solution)], o)}


class FieldsOptions(AdapterOptions):
    prompt: str | None = None
    response: str | None = None
    system_field: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    ground_truth: str | None = None
    verifier: str | None = None  # a constant verifier name ...
    verifier_field: str | None = None  # ... or the field that holds it
    task: str = "custom"


def _as_text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    if isinstance(value, dict) and isinstance(value.get("value"), str):
        return value["value"]
    raise RowError(f"{what} must be text")


@register_adapter("fields", ("sft", "preference", "rl"), FieldsOptions)
def _fields(row, o: FieldsOptions, kind):
    if o.prompt is None:
        raise RowError("the fields adapter needs `prompt`")
    prompt = [_msg("user", _as_text(_field(row, o.prompt), o.prompt))]
    if o.system_field and row.get(o.system_field):
        prompt.insert(0, _msg("system", row[o.system_field]))
    prompt = _with_system(prompt, o)
    if kind == "sft":
        if o.response is None:
            raise RowError("the fields adapter needs `response` for sft")
        return {"messages": prompt + [_msg("assistant", _as_text(_field(row, o.response), o.response))]}
    if kind == "preference":
        if o.chosen is None or o.rejected is None:
            raise RowError("the fields adapter needs `chosen` and `rejected` for preference")
        return {"prompt": _prompt_only(prompt),
                "chosen": [_msg("assistant", _as_text(_field(row, o.chosen), o.chosen))],
                "rejected": [_msg("assistant", _as_text(_field(row, o.rejected), o.rejected))]}
    if o.ground_truth is None or (o.verifier is None) == (o.verifier_field is None):
        raise RowError("the fields adapter needs `ground_truth` and one of `verifier` / `verifier_field` for rl")
    truth = _field(row, o.ground_truth)
    return {"prompt": _prompt_only(prompt),
            "ground_truth": truth if isinstance(truth, str) else json.dumps(truth),
            "verifier": o.verifier or str(_field(row, o.verifier_field)), "task": o.task}


# ---------------------------------------------------------------------------------------------------------------
# Procedural items (mixlab.evals.procedural) and their corrupted answers for preference data


@register_adapter("procedural", ("sft", "rl", "preference"))
def _procedural(item, o: AdapterOptions, kind):
    prompt = _with_system([_msg("user", item["prompt"])], o)
    if kind == "sft":
        return {"messages": prompt + [_msg("assistant", item["response"])]}
    if kind == "rl":
        truth = item["ground_truth"]
        return {"prompt": _prompt_only(prompt), "ground_truth": truth if isinstance(truth, str) else json.dumps(truth),
                "verifier": item["verifier"], "task": f"proc-{item['kind']}"}
    return {"prompt": _prompt_only(prompt), "chosen": [_msg("assistant", item["response"])],
            "rejected": [_msg("assistant", corrupt(item))]}


_CODE_MUTATIONS = [(" + ", " - "), (" - ", " + "), (" * ", " + "), (" // ", " % "), (" % ", " // "), (" > ", " >= "),
                   (" < ", " <= "), (" >= ", " > "), ("max(", "min("), ("min(", "max("), ("[:", "[1:"),
                   ("== 0", "!= 0"), ("'Fizz'", "'Buzz'"), ("sum(", "len(")]


def corrupt(item: dict[str, Any]) -> str:
    """A plausible wrong answer for a procedural item, deterministic per item (DPO's `rejected`)."""
    rng = random.Random(f"corrupt|{item['id']}")
    response = item["response"]
    if item["verifier"] == "math":
        gold = int(item["ground_truth"])
        wrong = gold + rng.choice([-10, -2, -1, 1, 2, 10])
        wrong = wrong if wrong >= 0 else gold + 1
        head, _, _ = response.rpartition("Answer:")
        head = re.sub(rf"={gold}\.\s*$", f"={wrong}. ", head.rstrip() + " ").rstrip()
        return f"{head} Answer: {wrong}"
    if item["verifier"] == "code":
        for old, new in _CODE_MUTATIONS:
            if old in response:
                return response.replace(old, new, 1)
        return response.replace("return ", "return None and ", 1)
    bad = _break_format(response, item["ground_truth"][0], rng)
    if all(check_all(item["ground_truth"], bad)):  # the breakage must show
        bad = bad + "\n" + bad
    return bad


def _break_format(text: str, c: dict[str, Any], rng: random.Random) -> str:
    kind = c["type"]
    if kind == "lowercase":
        return text[:1].upper() + text[1:] if text[:1].isalpha() else "A " + text
    if kind == "uppercase":
        return text.lower()
    if kind == "bullets":
        lines = text.split("\n")
        idx = max(i for i, line in enumerate(lines) if line.lstrip().startswith(("-", "*")))
        return "\n".join(lines[:idx] + lines[idx + 1 :])
    if kind in ("ends_with", "starts_with"):
        return re.sub(re.escape(c["phrase"]), "", text, flags=re.IGNORECASE).strip()
    if kind == "include_word":
        return re.sub(rf"\b{re.escape(c['word'])}\b", "", text, flags=re.IGNORECASE)
    if kind == "forbid_word":
        return text + " " + c["word"]
    if kind == "json":
        return text.rstrip("}") if text.endswith("}") else "{" + text
    if kind == "max_words":
        return text + " " + " ".join(["and more"] * c["n"])
    if kind == "min_words":
        return " ".join(text.split()[:2])
    if kind == "sentences":
        return text + " One more thing."
    if kind == "no_commas":
        return text.replace(" ", ", ", 1)
    if kind == "quoted":
        return text.strip('"')
    return text + " " + text
