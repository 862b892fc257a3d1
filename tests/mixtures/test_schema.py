"""Schema validation: one-line errors with file, line and field; closest-name suggestions; extends."""

from __future__ import annotations

import pytest

from mixlab.errors import MixlabError
from mixlab.mixtures import component_weights, load_mixture, write_variant
from mixlab.mixtures.registry_io import registry_files

BASE = """
name: base
budget: {unit: samples, total: 100}
components:
  - name: math
    weight: 2
    source: {procedural: math, level: 1}
  - name: chat
    weight: 1
    source: {procedural: chat, level: 1}
"""


def _error(path) -> str:
    with pytest.raises(MixlabError) as info:
        load_mixture(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_file_parses_with_defaults(write_mix):
    spec = load_mixture(write_mix("base", BASE)).spec
    assert spec.kind == "sft" and spec.tokenizer == "mixlab-bpe" and spec.max_epochs == 1.0
    assert spec.dedup.exact and spec.dedup.near.threshold == 0.85 and spec.decontamination.n == 13
    assert [path for _, path in spec.leaves()] == ["math", "chat"]


def test_unknown_top_level_field_names_line_and_closest(write_mix):
    path = write_mix("typo", BASE.replace("budget:", "budjet:"))
    msg = _error(path)
    assert msg.startswith(f"{path}:")
    assert "did you mean 'budget'" in msg


def test_nested_typo_names_line_and_field(write_mix):
    path = write_mix("typo2", BASE.replace("source: {procedural: chat", "source: {procedurl: chat"))
    msg = _error(path)
    assert f"{path}:9:" in msg and "components.1.source" in msg and "did you mean 'procedural'" in msg


def test_malformed_yaml_names_line(write_mix):
    path = write_mix("bad", BASE + "  - name: [unclosed\n")
    msg = _error(path)
    assert f"{path}:" in msg and "malformed YAML" in msg


@pytest.mark.parametrize(
    "edit,expect",
    [
        (("weight: 2", "weight: -1"), ["components.0.weight", "greater than or equal to 0", ":6:"]),
        (("weight: 2", "weight: 0"), []),  # one zero weight is fine ...
        (("kind: sft", "kind: sfft"), ["kind", "did you mean 'sft'"]),
        (("total: 100", "total: 0"), ["budget.total"]),
        (("unit: samples", "unit: tokenz"), ["budget.unit", "did you mean 'tokens'"]),
    ],
)
def test_field_errors(write_mix, edit, expect):
    text = ("kind: sft\n" + BASE.lstrip()).replace(*edit)
    path = write_mix("edited", text)
    if not expect:
        load_mixture(path)
        return
    msg = _error(path)
    for fragment in expect:
        assert fragment in msg, msg


def test_all_zero_weights_rejected(write_mix):
    path = write_mix("zeros", BASE.replace("weight: 2", "weight: 0").replace("weight: 1", "weight: 0"))
    assert "all zero" in _error(path)


def test_leaf_needs_exactly_one_of_source_or_components(write_mix):
    path = write_mix("both", BASE.replace("    weight: 1\n", "    weight: 1\n    components: []\n"))
    assert "exactly one of `source`" in _error(path)


def test_source_needs_exactly_one_origin_and_valid_options(write_mix):
    path = write_mix("origin", BASE.replace("{procedural: math, level: 1}", "{procedural: math, local: x.jsonl}"))
    assert "exactly one of local, hub, procedural" in _error(path)
    path = write_mix("fmt", BASE.replace("{procedural: math, level: 1}", "{procedural: math, format: json}"))
    assert "`format` applies to local sources only" in _error(path)


def test_duplicate_names_and_unknown_phase_component(write_mix):
    path = write_mix("dupe", BASE.replace("name: chat", "name: math"))
    assert "unique" in _error(path)
    path = write_mix("phase", BASE + "phases:\n  - {name: p1, share: 1, weights: {chatt: 0}}\n")
    assert "did you mean 'chat'" in _error(path)


def test_extends_merges_components_by_name_and_keeps_line_provenance(write_mix, mixdir):
    base = write_mix("base", BASE)
    child = write_mix("child", """
        name: child
        extends: base.yaml
        seed: 7
        components:
          - {name: chat, weight: 3}
          - {name: code, weight: 1, source: {procedural: code, level: 1}}
        """)
    spec = load_mixture(child).spec
    assert spec.seed == 7 and spec.budget.total == 100
    assert [(c.name, c.weight) for c in spec.components] == [("math", 2), ("chat", 3), ("code", 1)]
    assert spec.components[0].source.procedural == "math"  # inherited
    # An error in an inherited field points at the parent file and line.
    base.write_text(BASE.lstrip().replace("level: 1}", "levle: 1}", 1))
    msg = _error(child)
    assert f"{base}:6:" in msg and "did you mean 'level'" in msg


def test_extends_errors(write_mix):
    path = write_mix("orphan", "name: orphan\nextends: no-such-mixture\n")
    msg = _error(path)
    assert f"{path}:2:" in msg and "unknown mixture" in msg
    write_mix("a", "name: a\nextends: b.yaml\n")
    path = write_mix("b", "name: b\nextends: a.yaml\n")
    assert "cycle" in _error(path)
    close = _error(write_mix("close", "name: close\nextends: demo-balancd\n"))
    assert "did you mean 'demo-balanced'" in close


def test_registry_examples_all_validate():
    names = set(registry_files())
    assert {"demo-math-heavy", "demo-code-heavy", "demo-chat-heavy", "demo-balanced", "demo-rl", "demo-pref",
            "real-sft"} <= names
    for name in names:
        load_mixture(name)


def test_component_weights_and_write_variant(tmp_path):
    weights = dict(component_weights("demo-math-heavy"))
    assert weights == pytest.approx({"math": 0.7, "code": 0.15, "chat": 0.15})
    path = write_variant("demo-balanced", "demo-variant", {"math": 0.5, "code": 0.25, "chat": 0.25}, tmp_path)
    spec = load_mixture(path).spec
    assert spec.name == "demo-variant" and dict(component_weights(path)) == pytest.approx(
        {"math": 0.5, "code": 0.25, "chat": 0.25})
    with pytest.raises(MixlabError, match="did you mean 'math'"):
        write_variant("demo-balanced", "v2", {"maths": 1.0}, tmp_path)
