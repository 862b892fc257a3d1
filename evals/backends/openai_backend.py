"""Any OpenAI-compatible chat endpoint: `mixlab serve`, `vllm serve`, or a hosted API.

Configuration (arguments win over environment):
- base URL: `base_url=` or `MIXLAB_OPENAI_BASE_URL` or `OPENAI_BASE_URL` (default https://api.openai.com/v1);
- model: `model=` / the checkpoint name, or `MIXLAB_OPENAI_MODEL`;
- key: `api_key=` or `MIXLAB_OPENAI_API_KEY` or `OPENAI_API_KEY` (optional for local servers).
Requests go out concurrently (`concurrency` threads) over stdlib HTTP; connection errors, timeouts, 408/409/425/429
and 5xx, and malformed replies (not JSON, not an object, `choices` empty or not a list of messages) are retried with
exponential backoff and jitter (429/503 `Retry-After` honoured up to the backoff cap), other 4xx fail at once. Every
loop is bounded: at most `max_retries + 1` attempts per request, replies read up to `MAX_REPLY_BYTES`. When retries
run out a MixlabError names the endpoint and the last error.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from mixlab.errors import MixlabError
from mixlab.evals.backends.base import Backend, Generation, GenerationConfig, Messages, truncate_at_stop, validate_prompts

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_REPLY_BYTES = 64 * 1024 * 1024  # far above any chat completion; bounds memory against a hostile endpoint


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

    def _request(self, method: str, path: str, body: dict | None = None,
                 check: Callable[[dict], str | None] | None = None) -> dict:
        """One request with bounded retries. `check(reply)` names what is wrong with a JSON object reply (then it
        is retried like a 5xx) or returns None."""
        url = f"{self.base_url}{path}"
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error = ""
        retry_after: float | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                delay *= 0.5 + random.random() / 2
                if retry_after is not None:
                    delay = max(delay, min(retry_after, self.max_backoff_s))
                time.sleep(delay)
            retry_after = None
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    raw = response.read(MAX_REPLY_BYTES + 1)
            except urllib.error.HTTPError as exc:
                detail = " ".join(exc.read(300).decode("utf-8", "replace").split())
                last_error = f"HTTP {exc.code}: {detail}" if detail else f"HTTP {exc.code}"
                if exc.code not in _RETRY_STATUS:
                    raise EndpointError(f"{method} {url} failed: {last_error}") from None
                retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                last_error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
                continue
            if len(raw) > MAX_REPLY_BYTES:
                last_error = f"reply larger than {MAX_REPLY_BYTES // (1024 * 1024)} MiB"
                continue
            try:
                reply = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                last_error = f"reply is not JSON ({exc}): {raw[:80]!r}"
                continue
            if not isinstance(reply, dict):
                last_error = f"reply is JSON but not an object: {raw[:80]!r}"
                continue
            problem = check(reply) if check else None
            if problem is None:
                return reply
            last_error = problem
        raise EndpointError(
            f"{method} {url} failed after {self.max_retries + 1} attempts (last error: {last_error}); "
            f"is the endpoint up? (set MIXLAB_OPENAI_BASE_URL or pass base_url)"
        )

    def models(self) -> list[str]:
        reply = self._request("GET", "/models", check=lambda r: None if isinstance(r.get("data"), list) and all(
            isinstance(m, dict) and isinstance(m.get("id"), str) for m in r["data"]) else "'data' is not a list of models")
        return [m["id"] for m in reply["data"]]

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
        return self._request("POST", "/chat/completions", body, check=_check_chat_reply)


def _check_chat_reply(reply: dict) -> str | None:
    """What makes a chat-completions reply unusable, or None. An empty `choices` list is an error, not an answer."""
    choices = reply.get("choices")
    if not isinstance(choices, list):
        return f"'choices' is {type(choices).__name__}, not a list"
    if not choices:
        return "'choices' is empty"
    for c in choices:
        message = c.get("message") if isinstance(c, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("content"), (str, type(None))):
            return "a choice has no message with text content"
    return None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


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
        choices = sorted(response["choices"], key=lambda c: c.get("index", 0) if isinstance(c.get("index"), int) else 0)
        # Some servers ignore `n`: ask for the missing samples one at a time. Each reply has at least one choice
        # (checked by the client), so this makes at most n - 1 more requests.
        while len(choices) < cfg.n:
            more = self.client.chat(self.model, messages, cfg.replace(n=1, seed=cfg.seed + len(choices)))
            choices.extend(more["choices"])
        usage = response.get("usage") if isinstance(response.get("usage"), dict) else {}
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
