"""The one JSONL reader: benchmark files (evals) and local mixture sources (mixtures) both read through it.

Lines are split on '\\n' only (some benchmark prompts contain U+2028, which `str.splitlines()` would break),
blank lines are skipped, `.gz` files are decompressed, and a bad line is a one-line error naming file and line.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any, Iterator

from mixlab.errors import MixlabError


def open_text(path: Path) -> io.TextIOBase:
    """A UTF-8 text handle, decompressing `.gz`."""
    if Path(path).suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed value) for every non-blank line."""
    loads = json.loads
    with open_text(Path(path)) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, loads(line)
            except json.JSONDecodeError as exc:
                raise MixlabError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None


def read_jsonl(path: str | Path) -> list[Any]:
    return [row for _, row in iter_jsonl(path)]
