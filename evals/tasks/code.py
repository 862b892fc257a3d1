"""Code benchmarks: HumanEval, MBPP (full, original test split) and sanitized MBPP, scored in the sandbox.

Each model answer becomes the sandboxed program (for HumanEval: the prompt's header and the answer) and the
benchmark's tests run beside it in the sandbox's tester process (`mixlab.evals.sandbox.run_tests`), calling the
answer's functions over a data-only channel. A sample passes only when the tests ran to their end: exiting
early, `atexit` hooks, printed markers, patched builtins or `unittest` in the answer's process count for nothing.

Code extraction is forgiving: fenced blocks (```python, ```py, bare ```, an unterminated last fence), MBPP's
`[BEGIN] ... [DONE]`, or raw text trimmed to the longest part that compiles; top-level demo code is dropped (`if __name__ ==
"__main__":` blocks, asserts, bare calls of print/input/the solution/a test runner), keeping definitions,
imports and assignments. For HumanEval an
answer that defines the entry point is run after the prompt's header (imports and helper functions); an answer
that does not is treated completion-style, as the body that continues the prompt.

Known limits of the benchmarks themselves: MBPP shows its three asserts in the prompt (as the original does), so
an answer that hard-codes them passes. (An object whose `__eq__` always returns True does not: results reach the
tests as plain data, other objects as handles equal only to themselves.)
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from mixlab.errors import MixlabError
from mixlab.evals.sandbox import default_pool, parse_python, run_many
from mixlab.evals.stats import mean_ci, pass_at_k
from mixlab.evals.tasks._data import apply_limit, load_rows
from mixlab.evals.tasks.base import EvalItem, Score, Task, register_task
from mixlab.jsonl import read_jsonl

DEFAULT_TIMEOUT_S = 10.0  # per program (all of one sample's tests); generous so slow CPUs do not fail samples
PASS_AT_K = (1, 5, 10, 100)

# ------------------------------------------------------------------------------------------ extraction

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)
_PY_LANGS = {"", "python", "py", "python3", "py3", "python2", "ipython", "pycon"}
_CODE_START = re.compile(r"^(?:def |class |import |from |@|async def |[A-Za-z_][\w.]*\s*=|if |for |while |try:|with )")


def _def_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", re.MULTILINE)


def _compiles(code: str) -> bool:
    try:
        compile(code, "<answer>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError):
        return False
    return True


def _compiles_as_body(text: str) -> bool:
    return _compiles("def _mixlab_body():\n" + _indent_body(text))


def _trim_to_code(text: str) -> str:
    """Raw (unfenced) answer: drop leading prose and trailing prose until what is left compiles."""
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if _CODE_START.match(line)] or [0]
    for start in starts[:10]:  # bounded: at most 10 x 60 compiles, even for a long essay
        for end in range(len(lines), max(start, len(lines) - 60), -1):
            chunk = "\n".join(lines[start:end])
            if chunk.strip() and _compiles(chunk):
                return chunk
    return text


def extract_code(output: str | None, entry_point: str | None = None) -> str:
    """The Python code in a model answer; never raises."""
    text = (output if isinstance(output, str) else "" if output is None else str(output)).replace("\r\n", "\n")
    if "[BEGIN]" in text:
        text = text.split("[BEGIN]", 1)[1]
    if "[DONE]" in text:
        text = text.split("[DONE]", 1)[0]
    blocks = [body for lang, body in _FENCE.findall(text) if lang.lower() in _PY_LANGS]
    if blocks:
        if entry_point:
            defining = [b for b in blocks if _def_pattern(entry_point).search(b)]
            if defining:
                chosen = defining[0]
                # Imports that sit in another block (e.g. a separate "imports" block) still count.
                imports = [line for b in blocks if b is not chosen for line in b.split("\n")
                           if re.match(r"^(?:import |from \S+ import )", line)]
                return "\n".join([*imports, chosen]) if imports else chosen
        return blocks[0]
    stripped = text.strip("\n")
    if not stripped.strip():
        return ""
    if _compiles(stripped) or _compiles_as_body(stripped):  # a module, or a completion-style function body
        return stripped
    return _trim_to_code(stripped)


_DEMO_CALLS = {"print", "input", "check", "breakpoint"}
_DEMO_METHODS = {("unittest", "main"), ("doctest", "testmod"), ("pytest", "main")}


def _is_demo(node: ast.stmt, entry_point: str | None) -> bool:
    """Top-level demo code a chat answer often adds: asserts, prints, calls of the solution, test runners."""
    if isinstance(node, ast.Assert):
        return True
    if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
        names = [node.test.left, *node.test.comparators]
        return any(isinstance(n, ast.Name) and n.id == "__name__" for n in names) and any(
            isinstance(n, ast.Constant) and n.value == "__main__" for n in names)
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        func = node.value.func
        if isinstance(func, ast.Name):
            return func.id in _DEMO_CALLS or func.id == entry_point
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            return (func.value.id, func.attr) in _DEMO_METHODS
    return False


def strip_main_guard(code: str, entry_point: str | None = None) -> str:
    """Remove top-level demo code: `if __name__ == "__main__":` blocks, asserts, and bare calls of print,
    input, the entry point or a test runner (they may read stdin, loop, or assert the model's own wrong example).
    Definitions, imports and assignments stay."""
    try:
        tree = parse_python(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return code
    drop = [(node.lineno, node.end_lineno or node.lineno) for node in tree.body if _is_demo(node, entry_point)]
    if not drop:
        return code
    lines = code.split("\n")
    for start, end in reversed(drop):
        del lines[start - 1:end]
    return "\n".join(lines)


def _indent_body(code: str) -> str:
    """Completion-style answer: make sure the body is indented under the prompt's signature."""
    first = next((line for line in code.split("\n") if line.strip()), "")
    if first and not first[0].isspace():
        return "\n".join(("    " + line) if line.strip() else line for line in code.split("\n"))
    return code


# ------------------------------------------------------------------------------------------ scoring


def _sample_texts(output: Any) -> list[str]:
    """All samples of one output: a string, or a completion with `.text` and optional `extra["samples"]`."""
    if output is None or isinstance(output, str):
        return [output or ""]
    text = getattr(output, "text", None)
    if text is None:
        return [str(output)]
    extra = getattr(output, "extra", None) or {}
    samples = extra.get("samples") if isinstance(extra, dict) else None
    return [text, *[str(x) for x in samples]] if isinstance(samples, list) and samples else [text]


def _combine_samples(scores: Sequence[Score], ks: Sequence[int] = PASS_AT_K) -> Score:
    n, c = len(scores), int(sum(s.values.get("pass@1", 0.0) for s in scores))
    values = {f"pass@{k}": pass_at_k(n, c, k) for k in ks if k <= n}
    first = scores[0].details if scores else {}
    return Score(values, rationale=f"{c}/{n} samples passed",
                 details={**first, "n": n, "c": c, "statuses": [s.details.get("status") for s in scores]})


class CodeTask(Task):
    """Shared loading/scoring machinery; subclasses define `build_program` and the prompt."""

    category: ClassVar[str] = "leaderboard"
    metrics: ClassVar[tuple[str, ...]] = ("pass@1",)
    binary_metrics: ClassVar[bool] = True
    max_new_tokens: ClassVar[int] = 768
    timeout_s: ClassVar[float] = DEFAULT_TIMEOUT_S
    memory_mb: ClassVar[int] = 1024

    def build_program(self, item: EvalItem, output: str) -> tuple[str, str, list[str], str]:
        """(untrusted program, trusted tests, entry points the tests call, extracted code)."""
        raise NotImplementedError

    def _programs(self, item: EvalItem, output: str) -> tuple[tuple[str, str, list[str]] | None, str, str]:
        try:
            program, tests, entries, code = self.build_program(item, output)
        except Exception as exc:  # noqa: BLE001 - malformed answers never crash the scorer
            return None, "", f"could not build program: {type(exc).__name__}: {exc}"
        return (program, tests, entries), code, ""

    def _score_from(self, result: Any, code: str, error: str) -> Score:
        if error:
            return Score({"pass@1": 0.0}, rationale=error, details={"status": "error", "code": code})
        details = {
            "status": result.status,
            "reason": result.reason,
            "duration_s": round(result.duration_s, 4),
            "stderr_tail": result.stderr[-500:],
            "isolation": result.isolation,
            "code": code,
        }
        return Score({"pass@1": 1.0 if result.passed else 0.0}, rationale=result.reason or result.status,
                     details=details)

    def score(self, item: EvalItem, output: str) -> Score:
        return self.score_batch([item], [output])[0]

    def score_batch(self, items: Sequence[EvalItem], outputs: Sequence[Any], progress=None, *,
                    workers: int | None = None) -> list[Score]:
        """Score many (item, output) pairs, the programs running in parallel sandbox workers.

        An output is a string or a runner `Completion`; a completion carrying extra samples
        (`extra["samples"]`, from generation with n > 1) is scored with the unbiased pass@k over all its samples.
        """
        if len(items) != len(outputs):
            raise MixlabError(f"task {self.name}: {len(items)} items but {len(outputs)} outputs")
        groups = [_sample_texts(out) for out in outputs]
        flat = [(i, text) for i, texts in enumerate(groups) for text in texts]
        built = [self._programs(items[i], text) for i, text in flat]
        runnable = [j for j, (_, _, error) in enumerate(built) if not error]
        multi = any(len(g) > 1 for g in groups)
        results = run_many(
            [built[j][0][0] for j in runnable], workers=workers or default_pool().max_workers,
            timeout_s=self.timeout_s, memory_mb=self.memory_mb, tests=[built[j][0][1] for j in runnable],
            entry_points=[built[j][0][2] for j in runnable], progress=None if multi else progress,
        ) if runnable else []
        by_index = dict(zip(runnable, results))
        per_sample = [self._score_from(by_index.get(j), built[j][1], built[j][2]) for j in range(len(flat))]
        scores: list[Score] = []
        cursor = 0
        for texts in groups:
            chunk = per_sample[cursor:cursor + len(texts)]
            cursor += len(texts)
            scores.append(chunk[0] if len(chunk) == 1 else _combine_samples(chunk))
        if multi and progress is not None:
            progress(len(items))
        return scores

    def score_samples(self, item: EvalItem, outputs: Sequence[str], ks: Sequence[int] = PASS_AT_K) -> Score:
        """n samples of one item -> unbiased pass@k (Chen et al. 2021) for every k <= n, plus n and c."""
        if not outputs:
            raise MixlabError(f"task {self.name}: score_samples needs at least one output for {item.item_id}")
        return _combine_samples(self.score_batch([item] * len(outputs), list(outputs)), ks)

    def aggregate(self, scores: Sequence[Score]) -> dict[str, tuple[float, float, float, str]]:
        """Mean and 95 % CI of every pass@k present (Wilson for 0/1 per-item values, bootstrap otherwise)."""
        names: list[str] = list(self.metrics)
        for score in scores:
            names += [k for k in score.values if k not in names]
        summary = {}
        for name in names:
            values = [s.values[name] for s in scores if name in s.values]
            if values:
                summary[name] = mean_ci(values, binary=all(v in (0.0, 1.0) for v in values))
        return summary

    def contamination_texts(self, item: EvalItem) -> list[str]:
        """The problem statement, the canonical solution and (MBPP) the asserts: MBPP statements are often
        shorter than a decontamination n-gram, its asserts and code are not."""
        ref = item.reference or {}
        tests = "\n".join(ref.get("tests") or [])
        return [t for t in (item.meta.get("problem"), ref.get("canonical"), tests) if t]


def _item_check(task: str, rows: list[dict], required: Sequence[str], where: str) -> None:
    for i, row in enumerate(rows):
        missing = [f for f in required if f not in row]
        if missing:
            raise MixlabError(f"task {task}: {where} row {i + 1} lacks field(s) {missing}")


# -------------------------------------------------------------------------------------------- HumanEval

HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Respond with the complete function, including its signature and "
    "any imports it needs, in a single ```python code block.\n\n```python\n{prompt}```"
)


