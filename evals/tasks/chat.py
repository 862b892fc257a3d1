"""Judge-based chat tasks: MT-Bench (1-10 grades, two turns), AlpacaEval and Arena-Hard (pairwise vs a baseline).

These tasks need a judge (`--judge openai:MODEL[@URL]` or `local:PATH`); the runner attaches it as `task.judge`.
They override three hooks of the task contract (`evals/tasks/base.py`):
- `generate(backend, items, cfg) -> list[Completion]`: MT-Bench asks turn 2 in the same conversation, after the
  model's own turn-1 answer;
- `score_batch(items, completions, progress) -> list[Score]`: judging is batched (and cached in DuckDB);
- `aggregate(scores)`: win rates get mixlab's length-controlled win rate (`evals/lc_winrate.py`) beside the raw one.

A judged metric is absent from a sample's `Score.values` when the verdict was unparseable, so every metric's n
counts parsed judgements only; `judge_unparseable` (per sample, the fraction of its judgements that could not be
parsed) makes the loss visible.

Pairwise games are played twice with positions swapped (model as A, then as B); a sample's `win_rate` value is
the model's mean outcome over the parsed games (win 1, tie 0.5, loss 0).

`--limit N` takes a balanced prefix: MT-Bench items are interleaved across its 8 categories and AlpacaEval's
across its 5 sources (the files are sorted by them).

Data: MT-Bench from FastChat (Apache-2.0); AlpacaEval 2.0's 805 instructions with the gpt4_1106_preview baseline
outputs (CC BY-NC 4.0: evaluation only, never training); Arena-Hard v0.1's 500 prompts with the gpt-4-0314
baseline answers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from mixlab.errors import MixlabError
from mixlab.evals.lc_winrate import instruction_difficulty, lc_win_rate
from mixlab.evals.stats import mean_ci
from mixlab.evals.style import style_stats
from mixlab.evals.tasks._data import apply_limit, load_rows
from mixlab.jsonl import read_jsonl
from mixlab.evals.tasks.base import Completion, EvalItem, Score, Task, register_task

TURN_SEPARATOR = "\n\n<<<mixlab:turn {n}>>>\n\n"


def join_turns(turns: Sequence[str]) -> str:
    out = turns[0] if turns else ""
    for n, turn in enumerate(turns[1:], start=2):
        out += TURN_SEPARATOR.format(n=n) + turn
    return out


def split_turns(text: str, n_turns: int) -> list[str]:
    turns, rest = [], text
    for n in range(2, n_turns + 1):
        head, sep, tail = rest.partition(TURN_SEPARATOR.format(n=n))
        turns.append(head)
        rest = tail if sep else ""
    turns.append(rest)
    return turns


class JudgedChatTask(Task):
    category = "usability"
    binary_metrics = False
    max_new_tokens = 1024
    needs_judge: ClassVar[bool] = True

    def _require_judge(self):
        if self.judge is None:
            raise MixlabError(
                f"task {self.name} needs a judge: pass --judge openai:MODEL[@BASE_URL] (e.g. a `mixlab serve` "
                "or `vllm serve` endpoint) or --judge local:PATH"
            )
        if not hasattr(self.judge, "compare_to_baseline"):
            raise MixlabError(f"task {self.name} needs an LLM judge, not {getattr(self.judge, 'name', self.judge)!r}")
        return self.judge

    def score(self, item: EvalItem, output: str) -> Score:
        return self.score_batch([item], [Completion(output if isinstance(output, str) else str(output or ""))])[0]

    def score_batch(
        self, items: Sequence[EvalItem], completions: Sequence[Completion], progress: Callable[[int], None] | None = None
    ) -> list[Score]:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------------
# MT-Bench
# ---------------------------------------------------------------------------------------------------------------

NEED_REFERENCE = ("math", "reasoning", "coding")


@register_task
class MTBench(JudgedChatTask):
    name = "mt-bench"
    description = "MT-Bench: 80 two-turn questions in 8 categories, graded 1-10 by an LLM judge (refs for math/reasoning/coding)"
    metrics = ("score", "score_turn1", "score_turn2", "judge_unparseable", "judge_self_consistency")
    # Grades re-read by sampling to measure the judge's self-consistency (LLMJudge.self_consistency).
    consistency_grades: ClassVar[int] = 16
    questions_path = "mt_bench/question.jsonl"
    references_path = "mt_bench/reference_answer/gpt-4.jsonl"
    hub = "HuggingFaceH4/mt_bench_prompts"

    def load(self, data_root: Path | None, limit: int | None = None) -> list[EvalItem]:
        rows = load_rows(self.name, data_root, self.questions_path, self.hub, split="train")
        references: dict[int, list[str]] = {}
        if data_root is not None and (Path(data_root) / self.references_path).is_file():
            for row in read_jsonl(Path(data_root) / self.references_path):
                references[int(row["question_id"])] = list(row["choices"][0]["turns"])
        items = []
        for lineno, row in enumerate(rows, 1):
            qid = row.get("question_id", row.get("prompt_id"))
            turns = row.get("turns", row.get("prompt"))
            if qid is None or not isinstance(turns, list) or len(turns) != 2 or "category" not in row:
                raise MixlabError(
                    f"task {self.name}: {self.questions_path} row {lineno} needs question_id, category and 2 turns"
                )
            category = row["category"]
            reference = references.get(int(qid)) or row.get("reference")
            if category in NEED_REFERENCE and not reference:
                raise MixlabError(
                    f"task {self.name}: question {qid} ({category}) needs a reference answer; expected it in "
                    f"{self.references_path} under the data root"
                )
            items.append(
                EvalItem(
                    item_id=f"mt-bench-{qid}",
                    messages=[{"role": "user", "content": turns[0]}],
                    reference=list(reference) if (reference and category in NEED_REFERENCE) else None,
                    meta={"category": category, "turns": list(turns), "question_id": int(qid)},
                )
            )
        return apply_limit(interleave(items, lambda i: i.meta["category"]), limit)

    def contamination_texts(self, item: EvalItem) -> list[str]:
        return list(item.meta["turns"]) + list(item.reference or [])

    def judgements_per_item(self) -> int:
        return 2

    def generate(self, backend, items: Sequence[EvalItem], cfg) -> list[Completion]:
        """Turn 1 for every item, then turn 2 in the same conversation after the model's own first answer."""
        first = backend.generate_detailed([item.messages for item in items], cfg)
        second_prompts = [
            [*item.messages, {"role": "assistant", "content": g.text}, {"role": "user", "content": item.meta["turns"][1]}]
            for item, g in zip(items, first)
        ]
        second = backend.generate_detailed(second_prompts, cfg)
        out = []
        for g1, g2 in zip(first, second):
            tokens = [g1.output_tokens[0] if g1.output_tokens else None, g2.output_tokens[0] if g2.output_tokens else None]
            out.append(
                Completion(
                    text=join_turns([g1.text, g2.text]),
                    prompt_tokens=g2.prompt_tokens,
                    output_tokens=None if None in tokens else sum(tokens),
                    finish_reason=g2.finish_reasons[0] if g2.finish_reasons else None,
                    extra={"turns": [g1.text, g2.text], "finish_reasons": [*g1.finish_reasons, *g2.finish_reasons]},
                )
            )
        return out

    def score_batch(self, items, completions, progress=None) -> list[Score]:
        judge = self._require_judge()
        requests = []
        for item, comp in zip(items, completions):
            answers = comp.extra.get("turns") or split_turns(comp.text, 2)
            questions = item.meta["turns"]
            requests.append((questions[:1], answers[:1], item.reference))
            requests.append((questions, answers[:2], item.reference))
        # MT-Bench's official prompts, so scores are comparable with published ones.
        judge_requests = judge.grade_requests(requests, family="mt-bench")
        grades = judge.judge(judge_requests, progress)
        consistent = dict(judge.self_consistency(judge_requests, grades, n=self.consistency_grades))
        scores = []
        for k, item in enumerate(items):
            g1, g2 = grades[2 * k], grades[2 * k + 1]
            values: dict[str, float] = {}
            agreed = [consistent[i] for i in (2 * k, 2 * k + 1) if consistent.get(i) is not None]
            if agreed:
                values["judge_self_consistency"] = sum(agreed) / len(agreed)
            parsed = [g.score for g in (g1, g2) if g.parsed]
            if parsed:
                values["score"] = sum(parsed) / len(parsed)
            if g1.parsed:
                values["score_turn1"] = g1.score
            if g2.parsed:
                values["score_turn2"] = g2.score
            values["judge_unparseable"] = (2 - len(parsed)) / 2
            scores.append(
                Score(
                    values,
                    rationale=f"[turn 1: {g1.verdict}]\n{g1.raw}\n\n[turn 2: {g2.verdict}]\n{g2.raw}",
                    details={
                        "category": item.meta["category"],
                        "verdicts": [g1.verdict, g2.verdict],
                        "cached": [g1.cached, g2.cached],
                        "template": [g1.template, g2.template],
                    },
                )
            )
        return scores

    def aggregate(self, scores: list[Score]) -> dict[str, tuple[float, float, float, str]]:
        out = {m: _mean_ci_present(scores, m) for m in self.metrics}
        # Per-category means: where a mixture helps or hurts (e.g. math up, writing down).
        categories = sorted({s.details.get("category") for s in scores if s.details.get("category")})
        for category in categories:
            out[f"score/{category}"] = _mean_ci_present([s for s in scores if s.details.get("category") == category], "score")
        return out


