"""Math leaderboard tasks: GSM8K (strict `####` and flexible last-number extraction) and MATH-500 (math-verify).

Both are 0-shot chat prompts that tell the model how to mark its final answer. Chat models often ignore the
marker, so GSM8K reports strict and flexible extraction side by side (evals-reference §3.1, §5) and every
sample keeps the extracted strings in `Score.details`.
"""

from __future__ import annotations

import atexit
import re
from pathlib import Path

from mixlab import procs
from mixlab.evals.stats import summarize_metrics
from mixlab.evals.tasks._data import apply_limit, load_rows
from mixlab.evals.tasks.base import EvalItem, Score, Task, register_task

# --------------------------------------------------------------------------------------------------------------
# GSM8K

GSM8K_PROMPT = (
    "Solve the following math problem step by step. At the end, write the final answer as a plain number "
    'on its own line in the form "#### <answer>".\n\n{question}'
)

# OpenAI's reference regex, tolerating "#### $18" and no space after the marker (chat models write both).
_STRICT_RE = re.compile(r"####\s*\$?\s*(-?[0-9.,]+)")
# lm-eval's flexible-extract: the last number-like token in the whole output.
_FLEX_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_CALC_ANNOTATION_RE = re.compile(r"<<[^>]*>>")


def normalize_number(text: str) -> str:
    """Canonical string for a GSM8K answer: drop `,` `$` whitespace, a trailing `.`, and a zero fraction.

    "1,234.00" -> "1234", "$18." -> "18", "-3.50" -> "-3.5". Non-numbers are returned stripped, unchanged.
    """
    s = text.strip().replace(",", "").replace("$", "").replace(" ", "")
    s = s.rstrip(".")
    if re.fullmatch(r"-?\d*\.\d+|-?\d+", s):
        if "." in s:
            s = s.rstrip("0").rstrip(".")
        if s.startswith("-"):
            body = s[1:].lstrip("0") or "0"
            s = "-" + body if body != "0" else "0"
        else:
            s = s.lstrip("0") or "0"
        if s.startswith("."):
            s = "0" + s
        elif s.startswith("-."):
            s = "-0" + s[1:]
    return s


def extract_strict(output: str) -> str | None:
    match = _STRICT_RE.search(output)
    if not match:
        return None
    value = normalize_number(match.group(1))
    return value if re.fullmatch(r"-?\d+(\.\d+)?", value) else None


def extract_flexible(output: str) -> str | None:
    for match in reversed(_FLEX_RE.findall(output)):
        value = normalize_number(match[0] or match[1])
        if re.fullmatch(r"-?\d+(\.\d+)?", value):
            return value
    return None


def gsm8k_gold(answer_field: str) -> str:
    gold = extract_strict(answer_field)
    if gold is None:
        raise ValueError(f"GSM8K answer has no '#### <number>' line: {answer_field[-80:]!r}")
    return gold


@register_task
class GSM8K(Task):
    name = "gsm8k"
    category = "leaderboard"
    description = "GSM8K test (1,319 grade-school word problems), 0-shot chat; strict #### and flexible last-number"
    metrics = ("exact_match_strict", "exact_match_flexible")
    binary_metrics = True
    max_new_tokens = 512
    data_path = "gsm8k/test.jsonl"
    hub = "openai/gsm8k"
    hub_config = "main"

    def load(self, data_root: Path | None, limit: int | None = None) -> list[EvalItem]:
        rows = apply_limit(load_rows(self.name, data_root, self.data_path, self.hub, self.hub_config), limit)
        items = []
        for idx, row in enumerate(rows):
            items.append(
                EvalItem(
                    item_id=f"gsm8k-test-{idx:04d}",
                    messages=[{"role": "user", "content": GSM8K_PROMPT.format(question=row["question"])}],
                    reference=gsm8k_gold(row["answer"]),
                    meta={"question": row["question"], "solution": row["answer"]},
                )
            )
        return items

    def score(self, item: EvalItem, output: str) -> Score:
        try:
            text = output if isinstance(output, str) else str(output)
            strict, flexible = extract_strict(text), extract_flexible(text)
        except Exception as exc:  # noqa: BLE001 - a scorer never crashes on model output
            return Score({m: 0.0 for m in self.metrics}, details={"error": f"{type(exc).__name__}: {exc}"})
        gold = item.reference
        return Score(
            {"exact_match_strict": float(strict == gold), "exact_match_flexible": float(flexible == gold)},
            details={"gold": gold, "extracted_strict": strict, "extracted_flexible": flexible},
        )

    def reference_output(self, item: EvalItem) -> str:
        # The rationale as a model would write it: calculator annotations removed, the #### line kept.
        return _CALC_ANNOTATION_RE.sub("", item.meta["solution"])

    def contamination_texts(self, item: EvalItem) -> list[str]:
        return [item.meta["question"], item.meta["solution"]]