@register_task
class HumanEval(CodeTask):
    name: ClassVar[str] = "humaneval"
    description: ClassVar[str] = "HumanEval (164 problems), pass@1 / pass@k, sandboxed execution of the unit tests"
    rel_path: ClassVar[str] = "humaneval/HumanEval.jsonl.gz"
    hub: ClassVar[str] = "openai/openai_humaneval"

    def load(self, data_root: Path | None, limit: int | None = None) -> list[EvalItem]:
        path = Path(data_root) / self.rel_path if data_root is not None else None
        if path is not None and path.is_file():
            try:
                rows = read_jsonl(path)
            except OSError as exc:
                raise MixlabError(f"task {self.name}: cannot read {path}: {exc}") from None
        else:
            rows = load_rows(self.name, data_root, self.rel_path, self.hub)
        _item_check(self.name, rows, ("task_id", "prompt", "canonical_solution", "test", "entry_point"),
                    str(path or self.hub))
        items = [
            EvalItem(
                item_id=row["task_id"],
                messages=[{"role": "user", "content": HUMANEVAL_INSTRUCTION.format(prompt=row["prompt"])}],
                reference={"prompt": row["prompt"], "canonical": row["canonical_solution"], "test": row["test"],
                           "entry_point": row["entry_point"]},
                meta={"problem": row["prompt"]},
            )
            for row in rows
        ]
        return apply_limit(items, limit)

    def build_program(self, item: EvalItem, output: str) -> tuple[str, str, list[str], str]:
        ref = item.reference
        entry, prompt = ref["entry_point"], ref["prompt"]
        code = strip_main_guard(extract_code(output, entry), entry)
        defs = list(_def_pattern(entry).finditer(prompt))
        header = prompt[: defs[-1].start()] if defs else ""
        if _def_pattern(entry).search(code):
            program = header + "\n" + code  # the prompt's imports and helpers, then the answer's function
        else:
            program = prompt + _indent_body(code)  # completion-style: the answer continues the signature
        # The tests get the prompt's own helpers (e.g. encode_cyclic), never the answer's versions of them.
        tests = f"{header}\n\n{ref['test']}\n\ncheck({entry})\n"
        return program, tests, [entry], code

    def reference_output(self, item: EvalItem) -> str:
        return f"```python\n{item.reference['prompt']}{item.reference['canonical']}```"


