"""A thread that owns an `Engine` and steps it while there is work: callers on other threads (the HTTP handlers of
`mixlab serve`) submit requests and wait on their futures, and concurrent requests share the running batch."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Sequence

from mixlab.evals.backends.base import GenerationConfig
from mixlab.evals.engine.engine import Engine


class EngineWorker:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="mixlab-engine", daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: Sequence[int], cfg: GenerationConfig, seed_key: int = 0) -> Future:
        """Future of the request's `outputs`; raises CapacityError here when it can never fit."""
        req = self.engine.submit(prompt_ids, cfg, seed_key)
        self._wake.set()
        return req.future

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop:
            if not self.engine.has_work():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                self.engine.step()
            except Exception:  # noqa: BLE001 - step() already failed the affected requests' futures
                continue
