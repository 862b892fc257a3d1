"""The generation engine: continuous batching over the hybrid model's paged cache.

    engine = Engine(model, eos_ids={eos}, decode_text=tokenizer.decode)
    req = engine.submit(prompt_ids, GenerationConfig(max_new_tokens=64))   # thread-safe; CapacityError if it never fits
    engine.run_until(lambda: req.done)       # or: a worker thread calling engine.step() (see `worker.py`)
    req.outputs -> [(token ids, "stop" | "length"), ...]   # one per sample (cfg.n)

Each `step()` admits waiting requests while the cache has room (FIFO: a request that does not fit *now* waits for
running ones to finish; one that could never fit is refused at `submit`), prefills them through the model's own
chunked forward (KDA chunk kernel, MLA expanded attention; left-padded together), copies their final states into the
paged cache (`PagedHybridCache`: KDA slot per sequence, MLA latent blocks), then runs one decode step for every running
sequence — new ones join, finished ones leave, so the batch stays full. On CUDA each decode step shape (rows bucket,
gathered MLA blocks bucket) is captured once as a CUDA graph, sampling included; on CPU it runs eagerly.

A request's blocks for prompt + max_new_tokens are reserved at admission, so decoding never runs out of cache: the
budget (`cache_bytes`) is the one knob, and the engine never allocates cache memory after start-up.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from mixlab.errors import MixlabError
from mixlab.evals.backends.base import GenerationConfig
from mixlab.evals.engine.decode import decode_step
from mixlab.evals.engine.sampling import row_uniforms, sample_rows
from mixlab.model.cache import KimiLinearCache, PagedHybridCache


class CapacityError(MixlabError):
    """A request that can never fit the engine's cache budget (it would wait forever)."""


@dataclass
class _Seq:
    request: "Request"
    index: int
    slot: int
    blocks: list[int]
    uniforms: torch.Tensor | None  # float64 [max_new_tokens] on CPU, None when greedy
    position: int = 0  # tokens in the cache
    generated: list[int] = field(default_factory=list)
    finish: str | None = None
    eos_token: int | None = None  # the end-of-sequence token that finished it (not in `generated`)
    table: torch.Tensor | None = None  # int64 [max blocks a sequence] on CPU: `blocks`, scratch-padded (built once)


@dataclass
class Request:
    id: int
    prompt_ids: list[int]
    cfg: GenerationConfig
    seed_key: int = 0  # prompt index in the per-row seed streams (seed, seed_key, sample index)
    future: Future = field(default_factory=Future)
    seqs: list[_Seq] = field(default_factory=list)
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None

    @property
    def done(self) -> bool:
        return self.future.done()

    @property
    def outputs(self) -> list[tuple[list[int], str]]:
        """(generated token ids, finish reason) per sample; raises the engine's error if it failed."""
        return self.future.result()


def _buckets(limit: int) -> list[int]:
    sizes = [b for b in (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512) if b < limit]
    return sizes + [limit]


def default_cache_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.4)  # leave room for prefill activations and graph pools
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        avail = 4 << 30
    return int(min(1 << 30, avail // 4))


class Engine:
    def __init__(
        self,
        model,
        *,
        eos_ids: set[int] | Sequence[int],
        decode_text: Callable[[list[int]], str] | None = None,
        max_batch: int = 64,
        cache_bytes: int | None = None,
        block_size: int = 16,
        max_context: int | None = None,
        max_prefill_tokens: int | None = None,
        cuda_graphs: bool | None = None,
        static_shapes: bool | None = None,
    ) -> None:
        """`cuda_graphs` (default: on for CUDA) captures each decode shape once; `static_shapes` (default: as
        cuda_graphs) runs decode through the fixed-shape buffers and row buckets the graphs use, also without
        capturing (so that path is tested on CPU too)."""
        if getattr(model.config, "model_type", None) != "kimi_linear":
            raise MixlabError(f"the engine serves Kimi Linear models, got {type(model).__name__}")
        if max_batch < 1:
            raise MixlabError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.config = model.config
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.eos_ids = set(eos_ids)
        self.decode_text = decode_text
        self.max_batch = max_batch
        slot_bytes = PagedHybridCache.bytes_per_slot(self.config, self.dtype) * (max_batch + 1)
        block_bytes = PagedHybridCache.bytes_per_block(self.config, block_size, self.dtype)
        if cache_bytes is None:
            # No more than max_batch sequences at full context can use (waiting requests hold no cache).
            ctx = max_context or self.config.model_max_length
            full = slot_bytes + block_bytes * (max_batch * -(-ctx // block_size) + 1)
            budget = min(default_cache_bytes(self.device), full)
        else:
            budget = int(cache_bytes)
        num_blocks = (budget - slot_bytes) // max(block_bytes, 1)
        if num_blocks < 1:
            raise CapacityError(
                f"cache budget {budget / 2**20:.1f} MiB is below the {slot_bytes / 2**20:.1f} MiB the KDA state of "
                f"max_batch={max_batch} sequences needs; raise cache_bytes or lower max_batch"
            )
        self.cache = PagedHybridCache(self.config, num_slots=max_batch, num_blocks=int(num_blocks),
                                      block_size=block_size, device=self.device, dtype=self.dtype)
        limit = self.cache.num_blocks * block_size
        self.max_context = min(limit, max_context or min(self.config.model_max_length, limit))
        self.max_blocks_per_seq = self.cache.blocks_for(self.max_context)
        self.max_prefill_tokens = max_prefill_tokens or (32768 if self.device.type == "cuda" else 4096)
        self.use_graphs = (self.device.type == "cuda") if cuda_graphs is None else bool(cuda_graphs)
        if self.use_graphs and self.device.type != "cuda":
            raise MixlabError("cuda_graphs=True needs the model on a CUDA device")
        self.static = self.use_graphs if static_shapes is None else bool(static_shapes)
        if self.use_graphs and not self.static:
            raise MixlabError("cuda_graphs=True needs static_shapes")
        self._incoming: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._waiting: deque[Request] = deque()
        self._running: list[_Seq] = []
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._graphs: dict[tuple[int, int, bool], tuple[torch.cuda.CUDAGraph | None, object]] = {}
        self._batch_buckets = _buckets(max_batch)
        self.stats = {"steps": 0, "prefills": 0, "decode_rows": 0, "graph_captures": 0, "prefill_s": 0.0,
                      "decode_s": 0.0}
        if self.static:
            B, nbm = self._batch_buckets[-1], self.max_blocks_per_seq
            self._in_long = torch.zeros(3, B, dtype=torch.long, device=self.device)  # tokens, slots, positions
            self._in_table = torch.zeros(B, nbm, dtype=torch.long, device=self.device)
            self._in_float = torch.zeros(3, B, dtype=torch.float64, device=self.device)  # temperature, top_p, u
            self._in_greedy = torch.ones(B, dtype=torch.bool, device=self.device)
        if self.use_graphs:
            self._pool = torch.cuda.graph_pool_handle()

    # ----------------------------------------------------------------------------------------------- requests
    def check_fits(self, prompt_len: int, cfg: GenerationConfig) -> None:
        total = prompt_len + cfg.max_new_tokens
        if prompt_len < 1:
            raise MixlabError("empty prompt: the engine needs at least one prompt token")
        if total > self.max_context:
            raise CapacityError(
                f"prompt ({prompt_len} tokens) + max_new_tokens ({cfg.max_new_tokens}) = {total} exceeds the "
                f"engine's max context of {self.max_context} tokens"
            )
        if cfg.n > self.cache.num_slots:
            raise CapacityError(f"n={cfg.n} samples exceed the engine's {self.cache.num_slots} sequence slots "
                                "(max_batch)")
        need = cfg.n * self.cache.blocks_for(total)
        if need > self.cache.num_blocks:
            raise CapacityError(
                f"request needs {need} cache blocks ({cfg.n} × {total} tokens) but the cache holds only "
                f"{self.cache.num_blocks}; raise the cache budget or lower max_new_tokens / n"
            )

    def submit(self, prompt_ids: Sequence[int], cfg: GenerationConfig, seed_key: int = 0) -> Request:
        """Queue a request (any thread). Raises CapacityError at once if it can never fit."""
        prompt_ids = [int(t) for t in prompt_ids]
        self.check_fits(len(prompt_ids), cfg)
        vocab = self.config.vocab_size
        bad = next((t for t in prompt_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise MixlabError(f"prompt token id {bad} is outside the model's vocabulary [0, {vocab})")
        req = Request(next(self._ids), prompt_ids, cfg, seed_key)
        self._incoming.put(req)
        return req

    def has_work(self) -> bool:
        return bool(self._running or self._waiting or not self._incoming.empty())

    def generate(self, prompts: Sequence[Sequence[int]], cfg: GenerationConfig) -> list[list[tuple[list[int], str]]]:
        """Run prompts to completion (prompt i uses seed stream i); returns each prompt's `outputs`."""
        for p in prompts:  # refuse before queueing any, so a refused batch leaves nothing behind
            self.check_fits(len(p), cfg)
        reqs = [self.submit(p, cfg, seed_key=i) for i, p in enumerate(prompts)]
        self.run_until(lambda: all(r.done for r in reqs))
        return [r.outputs for r in reqs]

    def run_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            if not self.has_work():
                raise MixlabError("engine idle but the awaited requests are not done")
            self.step()

    # ----------------------------------------------------------------------------------------------- the loop
    @torch.no_grad()
    def step(self) -> None:
        """Admit + prefill what fits, then one decode step for every running sequence."""
        with self._lock:
            while not self._incoming.empty():
                self._waiting.append(self._incoming.get())
            admitted = []
            try:
                admitted = self._admit()
                if admitted:
                    t0 = time.perf_counter()
                    self._prefill(admitted)
                    admitted = []  # now running (or finished and freed): _fail_all must not free them again
                    self.stats["prefill_s"] += time.perf_counter() - t0
                if self._running:
                    t0 = time.perf_counter()
                    self._decode()
                    self.stats["decode_s"] += time.perf_counter() - t0
            except Exception as exc:  # fail the affected requests, keep the engine usable
                self._fail_all(exc, admitted)
                raise
            self.stats["steps"] += 1

    def _fail_all(self, exc: Exception, admitted) -> None:
        reqs = {id(s.request): s.request for s in self._running}
        running = {(s.slot, tuple(s.blocks)) for s in self._running}
        for s in self._running:
            self.cache.free(s.slot, s.blocks)
        self._running = []
        for req, alloc in admitted:  # admitted but not yet running when the prefill failed
            reqs[id(req)] = req
            for slot, blocks in alloc:
                if (slot, tuple(blocks)) not in running:
                    self.cache.free(slot, blocks)
        for r in reqs.values():
            if not r.future.done():
                r.future.set_exception(exc)

    def _admit(self) -> list[tuple[Request, list[tuple[int, list[int]]]]]:
        admitted = []
        width, rows = 0, 0
        while self._waiting:
            req = self._waiting[0]
            n = req.cfg.n
            if len(self._running) + sum(r.cfg.n for r, _ in admitted) + n > self.max_batch:
                break
            w = max(width, len(req.prompt_ids))
            if admitted and w * (rows + 1) > self.max_prefill_tokens:
                break  # prefill it next step
            alloc = self.cache.alloc(n, self.cache.blocks_for(len(req.prompt_ids) + req.cfg.max_new_tokens))
            if alloc is None:
                break  # waits for running sequences to free their cache (FIFO: no overtaking)
            self._waiting.popleft()
            admitted.append((req, alloc))
            width, rows = w, rows + 1
        return admitted

    def _prefill(self, admitted) -> None:
        model = self.model
        B = len(admitted)
        width = max(len(r.prompt_ids) for r, _ in admitted)
        kc = KimiLinearCache(self.config, B)
        if B == 1:
            ids = torch.tensor([admitted[0][0].prompt_ids], dtype=torch.long, device=self.device)
            step = self.max_prefill_tokens
            for start in range(0, width, step):  # a prompt longer than the prefill budget goes in chunks
                out = model(input_ids=ids[:, start : start + step], past_key_values=kc, use_cache=True,
                            logits_to_keep=1)
        else:
            ids = torch.zeros(B, width, dtype=torch.long)
            mask = torch.zeros(B, width, dtype=torch.long)
            for i, (r, _) in enumerate(admitted):
                ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
                mask[i, width - len(r.prompt_ids) :] = 1
            out = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), past_key_values=kc,
                        use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].float()
        rows, seqs = [], []
        for i, (req, alloc) in enumerate(admitted):
            L = len(req.prompt_ids)
            self.cache.write_prefill(kc, i, alloc[0][0], alloc[0][1], 0, L)
            uniforms = None
            if not req.cfg.greedy:
                uniforms = row_uniforms([(req.seed_key, j) for j in range(req.cfg.n)], req.cfg.seed,
                                        req.cfg.max_new_tokens)
            for j, (slot, blocks) in enumerate(alloc):
                if j:
                    self.cache.fork(alloc[0], (slot, blocks), L)
                seq = _Seq(req, j, slot, blocks, None if uniforms is None else uniforms[j], position=L)
                req.seqs.append(seq)
                rows.append(i)
                seqs.append(seq)
        first = self._sample(logits.index_select(0, torch.tensor(rows, device=self.device)), seqs)
        self.stats["prefills"] += 1
        now = time.perf_counter()
        for seq, tok in zip(seqs, first):
            seq.request.first_token_at = seq.request.first_token_at or now
            self._running.append(seq)
            self._accept(seq, tok)
        self._retire()

    def _sample(self, logits: torch.Tensor, seqs: list[_Seq]) -> list[int]:
        greedy, temp, top_p, u = self._sampling_rows(seqs)
        dev = logits.device
        toks = sample_rows(logits, greedy.to(dev), temp.to(dev), top_p.to(dev), u.to(dev),
                           any_sampled=not bool(greedy.all()))
        return toks.tolist()

    @staticmethod
    def _sampling_rows(seqs: list[_Seq]):
        greedy = torch.tensor([s.request.cfg.greedy for s in seqs], dtype=torch.bool)
        temp = torch.tensor([s.request.cfg.temperature for s in seqs], dtype=torch.float64)
        top_p = torch.tensor([s.request.cfg.top_p for s in seqs], dtype=torch.float64)
        u = torch.tensor([1.0 if s.uniforms is None else float(s.uniforms[len(s.generated)]) for s in seqs],
                         dtype=torch.float64)
        return greedy, temp, top_p, u

    def _accept(self, seq: _Seq, tok: int) -> None:
        cfg = seq.request.cfg
        if tok in self.eos_ids:
            seq.finish, seq.eos_token = "stop", tok
            return
        seq.generated.append(tok)
        if cfg.stop and self.decode_text is not None:
            longest = max(len(s) for s in cfg.stop)
            tail = self.decode_text(seq.generated[-(4 * longest + 4) :])
            if any(s and s in tail for s in cfg.stop):
                seq.finish = "stop"
                return
        if len(seq.generated) >= cfg.max_new_tokens:
            seq.finish = "length"

    def _retire(self) -> None:
        keep = []
        for seq in self._running:
            if seq.finish is None:
                keep.append(seq)
                continue
            self.cache.free(seq.slot, seq.blocks)
            req = seq.request
            if all(s.finish is not None for s in req.seqs) and not req.future.done():
                req.future.set_result([(s.generated, s.finish) for s in req.seqs])
        self._running = keep
        if not self.static:
            # Keep the running sequences in slots 0..B-1 (one state copy per finished sequence) so that eager
            # decode updates the KDA state in place instead of gathering and scattering it every step.
            B = len(keep)
            used = {s.slot for s in keep}
            holes = [h for h in range(B) if h not in used]
            for seq, hole in zip([s for s in keep if s.slot >= B], holes):
                self.cache.move_slot(seq.slot, hole)
                seq.slot = hole

    def _decode(self) -> None:
        if not self.static:
            self._running.sort(key=lambda s: s.slot)  # a full batch is then slots 0..B-1: in-place state updates
        seqs = self._running
        B = len(seqs)
        bs = self.cache.block_size
        need = max(s.position // bs + 1 for s in seqs)
        # Gathered-blocks bucket: up to 8 sizes per octave (at most 1/8 of the attention work wasted), so few
        # graphs serve every context length.
        grain = 1 << max(0, need.bit_length() - 4)
        nb = min(-(-need // grain) * grain, self.max_blocks_per_seq)
        # Each sequence's blocks are fixed at admission, so its padded table row is built once: rebuilding the rows
        # from Python lists took 0.5 ms a step at 4 rows x 32k context (most of the 32k-vs-1k step growth on the H100).
        table = torch.stack([self._table_row(s)[:nb] for s in seqs])
        longs = torch.tensor([[s.generated[-1] for s in seqs], [s.slot for s in seqs], [s.position for s in seqs]],
                             dtype=torch.long)
        greedy, temp, top_p, u = self._sampling_rows(seqs)
        sampled = not bool(greedy.all())
        if self.static:
            toks = self._replay(B, nb, sampled, longs, table, greedy, torch.stack([temp, top_p, u]))
        else:
            dev = self.device
            in_place = [s.slot for s in seqs] == list(range(B))
            longs, table = longs.to(dev), table.to(dev)
            logits = decode_step(self.model, self.cache, longs[0], None if in_place else longs[1], longs[2], table)
            toks = sample_rows(logits, greedy.to(dev), temp.to(dev), top_p.to(dev), u.to(dev), sampled)[:B].tolist()
        self.stats["decode_rows"] += B
        for seq, tok in zip(seqs, toks):
            seq.position += 1
            self._accept(seq, tok)
        self._retire()

    def _table_row(self, seq: _Seq) -> torch.Tensor:
        if seq.table is None:
            seq.table = torch.full((self.max_blocks_per_seq,), self.cache.scratch_block, dtype=torch.long)
            seq.table[: len(seq.blocks)] = torch.tensor(seq.blocks, dtype=torch.long)
        return seq.table

    # ----------------------------------------------------------------------------------------------- CUDA graphs
    def _replay(self, B, nb, sampled, longs, table, greedy, floats) -> list[int]:
        Bp = next(b for b in self._batch_buckets if b >= B)
        key = (Bp, nb, sampled)
        if key not in self._graphs:
            self._graphs[key] = (self._capture(Bp, nb, sampled) if self.use_graphs else
                                 (None, self._graph_fn(Bp, nb, sampled)))
        graph, out = self._graphs[key]
        # Padding rows: scratch slot and block, token 0, greedy.
        self._in_long[0, :Bp].zero_()
        self._in_long[1, :Bp].fill_(self.cache.scratch_slot)
        self._in_long[2, :Bp].zero_()
        self._in_table[:Bp, :nb].fill_(self.cache.scratch_block)
        self._in_greedy[:Bp].fill_(True)
        self._in_long[:, :B].copy_(longs, non_blocking=True)
        self._in_table[:B, :nb].copy_(table, non_blocking=True)
        self._in_float[:, :B].copy_(floats, non_blocking=True)
        self._in_greedy[:B].copy_(greedy, non_blocking=True)
        if graph is None:
            return out()[:B].tolist()  # static shapes without capture: run the same function eagerly
        graph.replay()
        return out[:B].tolist()

    def _graph_fn(self, Bp, nb, sampled):
        longs, table = self._in_long[:, :Bp], self._in_table[:Bp, :nb]
        fl, greedy = self._in_float[:, :Bp], self._in_greedy[:Bp]

        def fn():
            logits = decode_step(self.model, self.cache, longs[0], longs[1], longs[2], table)
            return sample_rows(logits, greedy, fl[0], fl[1], fl[2], sampled)

        return fn

    def _capture(self, Bp, nb, sampled):
        # Warm-up runs execute for real: point every row at the scratch slot/block so no live state changes.
        self._in_long[0, :Bp].zero_()
        self._in_long[1, :Bp].fill_(self.cache.scratch_slot)
        self._in_long[2, :Bp].zero_()
        self._in_table[:Bp, :nb].fill_(self.cache.scratch_block)
        self._in_float[:, :Bp].fill_(1.0)
        self._in_greedy[:Bp].fill_(not sampled)
        fn = self._graph_fn(Bp, nb, sampled)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = fn()
        self.stats["graph_captures"] += 1
        return graph, out
