"""Token and trainable-token counts under the mixture's tokenizer and chat template.

Rendering every conversation through Jinja is slow at a million rows, so counts are computed from batched
tokenisation of message contents plus a per-role template overhead measured once by rendering one-message
conversations. Templates that wrap each content in special tokens (mixlab's does) make this exact; the tests
check it against `apply_chat_template` on real rows. Trainable tokens are the assistant tokens the template marks
with `{% generation %}` (content plus end-of-turn), for assistant turns whose `train` flag is set.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from mixlab.errors import MixlabError
from mixlab.paths import tokenizers_dir
from mixlab.yamlio import did_you_mean

_CHUNK = re.compile(r"\s*\S+|\s+$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def tokenizer_path(name: str) -> Path:
    candidate = Path(name)
    if candidate.is_dir():
        return candidate
    path = tokenizers_dir() / name
    if path.is_dir():
        return path
    known = sorted(p.name for p in tokenizers_dir().glob("*") if p.is_dir()) if tokenizers_dir().is_dir() else []
    raise MixlabError(f"tokenizer: {name!r} not found in {tokenizers_dir()}{did_you_mean(name, known)} (known: {known})")


class TokenCounter:
    def __init__(self, name: str, chat_template: str | None = None, yaml_dir: Path | None = None):
        from transformers import PreTrainedTokenizerFast  # ~2 s import: paid by builds that count tokens only

        self.name = name
        self.path = tokenizer_path(name)
        try:
            self.tokenizer = PreTrainedTokenizerFast.from_pretrained(str(self.path))
        except Exception as exc:  # noqa: BLE001
            raise MixlabError(f"tokenizer: cannot load {self.path}: {type(exc).__name__}: {exc}") from None
        if chat_template is not None:
            template_file = Path(chat_template) if Path(chat_template).is_absolute() else (yaml_dir or Path()) / chat_template
            if chat_template.endswith(".jinja"):
                if not template_file.is_file():
                    raise MixlabError(f"chat_template: file {template_file} not found")
                chat_template = template_file.read_text()
            self.tokenizer.chat_template = chat_template
        if not self.tokenizer.chat_template:
            raise MixlabError(f"tokenizer {name!r} has no chat template; set chat_template in the mixture")
        self.template = self.tokenizer.chat_template
        self._backend = self.tokenizer.backend_tokenizer
        pre = repr(self._backend.pre_tokenizer)
        self._chunkable = self._backend.normalizer is None and "ByteLevel" in pre and "Metaspace" not in pre
        self._chunk_cache: dict[str, int] = {}
        self.fingerprint = self._fingerprint()
        self.template_hash = hashlib.sha256(self.template.encode()).hexdigest()[:16]
        self._measure_overheads()

    def _fingerprint(self) -> str:
        h = hashlib.sha256()
        for fname in _TOKENIZER_FILES:
            f = self.path / fname
            if f.is_file():
                h.update(fname.encode() + b"\0" + f.read_bytes())
        return h.hexdigest()[:16]

    def _render(self, messages: list[dict[str, str]], **kw: Any) -> Any:
        return self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)

    def _n_content(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _measure_overheads(self) -> None:
        probe = "Hello there"
        n_probe = self._n_content(probe)
        self.role_overhead: dict[str, int] = {}
        for role in ("system", "user", "assistant", "tool"):
            try:
                ids = self._render([{"role": role, "content": probe}])["input_ids"]
            except Exception:  # noqa: BLE001 - a template may reject some roles; rows with them then fail clearly
                continue
            self.role_overhead[role] = len(ids) - n_probe
        pair = [{"role": "user", "content": probe}, {"role": "assistant", "content": probe}]
        pair_ids = self._render(pair)["input_ids"]
        # Tokens the template emits once per conversation (e.g. BOS), counted in every single-message render.
        self.conversation_overhead = self.role_overhead["user"] + self.role_overhead["assistant"] + 2 * n_probe - len(pair_ids)
        gen = self._render([pair[0]], add_generation_prompt=True)["input_ids"]
        self.generation_prompt = len(gen) - len(self._render([pair[0]])["input_ids"])
        self.assistant_trainable_extra = 0
        self.assistant_masks = False  # does the template mark assistant spans ({% generation %})?
        try:
            out = self._render(pair, return_assistant_tokens_mask=True)
            mask = out.get("assistant_masks")
            if mask is not None and sum(mask) > 0:
                self.assistant_masks = True
                self.assistant_trainable_extra = int(sum(mask)) - n_probe
        except Exception:  # noqa: BLE001 - no {% generation %} markers: count assistant content only
            pass

    # -- counting -------------------------------------------------------------------------------------------------

    def content_lengths(self, texts: list[str], batch: int = 8192) -> np.ndarray:
        """Token counts of plain texts. For byte-level BPE without a normaliser (mixlab-bpe, GPT-2 style) a
        pre-token never spans a non-space followed by whitespace, so a text's count is the sum of the counts of
        its `\\s*\\S+` chunks; chunk counts are cached, which makes a million Zipf-distributed rows cheap.
        Other tokenizers are encoded whole."""
        out = np.zeros(len(texts), dtype=np.int64)
        if not self._chunkable:
            for start in range(0, len(texts), batch):
                enc = self._backend.encode_batch(texts[start : start + batch], add_special_tokens=False)
                out[start : start + batch] = [len(e.ids) for e in enc]
            return out
        cache = self._chunk_cache
        if len(cache) > 4_000_000:
            cache.clear()
        findall = _CHUNK.findall
        for start in range(0, len(texts), batch):
            part = [findall(t) for t in texts[start : start + batch]]
            missing = list({c for chunks in part for c in chunks if c not in cache})
            if missing:
                for chunk, enc in zip(missing, self._backend.encode_batch(missing, add_special_tokens=False)):
                    cache[chunk] = len(enc.ids)
            out[start : start + len(part)] = [sum(map(cache.__getitem__, chunks)) for chunks in part]
        return out

    def count(self, rows: list[dict[str, Any]], kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, trainable tokens) per row."""
        texts: list[str] = []
        owners: list[tuple[int, str, bool]] = []  # (row, role, trainable)
        for i, row in enumerate(rows):
            for part, msgs in _parts(row, kind):
                for m in msgs:
                    texts.append(m["content"])
                    trainable = part in ("messages", "chosen", "rejected") and m["role"] == "assistant" and m.get("train", True)
                    owners.append((i, m["role"], bool(trainable)))
        lengths = self.content_lengths(texts)
        tokens = np.zeros(len(rows), dtype=np.int64)
        trainable = np.zeros(len(rows), dtype=np.int64)
        for (i, role, is_trainable), n in zip(owners, lengths):
            if role not in self.role_overhead:
                raise MixlabError(f"chat template of tokenizer {self.name!r} cannot render role {role!r}")
            tokens[i] += n + self.role_overhead[role]
            if is_trainable:
                trainable[i] += n + self.assistant_trainable_extra
        # Each rendered conversation (prompt+chosen and prompt+rejected for preference rows) pays the
        # per-conversation overhead once; the prompt-only view of RL rows also gets the generation prompt.
        n_conversations = {"sft": 1, "preference": 2, "rl": 1}[kind]
        for i, row in enumerate(rows):
            tokens[i] -= self.conversation_overhead * (sum(len(m) for _, m in _parts(row, kind)) - n_conversations)
            if kind == "rl":
                tokens[i] += self.generation_prompt
        return tokens, trainable

    def exact_count(self, row: dict[str, Any], kind: str) -> tuple[int, int]:
        """The slow reference: render through the chat template (tests compare `count` against it)."""
        if kind == "sft":
            out = self._render(_plain(row["messages"]), return_assistant_tokens_mask=True)
            mask = out.get("assistant_masks") or []
            n_train = sum(mask) if all(m.get("train", True) for m in row["messages"] if m["role"] == "assistant") else None
            return len(out["input_ids"]), n_train if n_train is not None else -1
        if kind == "rl":
            return len(self._render(_plain(row["prompt"]), add_generation_prompt=True)["input_ids"]), 0
        total, train = 0, 0
        for side in ("chosen", "rejected"):
            out = self._render(_plain(row["prompt"] + row[side]), return_assistant_tokens_mask=True)
            total += len(out["input_ids"])
            train += sum(out.get("assistant_masks") or [])
        return total, train


def _plain(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _parts(row: dict[str, Any], kind: str) -> list[tuple[str, list[dict[str, Any]]]]:
    if kind == "sft":
        return [("messages", row["messages"])]
    if kind == "rl":
        return [("prompt", row["prompt"])]
    # A preference row renders the prompt twice (once with each answer).
    return [("prompt", row["prompt"]), ("chosen", row["chosen"]), ("prompt", row["prompt"]), ("rejected", row["rejected"])]
