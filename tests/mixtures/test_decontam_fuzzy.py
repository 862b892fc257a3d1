"""The fuzzy decontamination pass beside the exact 13-gram gate: a GSM8K question copied with an edit every 8 words
(no 13-gram left) is caught by MinHash/Jaccard, an unrelated word problem is not, and every audit row names the rule
that fired (in contamination.parquet and in DuckDB)."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest

from mixlab.evals.tasks.base import get_task
from mixlab.mixtures import decontam
from mixlab.mixtures.build import build
from mixlab.mixtures.dedup import jaccard


def _edit_every(text: str, k: int) -> str:
    """Replace every k-th word (k <= 12 leaves no 13-gram of the original intact)."""
    words = text.split()
    return " ".join(("changed" if (i + 1) % k == 0 else w) for i, w in enumerate(words))


def test_fuzzy_pass_catches_edited_copies_and_names_the_rule(write_mix, store, tmp_path, bench_slices):
    task = get_task("gsm8k")
    item = task.load(bench_slices, limit=1)[0]
    question = task.contamination_texts(item)[0]
    edited = _edit_every(question, 8)
    words = re.findall(r"\w+", question.lower())
    grams = {tuple(words[i:i + 13]) for i in range(len(words) - 12)}
    edited_words = re.findall(r"\w+", edited.lower())
    assert not grams & {tuple(edited_words[i:i + 13]) for i in range(len(edited_words) - 12)}  # no 13-gram left
    assert jaccard(edited, question, shingle=3) >= decontam.FUZZY_THRESHOLD
    unrelated = ("A farmer has 17 cows and buys 5 more at the market on Tuesday. Each cow gives 3 litres of milk a "
                 "day. How many litres of milk does the farmer get in a week from all of the cows together?")
    assert jaccard(unrelated, question, shingle=3) < 0.1
    rows = [{"instruction": "Please help me with this.", "output": "Sure, here is a plan."},
            {"instruction": question, "output": "An answer."},
            {"instruction": edited, "output": "An answer."},
            {"instruction": unrelated, "output": "It is 154 litres."}]
    (tmp_path / "planted.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = write_mix("fuzzy", f"""
        name: fuzzy
        budget: {{unit: samples, total: 2}}
        decontamination: {{tasks: [gsm8k]}}
        components:
          - {{name: src, source: {{local: {tmp_path}/planted.jsonl, adapter: alpaca}}}}
        """)
    built = build(path, data_root=bench_slices, store=store)
    assert built.manifest["components"][0]["dropped"]["decontamination"] == 2
    dc = built.manifest["decontamination"]
    assert dc["rule"] == "exact-13gram" and dc["fuzzy"]["rule"] == "minhash-jaccard>=0.4"
    audit = {r["row_id"]: r for r in pq.read_table(built.path / "contamination.parquet").to_pylist()}
    assert set(audit) == {"1", "2"}
    assert audit["1"]["rule"] == "exact-13gram" and audit["2"]["rule"] == "minhash-jaccard>=0.4"
    assert audit["2"]["ngram"].startswith("J=0.") and audit["2"]["item_id"] == item.item_id
    stored = {r["row_id"]: r["rule"] for r in store.query("SELECT row_id, rule FROM contamination WHERE mixture_id = ?",
                                                          [built.mixture_id])}
    assert stored == {"1": "exact-13gram", "2": "minhash-jaccard>=0.4"}

    # With the fuzzy pass off, only the exact gate fires.
    off = write_mix("exact-only", path.read_text().replace("name: fuzzy", "name: exact-only").replace(
        "{tasks: [gsm8k]}", "{tasks: [gsm8k], fuzzy: false}"))
    built_off = build(off, data_root=bench_slices, store=store)
    assert built_off.manifest["components"][0]["dropped"]["decontamination"] == 1


@pytest.mark.parametrize("k, caught", [(4, False), (8, True), (12, True)])
def test_fuzzy_threshold_documented_behaviour(k, caught, bench_slices):
    """Edits every 12 words (the fewest that break every 13-gram, Jaccard 0.6) and every 8 (0.45) are caught; every
    4th word changed (0.14) is a different text."""
    index = decontam.build_index(["gsm8k"], [], bench_slices, 13, 5)
    task = get_task("gsm8k")
    question = task.contamination_texts(task.load(bench_slices, limit=1)[0])[0]
    text = _edit_every(question, k)
    assert not decontam.check(index, [text], [0], ["prompt"])
    hits = decontam.check_fuzzy(index, [text], [0], ["prompt"])
    assert bool(hits) == caught
    if hits:
        assert hits[0].rule == decontam.fuzzy_rule() and hits[0].benchmark == "gsm8k"
