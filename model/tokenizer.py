"""`load_tokenizer`: the mixlab-bpe tokenizer shipped in `model/tokenizers/`, or whatever a checkpoint folder has.

mixlab-bpe (rebuilt by `model/tokenizers/build_mixlab_bpe.py`): byte-level BPE, 1024 tokens, digits split one per
token, Kimi's chat markup as special tokens, eos = `<|im_end|>`, pad = `[PAD]`, left padding (generation), and a
chat template whose assistant turns carry `{% generation %}` markers (TRL `assistant_only_loss=True`).
"""

from __future__ import annotations

import os
from pathlib import Path

from mixlab.errors import MixlabError
from mixlab.paths import tokenizers_dir
from mixlab.yamlio import did_you_mean

DEFAULT_TOKENIZER = "mixlab-bpe"


def tokenizer_path(name_or_path: str | os.PathLike = DEFAULT_TOKENIZER) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        return path
    shipped = tokenizers_dir() / str(name_or_path)
    if shipped.is_dir():
        return shipped
    names = sorted(p.name for p in tokenizers_dir().iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    hint = did_you_mean(str(name_or_path), names)
    raise MixlabError(f"tokenizer {str(name_or_path)!r} is neither a folder nor one of {names}{hint}")


def load_tokenizer(name_or_path: str | os.PathLike = DEFAULT_TOKENIZER, padding_side: str | None = None):
    """A `PreTrainedTokenizerFast` for a shipped name or a folder with tokenizer.json; other folders (official
    checkpoints with a tiktoken remote-code tokenizer) go through `AutoTokenizer(trust_remote_code=True)`."""
    path = tokenizer_path(name_or_path)
    if (path / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=True)
    if padding_side is not None:
        tok.padding_side = padding_side
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok
