"""Sources, adapters, filters, dedup, decontamination and the loader, each on real files."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest

from mixlab.errors import MixlabError
from mixlab.mixtures import build, load_dataset

NO_DECON = "decontamination: {enabled: false}\n"


def _rows(built):
    return [r for s in built.manifest["shards"] for r in pq.read_table(built.path / s["file"]).to_pylist()]


def _one_source(write_mix, name, source, kind="sft", total=5, extra=NO_DECON, more=""):
    return write_mix(name, f"""
        name: {name}
        kind: {kind}
        budget: {{unit: samples, total: {total}}}
        components:
          - name: src
            source: {source}
        {more}""", extra)


# -- sources ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("local,n", [("alpaca/*.jsonl", 40), ("alpaca_list.json", 10), ("alpaca.jsonl.gz", 5),
                                     ("alpaca.parquet", 7)])
def test_local_formats_and_globs(write_mix, store, local_data, local, n):
    path = _one_source(write_mix, "fmt", f"{{local: {local}, adapter: alpaca}}", total=n)
    built = build(path, data_root=local_data, store=store)
    (comp,) = built.manifest["components"]
    assert comp["loaded_rows"] == n and comp["realised_rows"] == n
    lock = json.loads((built.path / "mixture.lock").read_text())
    files = lock["sources"][0]["files"]
    assert len(files) == (2 if "*" in local else 1) and all(len(f["sha256"]) == 64 for f in files)
    assert not files[0]["path"].startswith("/")  # recorded relative to the data root


def test_missing_file_and_offline_hub_fail_clearly(write_mix, store, local_data):
    path = _one_source(write_mix, "missing", "{local: nope/*.jsonl, adapter: alpaca}")
    with pytest.raises(MixlabError) as info:
        build(path, data_root=local_data, store=store)
    assert f"{path}:6:" in str(info.value) and "components.0.source.local" in str(info.value)
    assert "no file matches 'nope/*.jsonl'" in str(info.value)
    path = _one_source(write_mix, "hub", "{hub: openai/gsm8k, config: main, adapter: gsm8k}")
    with pytest.raises(MixlabError, match=r"hub.yaml:6: components.0.source.hub: dataset 'openai/gsm8k' needs the network"):
        build(path, store=store)


def test_a_malformed_row_names_file_and_line(write_mix, store, local_data):
    (local_data / "broken.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    path = _one_source(write_mix, "broken", "{local: broken.jsonl, adapter: alpaca}")
    with pytest.raises(MixlabError, match=r"broken.jsonl:2: source src \(adapter alpaca\): missing field 'output'"):
        build(path, data_root=local_data, store=store)
    (local_data / "broken.jsonl").write_text('{"instruction": "a", "output": "b"}\nnot json\n')
    with pytest.raises(MixlabError, match=r"broken.jsonl:2: not valid JSON"):
        build(path, data_root=local_data, store=store)


# -- adapters --------------------------------------------------------------------------------------------------


def test_sharegpt_multiturn_sft_and_preference(write_mix, store, local_data):
    built = build(_one_source(write_mix, "sg", "{local: sharegpt.json, adapter: {name: sharegpt, row_id: id}}"),
                  data_root=local_data, store=store)
    row = _rows(built)[0]
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert [m["train"] for m in row["messages"]] == [False, False, True, False, True]
    assert row["row_id"].startswith("conv")
    pref = build(_one_source(write_mix, "pref", "{local: prefs.json, adapter: sharegpt}", kind="preference"),
                 data_root=local_data, store=store)
    ds = load_dataset(pref.mixture_id, kind="preference")
    assert ds.column_names == ["prompt", "chosen", "rejected", "source_id", "row_id", "phase"]
    assert ds[0]["prompt"][0]["role"] == "user" and ds[0]["chosen"][0]["role"] == "assistant"
    assert ds[0]["rejected"][0]["content"] == "No."


def test_gsm8k_math_and_code_adapters_for_rl(write_mix, store, local_data):
    gsm = build(_one_source(write_mix, "g", "{local: gsm/train.jsonl, adapter: gsm8k}", kind="rl", total=30),
                data_root=local_data, store=store)
    ds = load_dataset(gsm.mixture_id, kind="rl")
    row = next(r for r in ds if r["row_id"] == "4")
    assert row["ground_truth"] == "5" and row["verifier"] == "math" and row["task"] == "gsm8k"
    assert row["prompt"] == [{"role": "user", "content": "Tom has 7 apples and eats 2. How many are left?"}]
    sft = build(_one_source(write_mix, "gs", "{local: gsm/train.jsonl, adapter: gsm8k}", total=30),
                data_root=local_data, store=store)
    answer = next(r for r in _rows(sft) if r["row_id"] == "4")["messages"][1]["content"]
    assert "<<" not in answer and answer.endswith("#### 5")
    math = build(_one_source(write_mix, "m", "{local: math.jsonl, adapter: {name: math, answer: null}}", kind="rl",
                             total=10), data_root=local_data, store=store)
    assert sorted(int(r["ground_truth"]) for r in load_dataset(math.mixture_id)) == [i * i for i in range(10)]
    code = build(_one_source(write_mix, "c", "{local: mbpp.jsonl, adapter: {name: code, row_id: task_id}}", kind="rl",
                             total=6), data_root=local_data, store=store)
    row = next(r for r in load_dataset(code.mixture_id) if r["row_id"] == "901")
    truth = json.loads(row["ground_truth"])
    assert truth["entry_point"] == "add_1" and truth["tests"] == ["assert add_1(1) == 2"]
    assert row["verifier"] == "code" and "assert add_1(1) == 2" in row["prompt"][0]["content"]
    he = build(_one_source(write_mix, "h", "{local: humaneval.jsonl, adapter: code}", kind="rl", total=1),
               data_root=local_data, store=store)
    truth = json.loads(load_dataset(he.mixture_id)[0]["ground_truth"])
    assert truth["entry_point"] == "inc" and truth["tests"][-1] == "check(inc)"
    exec(truth["tests"][0] + "\n" + "def inc(x):\n    return x + 1\n" + truth["tests"][1])  # the tests run


def test_field_mapping_adapter_for_every_kind(write_mix, store, local_data):
    base = "{local: custom.jsonl, adapter: {name: fields, prompt: q, %s}}"
    sft = build(_one_source(write_mix, "f1", base % "response: a, system: Be terse.", total=10),
                data_root=local_data, store=store)
    msgs = _rows(sft)[0]["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"] and msgs[0]["content"] == "Be terse."
    pref = build(_one_source(write_mix, "f2", base % "chosen: good, rejected: bad", kind="preference", total=10),
                 data_root=local_data, store=store)
    assert _rows(pref)[0]["rejected"][0]["content"] == "Bad"
    rl = build(_one_source(write_mix, "f3", base % "ground_truth: truth, verifier: json-match, task: demo", kind="rl",
                           total=10), data_root=local_data, store=store)
    row = _rows(rl)[0]
    assert json.loads(row["ground_truth"]).keys() == {"x"} and row["verifier"] == "json-match" and row["task"] == "demo"


@pytest.mark.parametrize("adapter,expect", [
    ("alpacca", "unknown adapter 'alpacca' (did you mean 'alpaca'?)"),
    ("{name: alpaca, instructoin: q}", "unknown option 'instructoin' (did you mean 'instruction'?)"),
    ("math", "'math' produces ['sft', 'rl'] rows, this is a preference mixture"),
])
def test_adapter_errors(write_mix, store, local_data, adapter, expect):
    path = _one_source(write_mix, "ad", f"{{local: alpaca.parquet, adapter: {adapter}}}",
                       kind="preference" if adapter == "math" else "sft")
    with pytest.raises(MixlabError) as info:
        build(path, data_root=local_data, store=store)
    assert expect in str(info.value) and f"{path}:6:" in str(info.value)


# -- filters ---------------------------------------------------------------------------------------------------


def test_filters_count_drops_per_filter(write_mix, store, local_data, mixdir):
    rows = [{"instruction": f"Question number {i} about apples", "output": out} for i, out in enumerate([
        "A short answer.", "x" * 500, "banned word here", "spam spam spam spam spam spam spam spam spam spam spam spam",
        "Dies ist eine deutsche Antwort auf die Frage nach den Äpfeln im Garten.",
        "An ordinary English answer about apples in the garden.", "ok"])]
    (local_data / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (mixdir / "myfilters.py").write_text(
        "from mixlab.mixtures import register_filter\n"
        "from mixlab.mixtures.filters import FilterParams\n"
        "class P(FilterParams):\n    min_len: int = 3\n"
        "@register_filter('min_answer', P)\n"
        "def min_answer(view, p):\n    return len(view.response) >= p.min_len\n")
    path = write_mix("filt", """
        name: filt
        budget: {unit: samples, total: 2}
        plugins: [myfilters.py]
        filters:
          - {name: length, max_chars: 200}
        components:
          - name: src
            source: {local: mixed.jsonl, adapter: alpaca}
            filters:
              - {name: regex, pattern: "\\\\bbanned\\\\b"}
              - {name: repetition, n: 1, max_ratio: 0.5}
              - {name: language, languages: [en]}
              - {name: min_answer, min_len: 3}
        """, NO_DECON)
    built = build(path, data_root=local_data, store=store)
    dropped = built.manifest["components"][0]["dropped"]["filters"]
    assert dropped == {"length": 1, "regex": 1, "repetition": 1, "language": 1, "min_answer": 1}
    kept = {r["messages"][1]["content"] for r in _rows(built)}
    assert kept == {"A short answer.", "An ordinary English answer about apples in the garden."}
    (comp,) = store.query("SELECT dropped_filter FROM mixture_components")
    assert comp["dropped_filter"] == 5


@pytest.mark.parametrize("entry,expect", [
    ("{name: lenght, max_chars: 5}", "unknown filter 'lenght' (did you mean 'length'?)"),
    ("{name: length, max_char: 5}", "unknown parameter 'max_char' (did you mean 'max_chars'?)"),
    ("{name: regex, pattern: '('}", "not a valid regex"),
])
def test_filter_errors_name_line(write_mix, store, entry, expect):
    path = write_mix("badf", f"""
        name: badf
        budget: {{unit: samples, total: 5}}
        filters:
          - {entry}
        components:
          - {{name: m, source: {{procedural: math, level: 1}}}}
        """, NO_DECON)
    with pytest.raises(MixlabError) as info:
        build(path, store=store)
    assert f"{path}:4: filters.0:" in str(info.value) and expect in str(info.value)


# -- dedup -----------------------------------------------------------------------------------------------------


def test_exact_dedup_across_sources_and_near_dedup(write_mix, store, local_data):
    import random

    vocab = [f"word{i}" for i in range(300)]
    rngs = [random.Random(i) for i in range(3)]
    stories = [" ".join(rng.choice(vocab) for _ in range(40)) for rng in rngs]
    a = [{"instruction": f"Tell story {i}", "output": stories[i]} for i in range(3)]
    near = stories[0].split()
    near[20] = "changed"
    a.append({"instruction": "Tell story 0", "output": " ".join(near)})  # near duplicate of row 0
    b = [{"instruction": "tell   STORY 1", "output": stories[1].upper()},  # exact duplicate after normalisation
         {"instruction": "Something else entirely", "output": "A different answer with other words."}]
    (local_data / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in a))
    (local_data / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in b))
    text = """
        name: dd
        budget: {unit: samples, total: 4}
        dedup: {near: {threshold: 0.7}}
        components:
          - {name: a, weight: 3, source: {local: a.jsonl, adapter: alpaca}}
          - {name: b, weight: 1, source: {local: b.jsonl, adapter: alpaca}}
        """
    built = build(write_mix("dd", text, NO_DECON), data_root=local_data, store=store)
    comps = {c["path"]: c["dropped"] for c in built.manifest["components"]}
    assert comps["a"]["dedup_near"] == 1 and comps["a"]["dedup_exact"] == 0
    assert comps["b"]["dedup_exact"] == 1
    example = built.manifest["dedup"]["near_examples"][0]
    assert (example["row_id"], example["matches_row_id"]) == ("3", "0")
    assert built.manifest["dedup"]["near"]["bands_rows"][0] > 1
    # Dedup parameters are part of the mixture id.
    other = build(write_mix("dd", text.replace("0.7", "0.9"), NO_DECON), data_root=local_data, store=store)
    assert other.mixture_id != built.mixture_id and other.manifest["dedup"]["dropped_near"] == 0


def test_minhash_estimates_jaccard_without_bias():
    import random

    import numpy as np

    from mixlab.mixtures.dedup import jaccard, minhash_signatures

    rng = random.Random(0)
    words = [f"w{i}" for i in range(500)]
    errors = []
    for _ in range(150):
        a = [rng.choice(words) for _ in range(40)]
        b = list(a)
        for _ in range(rng.randint(1, 12)):
            b[rng.randrange(40)] = rng.choice(words)
        sig = minhash_signatures([" ".join(a), " ".join(b)], 128, 5)
        errors.append((sig[0] == sig[1]).mean() - jaccard(" ".join(a), " ".join(b)))
    assert abs(np.mean(errors)) < 0.02 and np.std(errors) < 0.06


# -- decontamination -------------------------------------------------------------------------------------------


def test_procedural_train_splits_pass_the_gate_and_heldout_is_caught(write_mix, store):
    path = write_mix("proc", """
        name: proc
        budget: {unit: samples, total: 1800}
        decontamination: {tasks: [proc-math, proc-code, proc-chat]}
        components:
          - {name: math, source: {procedural: math}}
          - {name: code, source: {procedural: code}}
          - {name: chat, source: {procedural: chat}}
          - {name: math-l1, source: {procedural: math, level: 1}}
          - {name: chat-l1, source: {procedural: chat, level: 1}}
        """)
    built = build(path, store=store)
    dc = built.manifest["decontamination"]
    assert dc["tasks"] == {"proc-math": 300, "proc-code": 300, "proc-chat": 300}
    assert dc["flagged_rows"] == 0 and dc["hits"] == 0  # the splits are disjoint: the gate confirms it
    held = write_mix("held", """
        name: held
        budget: {unit: samples, total: 10}
        decontamination: {tasks: [proc-chat]}
        components:
          - {name: chat, source: {procedural: chat, split: heldout, n: 40}}
        """)
    with pytest.raises(MixlabError, match="has no rows left"):
        build(held, store=store)


def _plant(task_name: str, data_root):
    """The first contamination text of a registered task's first item, or skip while the task is absent."""
    from mixlab.evals.tasks.base import get_task, task_names

    if task_name not in task_names():
        pytest.skip(f"eval task {task_name} not registered yet")
    task = get_task(task_name)
    try:
        item = task.load(data_root, limit=1)[0]
    except MixlabError as exc:
        pytest.skip(f"{task_name}: {exc}")
    return item, task.contamination_texts(item)[0]


