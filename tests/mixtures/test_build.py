"""End-to-end builds on real files, a real tokenizer and a real DuckDB: targets, caps, groups, phases, cache."""

from __future__ import annotations

import hashlib
import json

import pyarrow.parquet as pq
import pytest

from mixlab.errors import MixlabError
from mixlab.mixtures import build, load_dataset
from mixlab.mixtures.tokens import TokenCounter

LIGHT = "decontamination: {tasks: [proc-math]}\n"  # keep most tests off the full eval index


def _table(built):
    return pq.read_table(built.path / built.manifest["shards"][0]["file"]).to_pylist() if len(
        built.manifest["shards"]) == 1 else [r for s in built.manifest["shards"] for r in pq.read_table(built.path / s["file"]).to_pylist()]


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_cache_hit_and_byte_identical_rebuild(write_mix, store, isolated_runs):
    path = write_mix("cache", """
        name: cache
        budget: {unit: samples, total: 120}
        shard_rows: 50
        components:
          - {name: math, weight: 2, source: {procedural: math, level: 1}}
          - {name: chat, weight: 1, source: {procedural: chat, level: 1}}
        """, LIGHT)
    first = build(path, store=store)
    assert not first.cache_hit and first.mixture_id.startswith("cache-")
    assert first.path == isolated_runs / "artifacts" / "mixtures" / first.mixture_id
    assert [s["rows"] for s in first.manifest["shards"]] == [50, 50, 20]
    assert {p.name for p in first.path.iterdir()} >= {"manifest.json", "mixture.lock", "contamination.parquet",
                                                      "data-00000-of-00003.parquet"}
    before = _digest(first.path)
    second = build(path, store=store)
    assert second.cache_hit and second.mixture_id == first.mixture_id
    by_id = build(first.mixture_id, store=store)  # recipes may pin a built id
    assert by_id.cache_hit and by_id.path == first.path and by_id.manifest == first.manifest
    third = build(path, store=store, force=True)
    assert not third.cache_hit and _digest(third.path) == before  # byte-identical
    assert not [p for p in first.path.parent.iterdir() if p.name.startswith(".")]  # no temp folders left
    assert first.manifest["tokenizer"]["assistant_masks"] is True  # mixlab-bpe marks assistant spans
    lock = json.loads((first.path / "mixture.lock").read_text())
    assert [s["path"] for s in lock["sources"]] == ["math", "chat"]
    assert all(len(s["row_hashes"]) == s["rows"] for s in lock["sources"])
    # A different seed is a different mixture.
    path.write_text(path.read_text().replace("name: cache", "name: cache\nseed: 1"))
    other = build(path, store=store)
    assert other.mixture_id != first.mixture_id


def test_sample_targets_are_exact_and_follow_nested_group_weights(write_mix, store):
    path = write_mix("nested", """
        name: nested
        budget: {unit: samples, total: 101}
        components:
          - name: math
            weight: 3
            components:
              - {name: add, weight: 1, source: {procedural: math, level: 1}}
              - {name: steps, weight: 2, source: {procedural: math, level: 2}}
          - {name: chat, weight: 1, source: {procedural: chat, level: 1}}
        """, LIGHT)
    built = build(path, store=store)
    comps = {c["path"]: c for c in built.manifest["components"]}
    assert {k: c["target_share"] for k, c in comps.items()} == pytest.approx(
        {"math/add": 0.25, "math/steps": 0.5, "chat": 0.25})
    # 25.25 / 50.5 / 25.25 → largest remainder gives the spare sample to the largest fraction.
    assert {k: c["realised_rows"] for k, c in comps.items()} == {"math/add": 25, "math/steps": 51, "chat": 25}
    assert built.manifest["n_rows"] == 101
    rows = _table(built)
    assert {r["group_path"] for r in rows} == {"math/add", "math/steps", "chat"}
    assert all(r["n_tokens"] > r["n_trainable_tokens"] > 0 for r in rows)


@pytest.mark.parametrize("unit", ["tokens", "trainable_tokens"])
def test_token_budgets_reach_their_targets(write_mix, store, unit):
    path = write_mix("tok", f"""
        name: tok
        budget: {{unit: {unit}, total: 6000}}
        components:
          - {{name: math, weight: 1, source: {{procedural: math, level: 2}}}}
          - {{name: code, weight: 1, source: {{procedural: code, level: 1}}}}
        """, LIGHT)
    built = build(path, store=store)
    rows = _table(built)
    key = "n_tokens" if unit == "tokens" else "n_trainable_tokens"
    for c in built.manifest["components"]:
        got = sum(r[key] for r in rows if r["group_path"] == c["path"])
        biggest = max(r[key] for r in rows if r["group_path"] == c["path"])
        assert c["target_units"] == pytest.approx(3000)
        assert 3000 <= got < 3000 + biggest  # reaches the target, overshoots by less than one row
        assert c["realised_units"] == got