# -------------------------------------------------------------------------------------------------- MBPP

MBPP_INSTRUCTION = (
    "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n"
    "{tests}\n\nRespond with the function in a single ```python code block."
)
MBPP_TEST_IDS = range(11, 511)  # the standard test split (1-10 few-shot, 511-600 validation, 601-974 train)


class _MBPPBase(CodeTask):
    hub: ClassVar[str] = "google-research-datasets/mbpp"
    hub_config: ClassVar[str] = "full"
    text_field: ClassVar[str] = "text"

    def _rows(self, data_root: Path | None) -> list[dict]:
        raise NotImplementedError

    def _setup(self, row: dict) -> str:
        raise NotImplementedError

    def load(self, data_root: Path | None, limit: int | None = None) -> list[EvalItem]:
        rows = self._rows(data_root)
        _item_check(self.name, rows, ("task_id", self.text_field, "code", "test_list"), self.rel_path)
        rows = sorted((r for r in rows if int(r["task_id"]) in MBPP_TEST_IDS), key=lambda r: int(r["task_id"]))
        items = []
        for row in rows:
            canonical = row["code"].replace("\r\n", "\n").replace("\t", "    ")
            tests = [t.replace("\r\n", "\n") for t in row["test_list"]]
            entry = _mbpp_entry_point(canonical, tests)
            items.append(EvalItem(
                item_id=f"{self.name}/{row['task_id']}",
                messages=[{"role": "user", "content": MBPP_INSTRUCTION.format(
                    text=row[self.text_field].strip(), tests="\n".join(tests))}],
                reference={"tests": tests, "setup": self._setup(row), "canonical": canonical,
                           "entry_point": entry},
                meta={"problem": row[self.text_field], "task_id": int(row["task_id"])},
            ))
        return apply_limit(items, limit)

    def build_program(self, item: EvalItem, output: str) -> tuple[str, str, list[str], str]:
        ref = item.reference
        entry = ref.get("entry_point")
        code = strip_main_guard(extract_code(output, entry), entry)
        setup = ref.get("setup") or ""
        # As the original harness: the test set-up (it may use the answer's classes), then the asserts.
        tests = f"{setup}\n" + "\n".join(ref["tests"]) + "\n"
        return code, tests, [entry] if entry else [], code

    def reference_output(self, item: EvalItem) -> str:
        return f"```python\n{item.reference['canonical'].rstrip()}\n```"


