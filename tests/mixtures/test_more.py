"""Per-turn train flags, chat templates, limits, dedup scope, DPO code pairs in the sandbox, every registry example."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from mixlab.mixtures import build, load_dataset
from mixlab.mixtures.registry_io import registry_files

NO_DECON = "decontamination: {enabled: false}\n"


def _rows(built):
    return [r for s in built.manifest["shards"] for r in pq.read_table(built.path / s["file"]).to_pylist()]


def test_messages_adapter_keeps_per_turn_train_flags(write_mix, store, tmp_path):
    conv = {"messages": [{"role": "user", "content": "Hi there"},
                         {"role": "assistant", "content": "An answer we do not want to learn.", "train": False},
                         {"role": "user", "content": "Again"},
                         {"role": "assistant", "content": "The answer to learn."}]}
    (tmp_path / "conv.jsonl").write_text(json.dumps(conv) + "\n")
    path = write_mix("turns", f"""
        name: turns
        budget: {{unit: samples, total: 1}}
        components:
          - {{name: c, source: {{local: {tmp_path}/conv.jsonl, adapter: messages}}}}
        """, NO_DECON)
    built = build(path, store=store)
    (row,) = _rows(built)
    assert [m["train"] for m in row["messages"]] == [False, False, False, True]
    from mixlab.mixtures.tokens import TokenCounter

    counter = TokenCounter("mixlab-bpe")
    learned = counter.content_lengths(["The answer to learn."])[0] + counter.assistant_trainable_extra
    assert row["n_trainable_tokens"] == learned
    flags = load_dataset(built.mixture_id, keep_train_flags=True)[0]["messages"]
    assert [m["train"] for m in flags] == [False, False, False, True]
    assert "train" not in load_dataset(built.mixture_id)[0]["messages"][0]


def test_chat_template_is_part_of_the_id_and_the_counts(write_mix, store):
    body = """
        name: tpl
        budget: {unit: samples, total: 20}
        components:
          - {name: m, source: {procedural: math, level: 1}}
        """
    default = build(write_mix("tpl", body, NO_DECON), store=store)
    custom = build(write_mix("tpl", body, NO_DECON + "chat_template: \"{% for m in messages %}{{ m['role'] }}: "
                                                    "{{ m['content'] }}\\n{% endfor %}\"\n"), store=store)
    assert custom.mixture_id != default.mixture_id
    assert custom.manifest["chat_template_hash"] != default.manifest["chat_template_hash"]
    assert custom.manifest["n_tokens"] != default.manifest["n_tokens"]


def test_limit_and_dedup_scope(write_mix, store, tmp_path):
    rows = [{"instruction": f"Question {i}", "output": f"Answer {i}."} for i in range(10)]
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "y.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    text = f"""
        name: scope
        budget: {{unit: samples, total: 8}}
        dedup: {{scope: SCOPE, near: false}}
        components:
          - {{name: x, weight: 1, source: {{local: {tmp_path}/x.jsonl, adapter: alpaca, limit: 6}}}}
          - {{name: y, weight: 1, source: {{local: {tmp_path}/y.jsonl, adapter: alpaca}}}}
        """
    per_source = build(write_mix("scope", text.replace("SCOPE", "source"), NO_DECON), store=store)
    comps = {c["path"]: c for c in per_source.manifest["components"]}
    assert comps["x"]["loaded_rows"] == 6 and comps["y"]["dropped"]["dedup_exact"] == 0
    with pytest.raises(Exception, match="y needs 2.00 epochs of its 0 rows|y has no rows left"):
        build(write_mix("scope", text.replace("SCOPE", "global"), NO_DECON), store=store)


def test_dpo_code_pairs_rejected_fails_in_the_sandbox(store):
    pytest.importorskip("mixlab.evals.sandbox")
    from mixlab.evals.procedural import verify

    checked = 0
    for row in load_dataset("demo-pref"):
        if not row["row_id"].startswith("code-"):
            continue
        from mixlab.evals.procedural import generate

        item = next(x for x in generate("code", "train", 300, level=1) if x["id"] == row["row_id"])
        assert verify(item, response=row["chosen"][0]["content"]) == 1.0
        assert verify(item, response=row["rejected"][0]["content"]) == 0.0
        checked += 1
        if checked == 5:
            break
    assert checked == 5


@pytest.mark.slow
def test_every_registry_example_builds(store, data_root):
    for name in sorted(registry_files()):
        built = build(name, data_root=data_root, store=store)
        m = built.manifest
        assert m["n_rows"] > 0 and sum(c["realised_share"] for c in m["components"]) == pytest.approx(1.0)
        assert all(c["epochs"] <= c["max_epochs"] + 1e-9 for c in m["components"])
        if name.startswith("real-"):
            assert m["decontamination"]["skipped"] == {}  # every eval set was checked
    real = build("real-sft", data_root=data_root, store=store).manifest
    assert real["decontamination"]["flagged_rows"] > 0  # GSM8K train and Code Alpaca overlap the benchmarks
