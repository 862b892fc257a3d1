"""`mixlab mix ...` through the real CLI entry point: bad input gives one line, exit 2 and nothing written."""

from __future__ import annotations

import json
import sys

import pytest

from mixlab import procs

BASE = """\
name: bad
budget: {unit: samples, total: 30}
decontamination: {tasks: [proc-math]}
components:
  - name: math
    weight: 1
    source: {procedural: math, level: 1}
  - name: local
    weight: 1
    source: {local: rows.jsonl, adapter: alpaca}
"""


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from mixlab.cli import main

    monkeypatch.setattr(sys, "argv", ["mixlab", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def rows_dir(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "rows.jsonl").write_text("".join(json.dumps({"instruction": f"Say {i}", "output": f"Number {i}."}) + "\n"
                                          for i in range(20)))
    return d


CASES = {
    "malformed-yaml": (lambda t: t + "  - name: [oops\n", ":12:", "malformed YAML"),
    "unknown-field": (lambda t: t.replace("budget:", "budgett:"), ":2:", "did you mean 'budget'"),
    "nested-typo": (lambda t: t.replace("adapter: alpaca", "adaptor: alpaca"), ":10:", "did you mean 'adapter'"),
    "missing-file": (lambda t: t.replace("rows.jsonl", "absent.jsonl"), ":10:", "no file matches 'absent.jsonl'"),
    "negative-weight": (lambda t: t.replace("weight: 1\n    source: {local", "weight: -2\n    source: {local"), ":9:",
                        "components.1.weight"),
    "all-zero-weights": (lambda t: t.replace("weight: 1", "weight: 0"), ":", "are all zero"),
    "impossible-budget": (lambda t: t.replace("total: 30", "total: 300"), ":2:",
                          "local needs 7.50 epochs of its 20 rows (max_epochs 1)"),
    "unknown-adapter": (lambda t: t.replace("adapter: alpaca", "adapter: alpacca"), ":10:", "did you mean 'alpaca'"),
    "unknown-filter": (lambda t: t + "filters:\n  - {name: lenght, max_chars: 9}\n", ":12:", "did you mean 'length'"),
    "hub-offline": (lambda t: t.replace("{local: rows.jsonl, adapter: alpaca}", "{hub: tatsu-lab/alpaca, adapter: alpaca}"),
                    ":10:", "needs the network"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_one_line_nonzero_nothing_written(monkeypatch, capsys, rows_dir, isolated_runs, case):
    edit, line, fragment = CASES[case]
    path = rows_dir / "bad.yaml"
    path.write_text(edit(BASE))
    code, out, err = run_cli(monkeypatch, capsys, "mix", "build", str(path), "--data-root", str(rows_dir))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}{line}"), err
    assert fragment in lines[0]
    assert not list((isolated_runs / "artifacts").glob("mixtures/*")) if (isolated_runs / "artifacts").exists() else True
    from mixlab.store import Store

    store = Store()
    assert not store.exists() or not store.query("SELECT * FROM mixtures")


def test_real_process_exit_code(tmp_path, rows_dir):
    path = rows_dir / "bad.yaml"
    path.write_text(BASE.replace("budget:", "budjet:"))
    env = {**__import__("os").environ, "MIXLAB_RUNS": str(tmp_path / "runs")}
    proc = procs.run(["-c", "from mixlab.cli import main; main()", "mix", "build", str(path)],
                     capture_output=True, text=True, cwd=tmp_path, env_base=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {path}:2: budjet: unknown field 'budjet' (did you mean 'budget'?)"]
    assert not (tmp_path / "runs" / "artifacts").exists()


def test_build_list_show_diff(monkeypatch, capsys, rows_dir, store):
    path = rows_dir / "good.yaml"
    path.write_text(BASE.replace("name: bad", "name: good"))
    code, out, err = run_cli(monkeypatch, capsys, "mix", "build", str(path), "--data-root", str(rows_dir), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["n_rows"] == 30 and not summary["cache_hit"]
    assert {c["path"]: c["realised_rows"] for c in summary["components"]} == {"math": 15, "local": 15}
    code, out, _ = run_cli(monkeypatch, capsys, "mix", "build", str(path), "--data-root", str(rows_dir))
    assert code == 0 and "cache hit" in out and "local" in out and "50.0%" in out
    variant = rows_dir / "variant.yaml"
    variant.write_text("name: variant\nextends: good.yaml\ncomponents:\n  - {name: math, weight: 2}\n")
    code, out, err = run_cli(monkeypatch, capsys, "mix", "diff", str(path), str(variant), "--data-root", str(rows_dir))
    assert code == 0, err
    assert "+16.7" in out and "-16.7" in out and "weight: 2" in out
    code, out, _ = run_cli(monkeypatch, capsys, "mix", "list")
    assert code == 0 and "demo-balanced" in out and "real-sft" in out
    code, out, _ = run_cli(monkeypatch, capsys, "mix", "show", str(path), "--preview", "2")
    assert code == 0 and "phase main" in out and "last build good-" in out
    assert out.count(" trainable\n") == 2 and "<|im_assistant|>assistant<|im_middle|>" in out
    assert store.query("SELECT count(*) AS n FROM mixtures")[0]["n"] == 2