def _mbpp_entry_point(code: str, tests: Sequence[str]) -> str | None:
    """The function the tests call: the first `def` of the reference solution named in the asserts."""
    names = re.findall(r"^def\s+(\w+)\s*\(", code, re.MULTILINE)
    joined = "\n".join(tests)
    for name in names:
        if re.search(rf"\b{re.escape(name)}\s*\(", joined):
            return name
    return names[0] if names else None


@register_task
class MBPP(_MBPPBase):
    name: ClassVar[str] = "mbpp"
    description: ClassVar[str] = "MBPP full, test split (task ids 11-510, 500 problems), tests shown in the prompt"
    rel_path: ClassVar[str] = "mbpp/mbpp.jsonl"

    def _rows(self, data_root: Path | None) -> list[dict]:
        return load_rows(self.name, data_root, self.rel_path, self.hub, self.hub_config, split="test")

    def _setup(self, row: dict) -> str:
        return (row.get("test_setup_code") or "").replace("\r\n", "\n")


@register_task
class MBPPSanitized(_MBPPBase):
    name: ClassVar[str] = "mbpp-sanitized"
    description: ClassVar[str] = "MBPP sanitized, test split (task ids 11-510, 257 problems), tests shown"
    rel_path: ClassVar[str] = "mbpp/sanitized-mbpp.json"
    hub_config: ClassVar[str] = "sanitized"
    text_field: ClassVar[str] = "prompt"

    def _rows(self, data_root: Path | None) -> list[dict]:
        path = Path(data_root) / self.rel_path if data_root is not None else None
        if path is not None and path.is_file():
            try:
                rows = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise MixlabError(f"task {self.name}: cannot read {path}: {exc}") from None
            if not isinstance(rows, list):
                raise MixlabError(f"task {self.name}: {path} must hold a JSON list of problems")
            return rows
        return load_rows(self.name, data_root, self.rel_path, self.hub, self.hub_config, split="test")

    def _setup(self, row: dict) -> str:
        return "\n".join(row.get("test_imports") or [])
