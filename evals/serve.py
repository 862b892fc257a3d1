"""`mixlab serve`: a small OpenAI-compatible HTTP server over the torch backend.

Endpoints: `GET /v1/models`, `POST /v1/chat/completions` (non-streaming), `GET /health`. For a Kimi Linear model
every request joins the generation engine's running batch as it arrives and leaves it when done (continuous
batching, `mixlab.evals.engine`), whatever its decoding settings: each sequence samples from its own seeded stream,
so a request's `seed` alone determines its samples. Other models (the torch backend's plain loop) micro-batch
concurrent greedy requests with equal settings into one left-padded batch; their sampled requests run alone.

Uses stdlib `ThreadingHTTPServer`: no extra dependency, fine for a lab-scale server; production serving of
official-size checkpoints is `vllm serve`.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mixlab.errors import MixlabError
from mixlab.evals.backends import get_backend
from mixlab.evals.backends.base import Backend, Generation, GenerationConfig, truncate_at_stop, validate_prompts
from mixlab.evals.backends.torch_backend import encode_chat
from mixlab.evals.engine import CapacityError, EngineWorker


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


@dataclass
class _Job:
    messages: list[dict[str, str]]
    cfg: GenerationConfig
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """One worker thread owns the model; requests queue up and compatible ones share a batch."""

    def __init__(self, backend: Backend, *, max_batch: int = 16, max_wait_s: float = 0.01):
        self.backend = backend
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="mixlab-serve-generate", daemon=True)
        self._worker.start()

    def submit(self, messages: list[dict[str, str]], cfg: GenerationConfig) -> Future:
        job = _Job(messages, cfg)
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        pending: list[_Job] = []
        while True:
            job = pending.pop(0) if pending else self._queue.get()
            if job is None:
                return
            batch = [job]
            if job.cfg.greedy:
                deadline = time.monotonic() + self.max_wait_s
                while len(batch) < self.max_batch:
                    try:
                        nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if nxt is None:
                        self._queue.put(None)
                        break
                    (batch if nxt.cfg == job.cfg else pending).append(nxt)
            try:
                gens = self.backend.generate_detailed([j.messages for j in batch], job.cfg)
            except Exception as exc:  # the server must survive a failed batch; each caller gets the error
                for j in batch:
                    j.future.set_exception(exc)
                continue
            for j, g in zip(batch, gens):
                j.future.set_result(g)


class EngineBatcher:
    """Requests go straight into the engine's running batch (a worker thread steps it)."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.worker = EngineWorker(backend.engine)

    def submit(self, messages: list[dict[str, str]], cfg: GenerationConfig) -> Future:
        tok = self.backend.tokenizer
        ids = encode_chat(tok, messages)
        try:
            inner = self.worker.submit(ids, cfg)
        except CapacityError as exc:
            raise RequestError(400, str(exc), "max_tokens") from None
        outer: Future = Future()

        def finish(f: Future) -> None:
            try:
                samples = f.result()
            except Exception as exc:  # noqa: BLE001 - handed to the waiting request
                outer.set_exception(exc)
                return
            texts, reasons = [], []
            for tokens, reason in samples:
                text, stopped = truncate_at_stop(tok.decode(tokens, skip_special_tokens=True), cfg.stop)
                texts.append(text)
                reasons.append("stop" if reason == "stop" or stopped else "length")
            outer.set_result(Generation(texts, len(ids), [len(t) for t, _ in samples], reasons))

        inner.add_done_callback(finish)
        return outer

    def close(self) -> None:
        self.worker.close()


