"""Any OpenAI-compatible chat endpoint: `mixlab serve`, `vllm serve`, or a hosted API.

Configuration (arguments win over environment):
- base URL: `base_url=` or `MIXLAB_OPENAI_BASE_URL` or `OPENAI_BASE_URL` (default https://api.openai.com/v1);
- model: `model=` / the checkpoint name, or `MIXLAB_OPENAI_MODEL`;
- key: `api_key=` or `MIXLAB_OPENAI_API_KEY` or `OPENAI_API_KEY` (optional for local servers).
Requests go out concurrently (`concurrency` threads) over stdlib HTTP; connection errors, timeouts, 429 and 5xx
are retried with exponential backoff and jitter, other 4xx fail at once. When retries run out a MixlabError names
the endpoint and the last error.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from mixlab.errors import MixlabError
from mixlab.evals.backends.base import Backend, Generation, GenerationConfig, Messages, truncate_at_stop, validate_prompts

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class EndpointError(MixlabError):
    """The endpoint stayed unreachable or kept failing after all retries."""


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


class OpenAIClient:
    """A minimal chat-completions client with retries; shared by the openai backend and the LLM judge."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
    ):
        base = base_url or _env("MIXLAB_OPENAI_BASE_URL", "OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self.base_url = base.rstrip("/")
        self.api_key = api_key if api_key is not None else _env("MIXLAB_OPENAI_API_KEY", "OPENAI_API_KEY")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        url = f"{self.base_url}{path}"
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                time.sleep(delay * (0.5 + random.random() / 2))
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:300]
                last_error = f"HTTP {exc.code}: {detail}"
                if exc.code not in _RETRY_STATUS:
                    raise EndpointError(f"{method} {url} failed: {last_error}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                last_error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            except json.JSONDecodeError as exc:
                last_error = f"invalid JSON in response: {exc}"
        raise EndpointError(
            f"{method} {url} failed after {self.max_retries + 1} attempts (last error: {last_error}); "
            f"is the endpoint up? (set MIXLAB_OPENAI_BASE_URL or pass base_url)"
        )

    def models(self) -> list[str]:
        return [m["id"] for m in self._request("GET", "/models").get("data", [])]

    def chat(self, model: str, messages: Messages, cfg: GenerationConfig) -> dict:
        body: dict[str, Any] = {
            "model": model,
            "messages": list(messages),
            "max_tokens": cfg.max_new_tokens,
            "temperature": 0.0 if cfg.greedy else cfg.temperature,
            "top_p": cfg.top_p,
            "n": cfg.n,
            "seed": cfg.seed,
        }
        if cfg.stop:
            body["stop"] = list(cfg.stop)
        return self._request("POST", "/chat/completions", body)


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(
        self,
        model_or_path: str | None = None,
        tokenizer: Any = None,
        *,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
    ):
        self.model = model or (str(model_or_path) if model_or_path else None) or _env("MIXLAB_OPENAI_MODEL")
        if not self.model:
            raise MixlabError("backend 'openai' needs a model name (argument or MIXLAB_OPENAI_MODEL)")
        self.client = OpenAIClient(
            base_url, api_key, timeout_s=timeout_s, max_retries=max_retries, backoff_s=backoff_s
        )
        self.concurrency = max(1, concurrency)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "base_url": self.client.base_url}

    def _one(self, messages: Messages, cfg: GenerationConfig) -> Generation:
        response = self.client.chat(self.model, messages, cfg)
        choices = sorted(response.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) < cfg.n:
            # Some servers ignore `n`: ask again until there are enough samples.
            while len(choices) < cfg.n:
                more = self.client.chat(self.model, messages, cfg.replace(n=1, seed=cfg.seed + len(choices)))
                choices.extend(more.get("choices") or [])
        usage = response.get("usage") or {}
        texts, reasons = [], []
        for c in choices[: cfg.n]:
            content = (c.get("message") or {}).get("content") or ""
            text, stopped = truncate_at_stop(content, cfg.stop)
            texts.append(text)
            reasons.append("length" if c.get("finish_reason") == "length" else "stop")
        completion = usage.get("completion_tokens")
        per_sample = [completion if cfg.n == 1 else None] * cfg.n
        return Generation(texts, usage.get("prompt_tokens"), per_sample, reasons)

    def generate_detailed(self, prompts: Sequence[Messages], cfg: GenerationConfig) -> list[Generation]:
        validate_prompts(prompts)
        if self.concurrency == 1 or len(prompts) == 1:
            return [self._one(p, cfg) for p in prompts]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda p: self._one(p, cfg), prompts))