@pytest.mark.parametrize("task_name", ["gsm8k", "math500", "humaneval", "mbpp", "ifeval", "mt-bench"])
def test_gate_covers_the_benchmarks(write_mix, store, tmp_path, bench_slices, task_name):
    data_root = bench_slices  # the first item of each benchmark is in the committed slices (mt-bench: skipped)
    item, text = _plant(task_name, data_root)
    rows = [{"instruction": "Please help me with this.", "output": "Sure, here is a plan."},
            {"instruction": f"Copied: {text}", "output": "An answer."},
            {"instruction": "Unrelated question about the weather in spring?", "output": "It is mild."}]
    (tmp_path / "planted.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = write_mix("planted", f"""
        name: planted
        budget: {{unit: samples, total: 2}}
        decontamination: {{tasks: [{task_name}]}}
        components:
          - {{name: src, source: {{local: {tmp_path}/planted.jsonl, adapter: alpaca}}}}
        """)
    built = build(path, data_root=data_root, store=store)
    assert built.manifest["components"][0]["dropped"]["decontamination"] == 1
    (hit,) = store.query("SELECT * FROM contamination WHERE mixture_id = ?", [built.mixture_id])
    assert hit["benchmark"] == task_name and hit["item_id"] == item.item_id and hit["row_id"] == "1"
    words = re.findall(r"\w+", text.lower())
    assert hit["field"] == "prompt" and len(hit["ngram"].split()) == min(13, len(words))
    assert hit["ngram"] in " ".join(words)


def test_decontamination_errors_and_threshold(write_mix, store):
    path = write_mix("dc", """
        name: dc
        budget: {unit: samples, total: 5}
        decontamination: {tasks: [gsm8kk]}
        components:
          - {name: m, source: {procedural: math, level: 1}}
        """)
    with pytest.raises(MixlabError, match=r"dc.yaml:3: decontamination: unknown eval task 'gsm8kk' \(did you mean 'gsm8k'\?\)"):
        build(path, store=store)
    path = write_mix("dc2", """
        name: dc2
        budget: {unit: samples, total: 10}
        decontamination: {tasks: [proc-math], max_flagged_fraction: 0.1}
        components:
          - {name: train, weight: 1, source: {procedural: math, n: 20}}
          - {name: leak, weight: 1, source: {procedural: math, split: heldout, n: 20}}
        """)
    with pytest.raises(MixlabError, match=r"20 of 40 rows \(50.0%\) overlap eval sets, above the limit 10.0%"):
        build(path, store=store)


# -- demo registry mixtures + loader ---------------------------------------------------------------------------


def test_demo_registry_mixtures_build_and_load(store):
    from mixlab.evals.procedural import verify

    for name, kind in [("demo-math-heavy", "sft"), ("demo-rl", "rl"), ("demo-pref", "preference")]:
        built = build(name, store=store)
        assert built.manifest["decontamination"]["flagged_rows"] == 0
        ds = load_dataset(name, kind=kind)
        assert len(ds) == built.manifest["budget"]["total"] and {"source_id", "row_id"} <= set(ds.column_names)
    shares = {c["path"]: c["realised_share"] for c in build("demo-math-heavy", store=store).manifest["components"]}
    assert shares == pytest.approx({"math": 0.7, "code": 0.15, "chat": 0.15})
    rl = load_dataset("demo-rl", kind="rl")
    assert set(rl["verifier"]) == {"math", "code", "format"}
    # demo-pref: chosen is the verified reference, rejected fails the same verifier.
    from mixlab.evals.procedural import generate

    items = {x["id"]: x for kind in ("math", "chat") for x in generate(kind, "train", 300, level=1)}
    checked = 0
    for row in load_dataset("demo-pref"):
        item = items.get(row["row_id"])
        if item is None:
            continue
        assert verify(item, response=row["chosen"][0]["content"]) == 1.0
        assert verify(item, response=row["rejected"][0]["content"]) == 0.0
        checked += 1
    assert checked >= 100
    with pytest.raises(MixlabError, match="is a rl mixture, not sft"):
        load_dataset("demo-rl", kind="sft")
