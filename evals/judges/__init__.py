"""Judges: LLM judges (remote over an OpenAI-compatible endpoint, or local in-process) and a rubric judge.

    judge = get_judge("openai:gpt-4o-mini", store=store)              # base URL / key from the environment
    judge = get_judge("openai:tiny@http://127.0.0.1:8000/v1", store=store)   # e.g. a `mixlab serve` process
    judge = get_judge("local:/path/to/judge-model", store=store)     # a causal LM folder, run through torch
    judge = get_judge("rubric")                                      # rule-verified instructions, no model

The judge's identity is its spec without the URL (`openai:MODEL`, `local:PATH`): it names the judge in
eval_runs, and with the template version keys the DuckDB judgement cache.
"""

from __future__ import annotations

from typing import Any

from mixlab.errors import MixlabError
from mixlab.evals.backends import get_backend
from mixlab.evals.judges.llm import Judgement, JudgeRequest, LLMJudge, PairwiseResult
from mixlab.evals.judges.rubric import RubricJudge
from mixlab.store import Store

__all__ = ["get_judge", "LLMJudge", "RubricJudge", "Judgement", "JudgeRequest", "PairwiseResult"]


def get_judge(spec: str, *, store: Store | None = None, **opts: Any) -> LLMJudge | RubricJudge:
    """Build a judge from `openai:MODEL[@BASE_URL]`, `local:PATH_OR_PRESET` or `rubric`.

    `opts` go to the backend (e.g. `max_retries`, `timeout_s`, `concurrency` for openai; `device`,
    `batch_size` for local) except `max_new_tokens`, `chunk_size`, `use_cache`, `verdict_retries`,
    `verdict_backoff_s` and `warn`, which go to the judge.
    """
    judge_opts = {k: opts.pop(k) for k in ("max_new_tokens", "chunk_size", "use_cache", "verdict_retries",
                                           "verdict_backoff_s", "warn") if k in opts}
    if spec == "rubric":
        return RubricJudge()
    kind, _, rest = spec.partition(":")
    if kind == "openai" and rest:
        model, _, base_url = rest.partition("@")
        backend = get_backend("openai", model=model, base_url=base_url or None, **opts)
        return LLMJudge(backend, f"openai:{model}", store=store, **judge_opts)
    if kind == "local" and rest:
        backend = get_backend("torch", rest, opts.pop("tokenizer", None), **opts)
        return LLMJudge(backend, f"local:{rest}", store=store, **judge_opts)
    raise MixlabError(
        f"judge spec {spec!r} not understood; use openai:MODEL[@BASE_URL], local:PATH_OR_PRESET or rubric"
    )