# ---------------------------------------------------------------------------------------------------------------
# Pairwise against a baseline: AlpacaEval, Arena-Hard
# ---------------------------------------------------------------------------------------------------------------


class PairwiseBaselineTask(JudgedChatTask):
    metrics = ("lc_win_rate", "win_rate", "judge_consistency", "judge_unparseable", "length_chars", "baseline_length_chars")
    sample_metric = "win_rate"  # per item; lc_win_rate exists only in aggregate
    style_control: ClassVar[bool] = False
    # (eval_id, item_id, preference, Δlen) of other models judged by the same judge on this task; set by the
    # runner through `prepare_aggregate`, it gives the LC regression per-instruction difficulty.
    history: list[tuple[str, str, float, float]] | None = None

    def prepare_aggregate(self, *, store, eval_id: str, judge_id: str | None) -> None:
        rows = store.peer_samples(self.name, judge_id, exclude_eval_id=eval_id)
        history = []
        for row in rows:
            try:
                extra = json.loads(row["extra"] or "{}")
                pref = extra["scores"].get("win_rate")
                details = extra["details"]
                delta = float(details["len_model"]) - float(details["len_baseline"])
            except (KeyError, TypeError, ValueError):
                continue
            if pref is not None:
                history.append((row["eval_id"], row["item_id"], float(pref), delta))
        self.history = history

    def judgements_per_item(self) -> int:
        return 2

    def contamination_texts(self, item: EvalItem) -> list[str]:
        return [item.prompt_text]

    def score_batch(self, items, completions, progress=None) -> list[Score]:
        judge = self._require_judge()
        results = judge.compare_to_baseline(
            [(item.prompt_text, comp.text, item.reference) for item, comp in zip(items, completions)], progress
        )
        scores = []
        for item, comp, res in zip(items, completions, results):
            values: dict[str, float] = {
                "judge_unparseable": res.n_unparseable / 2,
                "length_chars": float(len(comp.text)),
                "baseline_length_chars": float(len(item.reference)),
            }
            if res.preference is not None:
                values["win_rate"] = res.preference
            if res.consistent is not None:
                values["judge_consistency"] = float(res.consistent)
            scores.append(
                Score(
                    values,
                    rationale=res.rationale,
                    details={
                        "item_id": item.item_id,
                        "verdicts": [g.verdict for g in res.games],
                        "model_outcomes": res.model_outcomes,
                        "strong": res.strong,
                        "cached": [g.cached for g in res.games],
                        "len_model": len(comp.text),
                        "len_baseline": len(item.reference),
                        "style_model": _markdown_density(comp.text),
                        "style_baseline": _markdown_density(item.reference),
                    },
                )
            )
        return scores

    def aggregate(self, scores: list[Score]) -> dict[str, tuple[float, float, float, str]]:
        out = {m: _mean_ci_present(scores, m) for m in self.metrics if m != "lc_win_rate"}
        judged = [s for s in scores if "win_rate" in s.values]
        prefs = [s.values["win_rate"] for s in judged]
        len_m = [s.details.get("len_model", s.values.get("length_chars", 0.0)) for s in judged]
        len_b = [s.details.get("len_baseline", s.values.get("baseline_length_chars", 0.0)) for s in judged]
        if judged:
            difficulty, method = self._difficulty(judged, len_m, len_b), "bootstrap-glm"
            if difficulty is not None:
                method += f"+difficulty({len({h[0] for h in self.history or []}) + 1} models)"
            lc = lc_win_rate(prefs, len_m, len_b, difficulty=difficulty)
            out["lc_win_rate"] = (lc.lc_win_rate, lc.ci_low, lc.ci_high, method)
            # How strongly this judge rewards length here (log-odds per unit of tanh(Δlen/σ)).
            coef = lc.coef.get("length", math.nan)
            out["length_bias_coef"] = (coef, coef, coef, "glm")
            if self.style_control:
                style = np.array([_style_features(s.details) for s in judged])
                sc = lc_win_rate(prefs, len_m, len_b, style=style)
                out["sc_win_rate"] = (sc.lc_win_rate, sc.ci_low, sc.ci_high, "bootstrap-glm")
        else:
            out["lc_win_rate"] = (math.nan, math.nan, math.nan, "none")
        ordered = {m: out[m] for m in self.metrics if m in out}
        ordered.update({k: v for k, v in out.items() if k not in ordered})
        return ordered


    def _difficulty(self, judged: list[Score], len_m: list[float], len_b: list[float]) -> list[float] | None:
        """Per-instruction difficulty from a joint fit over this and the other models' judgements, when there
        are other models on shared instructions (one model alone cannot separate difficulty from quality)."""
        ids = [s.details.get("item_id") for s in judged]
        history = [h for h in (self.history or []) if h[1] in set(ids)]
        if not history or None in ids:
            return None
        current = [("__this_run__", i, s.values["win_rate"], lm - lb) for i, s, lm, lb in zip(ids, judged, len_m, len_b)]
        rows = history + current
        gamma = instruction_difficulty([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                                       [r[3] for r in rows])
        return [gamma[i] for i in ids]


@register_task
class AlpacaEval(PairwiseBaselineTask):
    name = "alpaca-eval"
    description = "AlpacaEval 2.0: 805 instructions judged pairwise vs gpt4_1106_preview, with mixlab's LC win rate (CC BY-NC: eval only)"
    data_path = "alpaca_eval/model_outputs.json"
    hub = "tatsu-lab/alpaca_eval"

    def load(self, data_root: Path | None, limit: int | None = None) -> list[EvalItem]:
        path = Path(data_root) / self.data_path if data_root is not None else None
        if path is None or not path.is_file():
            where = path or f"<data root>/{self.data_path} (no data root set)"
            raise MixlabError(
                f"task {self.name}: data not found at {where}; the baseline outputs are results/gpt4_1106_preview/"
                f"model_outputs.json of github.com/tatsu-lab/alpaca_eval (hub dataset {self.hub!r})"
            )
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise MixlabError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        items = []
        for idx, row in enumerate(rows):
            if not isinstance(row, dict) or not row.get("instruction") or not isinstance(row.get("output"), str):
                raise MixlabError(f"task {self.name}: {path} entry {idx} needs 'instruction' and 'output'")
            items.append(
                EvalItem(
                    item_id=f"alpaca-eval-{idx:03d}",
                    messages=[{"role": "user", "content": row["instruction"]}],
                    reference=row["output"],
                    meta={"dataset": row.get("dataset"), "baseline": row.get("generator")},
                )
            )
        return apply_limit(interleave(items, lambda i: i.meta["dataset"]), limit)


@register_task
class ArenaHard(PairwiseBaselineTask):
    name = "arena-hard"
    description = "Arena-Hard v0.1: 500 hard prompts judged pairwise vs gpt-4-0314, with LC and style-controlled win rates"
    metrics = (*PairwiseBaselineTask.metrics, "sc_win_rate")
    style_control = True
    questions_path = "arena_hard/arena-hard-v0.1/question.jsonl"
    baseline_path = "arena_hard/arena-hard-v0.1/model_answer/gpt-4-0314.jsonl"
    hub = "lmarena-ai/arena-hard-auto"

    def load(self, data_root: Path | None, limit: int | None = None) -> list[EvalItem]:
        questions = load_rows(self.name, data_root, self.questions_path, self.hub, split="train")
        baseline_file = Path(data_root) / self.baseline_path if data_root is not None else None
        if baseline_file is None or not baseline_file.is_file():
            raise MixlabError(
                f"task {self.name}: baseline answers not found at {baseline_file or '<data root>/' + self.baseline_path}"
            )
        baseline: dict[str, str] = {}
        for lineno, row in enumerate(read_jsonl(baseline_file), 1):
            answer = _arena_answer(row)
            if answer is None:
                raise MixlabError(f"{baseline_file}:{lineno}: no assistant answer in 'messages'")
            baseline[row["uid"]] = answer
        items = []
        for lineno, row in enumerate(questions, 1):
            uid = row.get("uid") or row.get("question_id")
            prompt = row.get("prompt")
            if prompt is None and row.get("turns"):
                prompt = row["turns"][0]["content"]
            if not uid or not isinstance(prompt, str):
                raise MixlabError(f"task {self.name}: {self.questions_path} row {lineno} needs uid and prompt")
            if uid not in baseline:
                raise MixlabError(f"task {self.name}: question {uid} has no baseline answer in {baseline_file}")
            items.append(
                EvalItem(
                    item_id=f"arena-hard-{uid}",
                    messages=[{"role": "user", "content": prompt}],
                    reference=baseline[uid],
                    meta={"cluster": row.get("cluster"), "category": row.get("category")},
                )
            )
        return apply_limit(items, limit)


def _arena_answer(row: dict[str, Any]) -> str | None:
    for message in reversed(row.get("messages") or []):
        if message.get("role") == "assistant":
            content = message.get("content")
            if isinstance(content, dict):
                content = content.get("answer")
            return content if isinstance(content, str) else None
    return None


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def interleave(items: list[EvalItem], key: Callable[[EvalItem], Any]) -> list[EvalItem]:
    """Round-robin over groups (in order of first appearance), keeping each group's order: the files are sorted
    by category/source, so a plain `--limit 8` would be all "writing"; this way every prefix is balanced."""
    groups: dict[Any, list[EvalItem]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    out: list[EvalItem] = []
    queues = [list(g) for g in groups.values()]
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop(0))
    return out


def _mean_ci_present(scores: Sequence[Score], metric: str) -> tuple[float, float, float, str]:
    values = [s.values[metric] for s in scores if metric in s.values]
    if not values:
        return (math.nan, math.nan, math.nan, "none")
    binary = all(v in (0.0, 1.0) for v in values) and metric in ("judge_consistency",)
    return mean_ci(values, binary=binary)


def _markdown_density(text: str) -> list[float]:
    """Headers, list items and bold spans per character (Arena-Hard's style features, code blocks removed)."""
    stats = style_stats(text)
    length = stats["chars"] + 1.0
    return [stats["md_headers"] / length, stats["md_list_items"] / length, stats["md_bold"] / length]


def _style_features(details: dict[str, Any]) -> list[float]:
    a, b = details["style_model"], details["style_baseline"]
    return [(x - y) / (x + y + 1e-9) if (x + y) > 0 else 0.0 for x, y in zip(a, b)]
