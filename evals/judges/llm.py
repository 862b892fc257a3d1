"""LLM judges: a chat model grades answers through mixlab's templates; verdicts are cached in DuckDB.

The model behind a judge is any generation backend: `openai` (an OpenAI-compatible endpoint: a hosted API,
`vllm serve`, or `mixlab serve`) or `torch` (a causal LM from a local folder, run in-process = the "local judge").

Caching: a judgement is keyed by sha256(judge id, endpoint URL and model, template name@version, prompt hash,
answer hash) and stored in the `judgements` table; a repeated evaluation only pays for new (prompt, answer) pairs.
Judging runs in chunks and each finished chunk is written before the next starts, so when the endpoint dies mid-run
the finished judgements stay cached and the error says how many were done. `use_cache=False` (`--no-judge-cache`)
re-judges everything; the fresh verdicts replace the cached ones.

A reply with no verdict is asked again (`verdict_retries` more times, with backoff). One that still has none is
returned as "unparseable" (score NULL, raw text kept), counted by callers, reported in one warning line, and NOT
cached, so a re-run asks again; it never raises.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from mixlab.errors import MixlabError
from mixlab.evals.backends.base import Backend, GenerationConfig
from mixlab.evals.judges.parse import is_strong, outcome_for, parse_pairwise, parse_rating
from mixlab.evals.judges.templates import JudgeTemplate, get_template, mt_bench_template, single_template
from mixlab.store import JudgementRecord, Store, utcnow

UNPARSEABLE = "unparseable"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Judgement:
    verdict: str  # a rating as text ("7"), a pairwise verdict ("A>B"), or "unparseable"
    score: float | None  # rating for single; outcome for answer A (1/0.5/0) for pairwise; None when unparseable
    raw: str
    template: str
    cached: bool = False

    @property
    def parsed(self) -> bool:
        return self.verdict != UNPARSEABLE

    @property
    def rationale(self) -> str:
        return self.raw


@dataclass
class JudgeRequest:
    template: JudgeTemplate
    questions: list[str]
    answers: list[str]
    reference: list[str] | None = None
    answers_b: list[str] | None = None
    variant: str = ""  # "" for the verdict itself; "resample@T/seed" for a self-consistency re-grade

    def messages(self) -> list[dict[str, str]]:
        return self.template.render(self.questions, self.answers, self.reference, self.answers_b)

    @property
    def prompt_hash(self) -> str:
        return sha(json.dumps({"q": self.questions, "ref": self.reference}, sort_keys=True))

    @property
    def answer_hash(self) -> str:
        return sha(json.dumps({"a": self.answers, "b": self.answers_b}, sort_keys=True))


@dataclass
class PairwiseResult:
    """Two games with positions swapped. `preference` is the model's outcome when both orders agree (1 win, 0.5 tie,
    0 loss), a tie when they disagree, and None when either game has no verdict (`pairwise_preference`)."""

    games: list[Judgement]
    model_outcomes: list[float | None]
    preference: float | None
    strong: list[bool] = field(default_factory=list)

    @property
    def n_unparseable(self) -> int:
        return sum(o is None for o in self.model_outcomes)

    @property
    def consistent(self) -> bool | None:
        """Whether both orders gave the same outcome for the model (position-bias diagnostic)."""
        if any(o is None for o in self.model_outcomes):
            return None
        return self.model_outcomes[0] == self.model_outcomes[1]

    @property
    def rationale(self) -> str:
        return "\n\n".join(
            f"[game {i + 1}: model is {'A' if i == 0 else 'B'}; verdict {g.verdict}]\n{g.raw}"
            for i, g in enumerate(self.games)
        )


class LLMJudge:
    """Grades through `backend` with greedy decoding. `name` identifies the judge in cache keys and eval rows."""

    def __init__(
        self,
        backend: Backend,
        name: str,
        *,
        store: Store | None = None,
        max_new_tokens: int = 1024,
        chunk_size: int = 16,
        use_cache: bool = True,
        verdict_retries: int = 2,
        verdict_backoff_s: float = 1.0,
        warn: Callable[[str], None] | None = None,
    ):
        self.backend = backend
        self.name = name
        self.store = store
        self.gen_config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0)
        self.chunk_size = chunk_size
        self.use_cache = use_cache
        self.verdict_retries = max(0, verdict_retries)
        self.verdict_backoff_s = verdict_backoff_s
        self.warn = warn or _warn
        self.stats = {"requests": 0, "cache_hits": 0, "generated": 0, "unparseable": 0, "verdict_retries": 0}

    @property
    def id(self) -> str:
        return f"{self.name}|max_tokens={self.gen_config.max_new_tokens}"

    def describe(self) -> dict[str, Any]:
        return {"judge": self.name, "max_new_tokens": self.gen_config.max_new_tokens, **self.backend.describe()}

    @property
    def endpoint(self) -> str:
        """Where the verdicts come from: the same model name behind two URLs may be two different judges."""
        info = self.backend.describe()
        return f"{info.get('base_url') or ''}|{info.get('model') or ''}"

    def cache_key(self, request: JudgeRequest) -> str:
        variant = f"\x00{request.variant}" if request.variant else ""
        return sha(f"{self.id}\x00{self.endpoint}\x00{request.template.key}\x00{request.prompt_hash}\x00"
                   f"{request.answer_hash}{variant}")

    # -- the core: cached, chunked judging ---------------------------------------------------------------------

    def judge(
        self, requests: Sequence[JudgeRequest], progress: Callable[[int], None] | None = None
    ) -> list[Judgement]:
        keys = [self.cache_key(r) for r in requests]
        results: dict[int, Judgement] = {}
        cached = self._cache_get(keys) if self.use_cache else {}
        for i, key in enumerate(keys):
            if key in cached:
                results[i] = cached[key]
        self.stats["requests"] += len(requests)
        self.stats["cache_hits"] += len(results)
        if progress and results:
            progress(len(results))
        todo = [i for i in range(len(requests)) if i not in results]
        # Identical requests in one call are judged once.
        unique: dict[str, int] = {}
        for i in todo:
            unique.setdefault(keys[i], i)
        pending = list(unique.values())
        done = 0
        for start in range(0, len(pending), self.chunk_size):
            chunk = pending[start : start + self.chunk_size]
            try:
                fresh = self._judge_chunk(requests, chunk)
            except MixlabError as exc:
                raise MixlabError(
                    f"judge {self.name} failed after {done} of {len(pending)} new judgements "
                    f"({len(results)} from cache; finished ones are cached): {exc}"
                ) from exc
            # Only verdicts are final: an unparseable reply is asked again by the next run.
            self._cache_put([(keys[i], requests[i], j) for i, j in zip(chunk, fresh) if j.parsed])
            for i, j in zip(chunk, fresh):
                results[i] = j
            done += len(chunk)
            self.stats["generated"] += len(chunk)
            if progress:
                progress(len(chunk))
        for i in todo:
            if i not in results:  # a duplicate of a request judged above
                src = results[unique[keys[i]]]
                results[i] = Judgement(src.verdict, src.score, src.raw, src.template, cached=True)
                if progress:
                    progress(1)
        out = [results[i] for i in range(len(requests))]
        unparseable = sum(not j.parsed for j in out)
        self.stats["unparseable"] += unparseable
        if unparseable:
            self.warn(f"judge {self.name}: no verdict in {unparseable} of {len(out)} replies after "
                      f"{self.verdict_retries + 1} attempts each (kept as unparseable, not cached)")
        return out

    def _judge_chunk(self, requests: Sequence[JudgeRequest], chunk: list[int]) -> list[Judgement]:
        """Judge `chunk`; replies without a verdict are asked again, a bounded number of times with backoff."""
        fresh: dict[int, Judgement] = {}
        todo = list(chunk)
        for attempt in range(self.verdict_retries + 1):
            if attempt:
                time.sleep(self.verdict_backoff_s * 2 ** (attempt - 1))
                self.stats["verdict_retries"] += len(todo)
            replies: dict[int, str] = {}
            for config, group in self._by_config(requests, todo):
                replies.update(zip(group, self.backend.generate([requests[i].messages() for i in group], config)))
            for i in todo:
                fresh[i] = self._parse(requests[i].template, replies[i])
            todo = [i for i in todo if not fresh[i].parsed]
            if not todo:
                break
        return [fresh[i] for i in chunk]

    def _by_config(self, requests: Sequence[JudgeRequest], todo: list[int]) -> list[tuple[GenerationConfig, list[int]]]:
        """Greedy for verdicts; sampled (temperature and seed from the variant) for self-consistency re-grades."""
        groups: dict[str, list[int]] = {}
        for i in todo:
            groups.setdefault(requests[i].variant, []).append(i)
        out = []
        for variant, group in groups.items():
            if not variant:
                out.append((self.gen_config, group))
                continue
            temperature, seed = variant.removeprefix("resample@").split("/")
            out.append((GenerationConfig(max_new_tokens=self.gen_config.max_new_tokens, temperature=float(temperature),
                                         seed=int(seed)), group))
        return out

    @staticmethod
    def _parse(template: JudgeTemplate, text: str) -> Judgement:
        if template.kind == "single":
            rating = parse_rating(text)
            if rating is None:
                return Judgement(UNPARSEABLE, None, text, template.key)
            return Judgement(f"{rating:g}", rating, text, template.key)
        verdict = parse_pairwise(text)
        if verdict is None:
            return Judgement(UNPARSEABLE, None, text, template.key)
        return Judgement(verdict, outcome_for(verdict, "A"), text, template.key)

    def _cache_get(self, keys: list[str]) -> dict[str, Judgement]:
        if self.store is None or not keys:
            return {}
        found = self.store.get_judgements(keys)
        return {k: Judgement(r.verdict, r.score, r.raw or "", r.template, cached=True) for k, r in found.items()
                if r.verdict != UNPARSEABLE}  # rows from before unparseable replies stopped being cached

    def _cache_put(self, entries: list[tuple[str, JudgeRequest, Judgement]]) -> None:
        if self.store is None or not entries:  # (fresh verdicts are stored even with use_cache=False: a refresh)
            return
        now = utcnow()
        self.store.put_judgements([
            JudgementRecord(cache_key=key, judge=self.id, template=req.template.key, prompt_hash=req.prompt_hash,
                            answer_hash=req.answer_hash, verdict=j.verdict, score=j.score,
                            rationale=_short_rationale(j.raw), raw=j.raw, created_at=now)
            for key, req, j in entries
        ])

    # -- task-facing helpers -------------------------------------------------------------------------------------

    def grade(
        self,
        items: Sequence[tuple[list[str], list[str], list[str] | None]],
        progress: Callable[[int], None] | None = None,
        *,
        family: str = "mixlab",
    ) -> list[Judgement]:
        """1-10 grades. Each item: (user turns, assistant turns, reference turns or None); the last turn is graded.
        `family="mt-bench"` grades with MT-Bench's official prompts (FastChat's judge_prompts.jsonl)."""
        return self.judge(self.grade_requests(items, family=family), progress)

    @staticmethod
    def grade_requests(items: Sequence[tuple[list[str], list[str], list[str] | None]], *,
                       family: str = "mixlab") -> list[JudgeRequest]:
        if family not in ("mixlab", "mt-bench"):
            raise MixlabError(f"judge template family {family!r} unknown; use mixlab or mt-bench")
        pick = mt_bench_template if family == "mt-bench" else single_template
        return [JudgeRequest(pick(len(q) > 1, bool(ref)), list(q), list(a), list(ref) if ref else None)
                for q, a, ref in items]

    def self_consistency(self, requests: Sequence[JudgeRequest], verdicts: Sequence[Judgement], *,
                         n: int = 16, temperature: float = 0.7, seed: int = 1,
                         tolerance: float = 1.0) -> list[tuple[int, bool | None]]:
        """Re-grade up to `n` of `requests` (evenly spread, deterministic) by sampling at `temperature`, and say per
        re-graded index whether the two grades agree within `tolerance` points (None when either has no verdict).

        Greedy decoding gives the same text twice, so the second look samples: a judge whose grades move by more
        than a point between two reads of the same answer is a judge whose small differences mean nothing. The
        re-grades are cached under their own key (template, prompt, answer and the sampling settings)."""
        if not requests or n <= 0:
            return []
        step = max(1, len(requests) // n)
        picked = list(range(0, len(requests), step))[:n]
        variant = f"resample@{temperature:g}/{seed}"
        again = self.judge([JudgeRequest(requests[i].template, requests[i].questions, requests[i].answers,
                                         requests[i].reference, requests[i].answers_b, variant=variant)
                            for i in picked])
        out = []
        for i, second in zip(picked, again):
            first = verdicts[i]
            if not (first.parsed and second.parsed) or first.score is None or second.score is None:
                out.append((i, None))
            else:
                out.append((i, abs(first.score - second.score) <= tolerance))
        return out

    def compare_to_baseline(
        self,
        items: Sequence[tuple[str, str, str]],
        progress: Callable[[int], None] | None = None,
    ) -> list[PairwiseResult]:
        """Pairwise games of (prompt, model answer, baseline answer), each played in both orders."""
        template = get_template("pairwise")
        requests: list[JudgeRequest] = []
        for prompt, model_answer, baseline in items:
            requests.append(JudgeRequest(template, [prompt], [model_answer], answers_b=[baseline]))  # model = A
            requests.append(JudgeRequest(template, [prompt], [baseline], answers_b=[model_answer]))  # model = B
        games = self.judge(requests, progress)
        results = []
        for k in range(len(items)):
            first, second = games[2 * k], games[2 * k + 1]
            outcomes = [outcome_for(_verdict(first), "A"), outcome_for(_verdict(second), "B")]
            results.append(
                PairwiseResult(
                    games=[first, second],
                    model_outcomes=outcomes,
                    preference=pairwise_preference(outcomes),
                    strong=[is_strong(_verdict(first)), is_strong(_verdict(second))],
                )
            )
        return results


def pairwise_preference(outcomes: Sequence[float | None]) -> float | None:
    """The model's outcome over the two orders: theirs when both orders agree, a tie (0.5) when they disagree
    (the verdict followed the position, not the answers), None unless both orders have a verdict."""
    if len(outcomes) != 2 or any(o is None for o in outcomes):
        return None
    return outcomes[0] if outcomes[0] == outcomes[1] else 0.5


def _verdict(j: Judgement) -> str | None:
    return j.verdict if j.parsed else None


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _short_rationale(raw: str, limit: int = 2000) -> str:
    return raw if len(raw) <= limit else raw[:limit] + " ..."
