"""The generation interface every backend implements.

Contract (one for all backends):

    backend.generate(prompts, cfg) -> list[str]                 # one completion per prompt (cfg.n must be 1)
    backend.generate_samples(prompts, cfg) -> list[list[str]]   # cfg.n completions per prompt
    backend.generate_detailed(prompts, cfg) -> list[Generation] # texts + token counts + finish reasons

`prompts` is a list of chat conversations (`[{"role": "user", "content": ...}, ...]`); the backend applies the
model's chat template with the generation prompt. Completions are the assistant text only, cut before the first
stop string and without the end-of-turn token.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from mixlab.errors import MixlabError

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings; stored with every eval run (they are part of its key)."""

    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 (or < 1e-5) means greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise MixlabError(f"GenerationConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise MixlabError(f"GenerationConfig.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise MixlabError(f"GenerationConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            raise MixlabError(f"GenerationConfig.n must be >= 1, got {self.n}")
        # Accept a list for `stop` but keep the dataclass hashable.
        object.__setattr__(self, "stop", tuple(self.stop or ()))

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5

    def replace(self, **changes: Any) -> "GenerationConfig":
        data = asdict(self)
        data.update(changes)
        return GenerationConfig(**data)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stop"] = list(self.stop)
        return data

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Generation:
    """The completions of one prompt."""

    texts: list[str]
    prompt_tokens: int | None = None
    output_tokens: list[int | None] = field(default_factory=list)  # per completion
    finish_reasons: list[str] = field(default_factory=list)  # "stop" (EOS or stop string) | "length"

    @property
    def text(self) -> str:
        return self.texts[0]


class Backend(ABC):
    """Base class: subclasses implement `generate_detailed`; the two convenience forms derive from it."""

    name: str = "base"

    @abstractmethod
    def generate_detailed(self, prompts: Sequence[Messages], cfg: GenerationConfig) -> list[Generation]: ...

    def generate(self, prompts: Sequence[Messages], cfg: GenerationConfig | None = None) -> list[str]:
        cfg = cfg or GenerationConfig()
        if cfg.n != 1:
            raise MixlabError(f"generate() returns one completion per prompt; use generate_samples() for n={cfg.n}")
        return [g.texts[0] for g in self.generate_detailed(prompts, cfg)]

    def generate_samples(self, prompts: Sequence[Messages], cfg: GenerationConfig) -> list[list[str]]:
        return [g.texts for g in self.generate_detailed(prompts, cfg)]

    def describe(self) -> dict[str, Any]:
        """What identifies this backend in run metadata (name, version, device, batch size...)."""
        return {"backend": self.name}

    def close(self) -> None:  # pragma: no cover - optional hook
        pass


def validate_prompts(prompts: Sequence[Messages]) -> None:
    for i, conv in enumerate(prompts):
        if not isinstance(conv, (list, tuple)) or not conv:
            raise MixlabError(f"prompt {i}: expected a non-empty list of chat messages, got {type(conv).__name__}")
        for j, msg in enumerate(conv):
            if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
                raise MixlabError(f"prompt {i}, message {j}: expected {{'role': ..., 'content': ...}}, got {msg!r}")
            if msg["role"] not in ("system", "user", "assistant"):
                raise MixlabError(f"prompt {i}, message {j}: unknown role {msg['role']!r}")


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` before the earliest stop string. Returns (text, whether a stop string was found)."""
    cut = -1
    for s in stop:
        if not s:
            continue
        pos = text.find(s)
        if pos != -1 and (cut == -1 or pos < cut):
            cut = pos
    return (text[:cut], True) if cut != -1 else (text, False)