def test_max_epochs_cap_fails_with_the_shortfall_and_allows_explicit_repeats(write_mix, store, local_data):
    text = """
        name: capped
        budget: {unit: samples, total: 100}
        components:
          - name: alpaca
            max_epochs: CAP
            source: {local: alpaca/*.jsonl, adapter: alpaca}
        """
    path = write_mix("capped", text.replace("CAP", "1"), LIGHT)
    with pytest.raises(MixlabError) as info:
        build(path, data_root=local_data, store=store)
    msg = str(info.value)
    assert f"{path}:" in msg and "budget" in msg and "alpaca needs 2.50 epochs of its 40 rows (max_epochs 1)" in msg
    assert "at most 40" in msg
    assert not (store.exists() and store.query("SELECT * FROM mixtures"))
    path = write_mix("capped", text.replace("CAP", "2.5"), LIGHT)
    rows = _table(build(path, data_root=local_data, store=store))
    ids = [r["row_id"] for r in rows]
    assert len(rows) == 100 and max(ids.count(i) for i in set(ids)) == 3
    by_epoch = {e: {r["row_id"] for r in rows if r["epoch"] == e} for e in (0, 1, 2)}
    assert len(by_epoch[0]) == len(by_epoch[1]) == 40 and len(by_epoch[2]) == 20  # full passes before repeats


def test_phases_are_ordered_and_override_weights(write_mix, store):
    path = write_mix("phased", """
        name: phased
        budget: {unit: samples, total: 90}
        components:
          - {name: math, source: {procedural: math, level: 1}}
          - {name: chat, source: {procedural: chat, level: 1}}
        phases:
          - {name: warmup, share: 1, weights: {chat: 0}}
          - {name: mixed, share: 2}
        """, LIGHT)
    built = build(path, store=store)
    rows = _table(built)
    phases = [r["phase"] for r in rows]
    assert phases == ["warmup"] * 30 + ["mixed"] * 60
    assert {r["group_path"] for r in rows[:30]} == {"math"}
    assert sum(r["group_path"] == "chat" for r in rows[30:]) == 30
    assert [p["name"] for p in built.manifest["phases"]] == ["warmup", "mixed"]
    # No row repeats across phases while the pool lasts (one stream per source).
    math_ids = [r["row_id"] for r in rows if r["group_path"] == "math"]
    assert len(set(math_ids)) == len(math_ids) == 60
    assert len(load_dataset(built.mixture_id, phase="warmup")) == 30


def test_duckdb_rows(write_mix, store):
    path = write_mix("db", """
        name: db
        family: testing
        budget: {unit: samples, total: 60}
        components:
          - {name: math, weight: 1, source: {procedural: math, level: 1}}
          - {name: held, weight: 1, source: {procedural: math, split: heldout}}  # = the proc-math eval items
        """, LIGHT)
    with pytest.raises(MixlabError, match="impossible"):
        build(path, store=store)  # every held-out row is contaminated, so `held` has nothing left
    path.write_text(path.read_text().replace("decontamination: {tasks: [proc-math]}",
                                             "decontamination: {tasks: [proc-math], fields: [response]}"))
    built = build(path, store=store)
    (m,) = store.query("SELECT * FROM mixtures")
    assert m["mixture_id"] == built.mixture_id and m["family"] == "testing" and m["n_rows"] == 60
    assert json.loads(m["manifest"])["n_tokens"] == m["n_tokens"]
    comps = store.query("SELECT * FROM mixture_components WHERE mixture_id = ? ORDER BY source_name", [built.mixture_id])
    assert [c["source_name"] for c in comps] == ["held", "math"]
    assert sum(c["realised_share"] for c in comps) == pytest.approx(1.0)
    assert sum(c["target_share"] for c in comps) == pytest.approx(1.0)
    srcs = store.query("SELECT * FROM sources")
    assert {s["source_id"] for s in srcs} == {c["source_id"] for c in comps}
    assert all(s["uri"].startswith("procedural://math") for s in srcs)
    # A cache hit re-records nothing twice.
    build(path, store=store)
    assert len(store.query("SELECT * FROM mixture_components")) == 2


def test_fast_token_counts_match_the_chat_template(local_data):
    from mixlab.mixtures import adapters

    counter = TokenCounter("mixlab-bpe")
    conv = json.loads((local_data / "sharegpt.json").read_text())
    sharegpt, opts = adapters.resolve_adapter("sharegpt", None, "sft")
    sft_rows = [sharegpt.fn(r, opts, "sft") for r in conv]
    tokens, trainable = counter.count(sft_rows, "sft")
    for row, n, t in zip(sft_rows, tokens, trainable):
        assert (n, t) == counter.exact_count(row, "sft")
    prefs = json.loads((local_data / "prefs.json").read_text())
    pref_rows = [adapters.resolve_adapter("sharegpt", None, "preference")[0].fn(r, opts, "preference") for r in prefs]
    tokens, trainable = counter.count(pref_rows, "preference")
    assert [(int(a), int(b)) for a, b in zip(tokens, trainable)] == [counter.exact_count(r, "preference") for r in pref_rows]
    gsm_fn, gsm_opts = adapters.resolve_adapter("gsm8k", None, "rl")
    rl_rows = [gsm_fn.fn(json.loads(line), gsm_opts, "rl") for line in (local_data / "gsm/train.jsonl").read_text().splitlines()]
    tokens, _ = counter.count(rl_rows, "rl")
    assert [int(t) for t in tokens] == [counter.exact_count(r, "rl")[0] for r in rl_rows]