# --------------------------------------------------------------------------------------------------------------
# MATH-500

MATH_PROMPT = (
    "Solve the following math problem. Show your reasoning, then put the final answer in \\boxed{{}}.\n\n{problem}"
)


class MathVerifyTimeout(Exception):
    """math-verify overran its time budget on one answer (the answer scores 0; the worker is replaced)."""


class MathVerifyUnavailable(RuntimeError):
    """The verifier process cannot start: an installation problem, never a 0 score for the model."""


_LIVE_WORKERS: set = set()


def _kill_live_workers() -> None:
    # Idle workers exit by themselves when our end of their stdin closes; a busy one may be deep in sympy.
    for worker in list(_LIVE_WORKERS):
        worker.kill()


atexit.register(_kill_live_workers)


class _Worker:
    """One `python -m mixlab.evals.math_verify_worker` process speaking JSON lines over stdin/stdout.

    A plain subprocess (not multiprocessing) so the child never re-imports the parent's __main__ (the `mixlab`
    script imports torch: seconds per worker).
    """

    STARTUP_TIMEOUT_S = 120.0

    def __init__(self) -> None:
        import subprocess

        self.proc = procs.popen(
            ["-m", "mixlab.evals.math_verify_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        _LIVE_WORKERS.add(self)
        self._buffer = b""
        line = self._readline(self.STARTUP_TIMEOUT_S)
        if line != "ready":
            self.kill()
            err = self.proc.stderr.read().decode(errors="replace")[-500:] if self.proc.stderr else ""
            raise MathVerifyUnavailable(f"math-verify worker failed to start (got {line!r}): {err}")

    def _readline(self, timeout_s: float) -> str | None:
        import os
        import select
        import time

        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None  # timed out
            chunk = os.read(fd, 65536)
            if not chunk:
                return None  # the worker died
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def call(self, mode: str, gold: str, predicted: str, timeout_s: float) -> bool | None:
        """True/False, or None when the worker overran the timeout or died (the caller then drops it)."""
        import json

        try:
            self.proc.stdin.write((json.dumps({"mode": mode, "gold": gold, "pred": predicted}) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        line = self._readline(timeout_s)
        if line is None:
            return None
        reply = json.loads(line)
        return bool(reply.get("ok", False))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        _LIVE_WORKERS.discard(self)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class _VerifierPool:
    """A few long-lived math-verify worker processes, safe to call from any thread.

    Each call borrows an idle worker and waits up to the timeout for its verdict; a worker that overruns is
    killed and replaced on next use, so a pathological answer (e.g. 9^{9^{9^9}}, which keeps sympy inside one
    C call that neither threads nor signals can interrupt) costs one timeout, not a hung evaluation.
    """

    def __init__(self, size: int = 2) -> None:
        import queue

        self._idle: queue.Queue = queue.Queue()
        for _ in range(size):
            self._idle.put(None)  # None = start on first use

    def call(self, mode: str, gold: str, predicted: str, timeout_s: float) -> bool:
        worker = self._idle.get()
        try:
            if worker is None or not worker.alive():
                worker = _Worker()  # startup has its own (long) timeout, separate from the call's
            verdict = worker.call(mode, gold, predicted, timeout_s)
            if verdict is None:
                worker.kill()
                worker = None
                raise MathVerifyTimeout(f"math-verify took longer than {timeout_s}s (or its worker died)")
            return verdict
        finally:
            self._idle.put(worker)


_POOL = _VerifierPool()

_MAX_ANSWER_CHARS = 2000  # longer "answers" are junk and can make sympy crawl


def math_equal(gold_answer: str, predicted: str, timeout_s: float = 5.0) -> bool:
    """math-verify equivalence of two LaTeX answers (both wrapped in \\boxed{} so they always parse)."""
    if not predicted.strip() or len(predicted) > _MAX_ANSWER_CHARS:
        return False
    try:
        return _POOL.call("boxed", gold_answer, predicted, timeout_s)
    except MathVerifyTimeout:
        return False


def math_verify_whole(gold_answer: str, output: str, timeout_s: float = 5.0) -> bool:
    """math-verify's own extraction over the output's tail (its last LaTeX/expression answer)."""
    if not output.strip():
        return False
    try:
        return _POOL.call("whole", gold_answer, output[-4 * _MAX_ANSWER_CHARS :], timeout_s)
    except MathVerifyTimeout:
        return False


def last_boxed(text: str) -> str | None:
    r"""Content of the last \boxed{...} (or \fbox{...}) with balanced braces; `\boxed 5` is accepted too."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    if text.startswith(" ", i) and not text.startswith(" {", i):
        # "\boxed 5": the token up to the next whitespace or $.
        m = re.match(r" ([^\s$]+)", text[i:])
        return m.group(1) if m else None
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None  # unbalanced: truncated output


def _fix_fracs(text: str) -> str:
    r"""\frac12 -> \frac{1}{2}, \frac1{2} -> \frac{1}{2} (single-character arguments given without braces)."""
    parts = text.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if not part or part[0] == "{":
            out += part
            continue
        if len(part) < 2:
            return text  # malformed: leave it alone
        a, rest = part[0], part[1:]
        if rest[0] == "{":
            out += "{" + a + "}" + rest
        else:
            out += "{" + a + "}{" + rest[0] + "}" + rest[1:]
    return out


def hendrycks_normalize(answer: str) -> str:
    """String normalisation in the spirit of Hendrycks et al.'s MATH `is_equiv` (lm-eval `hendrycks_math`).

    Kept beside math-verify so scores can be compared with harnesses that use plain string matching.
    """
    s = answer.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "").replace("$", "")
    if "\\text{ " in s:  # trailing units: "5 \text{ cm}" -> "5"
        s = s.split("\\text{ ")[0]
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    if s.count("=") == 1 and len(s.split("=")[0].strip()) <= 2:  # "k = 3" -> "3"
        s = s.split("=")[1]
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if m:
        s = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
    return s


def hendrycks_equal(gold: str, predicted: str | None) -> bool:
    if predicted is None:
        return False
    try:
        return hendrycks_normalize(gold) == hendrycks_normalize(predicted)
    except Exception:  # noqa: BLE001 - odd strings compare raw
        return gold == predicted


@register_task
class Math500(Task):
    name = "math500"
    category = "leaderboard"
    description = "MATH-500 (PRM800K split of MATH test), 0-shot chat, last \\boxed{} checked with math-verify"
    # accuracy: math-verify on the last \boxed{}; accuracy_any_extraction: math-verify's own extraction when there
    # is no box; accuracy_hendrycks: string match after Hendrycks-style normalisation (comparability).
    metrics = ("accuracy", "accuracy_any_extraction", "accuracy_hendrycks")
    binary_metrics = True
    max_new_tokens = 1024
    data_path = "math500/test.jsonl"
    hub = "HuggingFaceH4/MATH-500"
    timeout_s = 5.0

    def load(self, data_root: Path | None, limit: int | None = None) -> list[EvalItem]:
        rows = apply_limit(load_rows(self.name, data_root, self.data_path, self.hub), limit)
        return [
            EvalItem(
                item_id=row.get("unique_id") or f"math500-{idx:03d}",
                messages=[{"role": "user", "content": MATH_PROMPT.format(problem=row["problem"])}],
                reference=row["answer"],
                meta={
                    "problem": row["problem"],
                    "solution": row["solution"],
                    "subject": row.get("subject"),
                    "level": row.get("level"),
                },
            )
            for idx, row in enumerate(rows)
        ]

    def score(self, item: EvalItem, output: str) -> Score:
        try:
            text = output if isinstance(output, str) else str(output)
            boxed = last_boxed(text)
            boxed_ok = boxed is not None and math_equal(item.reference, boxed, self.timeout_s)
            # math-verify's own extraction picks the box too when there is one; only box-less answers differ.
            any_ok = boxed_ok if boxed is not None else math_verify_whole(item.reference, text, self.timeout_s)
        except MathVerifyUnavailable:
            raise  # a broken install must fail the run, not score the model 0
        except Exception as exc:  # noqa: BLE001 - a scorer never crashes on model output
            return Score({m: 0.0 for m in self.metrics}, details={"error": f"{type(exc).__name__}: {exc}"})
        values = {"accuracy": float(boxed_ok), "accuracy_any_extraction": float(any_ok),
                  "accuracy_hendrycks": float(hendrycks_equal(item.reference, boxed))}
        # Breakdowns (evals-reference §3.2): each item carries its own subject and level key.
        if item.meta.get("subject"):
            values[f"accuracy/subject:{item.meta['subject']}"] = float(boxed_ok)
        if item.meta.get("level") is not None:
            values[f"accuracy/level:{item.meta['level']}"] = float(boxed_ok)
        return Score(
            values,
            details={
                "gold": item.reference,
                "extracted": boxed,
                "subject": item.meta.get("subject"),
                "level": item.meta.get("level"),
            },
        )

    def aggregate(self, scores: list[Score]) -> dict[str, tuple[float, float, float, str]]:
        """accuracy, accuracy_any_extraction, then accuracy per subject and per level (each over its items)."""
        return summarize_metrics([s.values for s in scores], binary=True)

    def reference_output(self, item: EvalItem) -> str:
        return item.meta["solution"]

    def contamination_texts(self, item: EvalItem) -> list[str]:
        return [item.meta["problem"], item.meta["solution"]]