def _parse_config(body: dict[str, Any], max_tokens_cap: int) -> GenerationConfig:
    def number(name: str, default: float, kind=float) -> Any:
        value = body.get(name, default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(400, f"'{name}' must be a number, got {value!r}", name)
        return kind(value)

    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = max_tokens_cap
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise RequestError(400, f"'max_tokens' must be an integer, got {max_tokens!r}", "max_tokens")
    if max_tokens < 1:
        raise RequestError(400, "'max_tokens' must be >= 1", "max_tokens")
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise RequestError(400, "'stop' must be a string or a list of strings", "stop")
    try:
        return GenerationConfig(
            max_new_tokens=min(max_tokens, max_tokens_cap),
            temperature=number("temperature", 1.0),
            top_p=number("top_p", 1.0),
            stop=tuple(stop),
            n=number("n", 1, int),
            seed=number("seed", 0, int),
        )
    except MixlabError as exc:
        raise RequestError(400, str(exc)) from None


def make_server(
    backend: Backend, *, host: str = "127.0.0.1", port: int = 8000, model_name: str = "mixlab", max_tokens_cap: int = 2048,
    max_batch: int = 16,
) -> ThreadingHTTPServer:
    if getattr(backend, "use_engine", False):
        batcher = EngineBatcher(backend)
    else:
        batcher = MicroBatcher(backend, max_batch=max_batch)
    created = int(time.time())

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "mixlab-serve"

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet by default; errors are in the responses
            pass

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, param: str | None = None) -> None:
            kind = "invalid_request_error" if status < 500 else "server_error"
            self._send(status, {"error": {"message": message, "type": kind, "param": param, "code": status}})

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            path = self.path.split("?")[0].rstrip("/")
            if path in ("/v1/models", "/models"):
                self._send(200, {"object": "list", "data": [
                    {"id": model_name, "object": "model", "created": created, "owned_by": "mixlab"}
                ]})
            elif path == "/health":
                self._send(200, {"status": "ok", "model": model_name, **backend.describe()})
            else:
                self._error(404, f"no route GET {path}; try /v1/models or POST /v1/chat/completions")

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?")[0].rstrip("/")
            if path not in ("/v1/chat/completions", "/chat/completions"):
                self._error(404, f"no route POST {path}; try /v1/chat/completions")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError as exc:
                    raise RequestError(400, f"request body is not JSON: {exc}") from None
                if not isinstance(body, dict):
                    raise RequestError(400, "request body must be a JSON object")
                if body.get("stream"):
                    raise RequestError(400, "streaming is not supported by mixlab serve; send stream=false", "stream")
                requested = body.get("model")
                if requested not in (None, "", model_name):
                    raise RequestError(404, f"model {requested!r} is not served here; this server has {model_name!r}",
                                       "model")
                messages = body.get("messages")
                try:
                    validate_prompts([messages])
                except MixlabError as exc:
                    raise RequestError(400, f"'messages': {exc}", "messages") from None
                cfg = _parse_config(body, max_tokens_cap)
                gen = batcher.submit(messages, cfg).result()
            except RequestError as exc:
                self._error(exc.status, exc.message, exc.param)
                return
            except Exception as exc:  # noqa: BLE001 - report, keep serving
                self._error(500, f"generation failed: {type(exc).__name__}: {exc}")
                return
            completion_tokens = sum(t or 0 for t in gen.output_tokens)
            self._send(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model_name,
                "choices": [
                    {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
                    for i, (text, reason) in enumerate(zip(gen.texts, gen.finish_reasons))
                ],
                "usage": {
                    "prompt_tokens": gen.prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": (gen.prompt_tokens or 0) + completion_tokens,
                },
            })

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.batcher = batcher  # type: ignore[attr-defined]
    return server


def serve(
    checkpoint: str, *, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None,
    device: str | None = None, batch_size: int = 16, max_tokens_cap: int = 2048, tokenizer: str | None = None,
    announce=print,
) -> None:
    """Load the checkpoint (folder or preset) and serve until interrupted."""
    backend = get_backend("torch", checkpoint, tokenizer, device=device, batch_size=batch_size)
    name = model_name or Path(str(checkpoint).rstrip("/")).name
    try:
        server = make_server(backend, host=host, port=port, model_name=name, max_tokens_cap=max_tokens_cap,
                             max_batch=batch_size)
    except OSError as exc:
        raise MixlabError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    bound_host, bound_port = server.server_address[:2]
    # Tests and scripts read this line to learn the port (with --port 0 the OS picks one).
    announce(f"mixlab serve: {name} listening on http://{bound_host}:{bound_port}/v1", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.batcher.close()  # type: ignore[attr-defined]
