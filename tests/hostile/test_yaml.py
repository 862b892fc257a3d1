"""Hostile YAML through the one loader (mixlab/yamlio.py) and through each CLI that reads YAML:
one line naming file and line, exit code 2, bounded time and memory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mixlab import cli, yamlio
from mixlab.errors import MixlabError
from mixlab.yamlio import MAX_BYTES, MAX_DEPTH, load_yaml


def _bomb() -> str:
    # "billion laughs": 9 levels of 9 aliases each expand to 9**9 (387M) strings
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    prev = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = name
    return "\n".join(lines) + "\n"


def _refused(path: Path, monkeypatch=None) -> str:
    if monkeypatch is not None:  # bounded by construction: refused before a single node is expanded
        monkeypatch.setattr(yamlio, "_walk", lambda *a, **k: pytest.fail("expansion started"))
    with pytest.raises(MixlabError) as info:
        load_yaml(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_alias_bomb_refused(tmp_path, monkeypatch):
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    assert _refused(path, monkeypatch) == f"{path}:6: YAML expands to more than 100,000 nodes (alias bomb?), refused"


def test_recursive_alias_refused(tmp_path, monkeypatch):
    path = tmp_path / "rec.yaml"
    path.write_text("a: &x [1, *x]\n")
    assert _refused(path, monkeypatch) == f"{path}:1: recursive YAML alias"


def test_small_aliases_still_work(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {lr: 1e-3, steps: 10}\nrun: *b\n")
    data, _ = load_yaml(path)
    assert data["run"] == {"lr": 1e-3, "steps": 10}


def test_non_utf8_names_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: ok\ndescription: caf\xe9\n")
    assert _refused(path) == f"{path}:2: not UTF-8 text (byte 0xe9 at offset 25)"


@pytest.mark.parametrize("text", [
    "name: !!python/object/apply:os.system ['echo pwned']\n",
    "name: !!python/name:os.system\n",  # the tag on a plain scalar
    "name: !!python/tuple [1, 2]\n",
    "items:\n  - ok\n  - !!python/object:collections.OrderedDict {}\n",
    "name: !custom value\n",
])
def test_python_and_unknown_tags_refused(tmp_path, text):
    path = tmp_path / "tag.yaml"
    path.write_text(text)
    message = _refused(path)
    assert "is not allowed" in message and "YAML tag" in message
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "!" in row)
    assert message.startswith(f"{path}:{line}: YAML tag ")


def test_deep_nesting_refused(tmp_path, monkeypatch):
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert _refused(path, monkeypatch) == f"{path}:1: YAML nested deeper than {MAX_DEPTH} levels"


def test_huge_file_refused_before_parsing(tmp_path, monkeypatch):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as fh:  # 100 MB, sparse: cheap to make
        fh.write(b"a: 1\n")
        fh.truncate(100 * 1024 * 1024)
    read = []
    real_open = open
    monkeypatch.setattr(yamlio, "open", lambda *a, **k: _Spy(real_open(*a, **k), read), raising=False)
    assert _refused(path) == f"{path}: YAML file larger than {MAX_BYTES // (1024 * 1024)} MiB, refused before parsing"
    assert sum(read) == MAX_BYTES + 1  # never more than the cap is read into memory


class _Spy:
    def __init__(self, fh, sizes):
        self.fh, self.sizes = fh, sizes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def read(self, n=-1):
        data = self.fh.read(n)
        self.sizes.append(len(data))
        return data


def test_text_input_is_capped_too():
    with pytest.raises(MixlabError, match="larger than"):
        load_yaml("<recipe>", text="a: 1\n" + "#" * (MAX_BYTES + 1))


@pytest.mark.parametrize("command", [["mix", "build"], ["run", "--dry-run"], ["sweep"], ["ladder"]],
                         ids=["mixture", "recipe", "sweep", "ladder"])
@pytest.mark.parametrize("case", ["bomb", "latin1"])
def test_every_yaml_cli_refuses_in_one_line(tmp_path, monkeypatch, capsys, command, case):
    """Through `mixlab.cli.main` (the console script's code) in-process: one line on stderr, exit 2."""
    path = tmp_path / f"{case}.yaml"
    if case == "bomb":
        path.write_text(_bomb())
        expected = f"error: {path}:6: YAML expands to more than 100,000 nodes (alias bomb?), refused"
    else:
        path.write_bytes(b"name: caf\xe9\n")
        expected = f"error: {path}:1: not UTF-8 text (byte 0xe9 at offset 9)"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MIXLAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("MIXLAB_DB", str(tmp_path / "runs" / "mixlab.duckdb"))
    monkeypatch.setattr(sys, "argv", ["mixlab", *command, str(path)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out = capsys.readouterr()
    assert (exit_info.value.code, out.out, out.err) == (2, "", expected + "\n")
    assert not any((tmp_path / "runs").rglob("*.parquet"))  # nothing written


def test_merge_keys_work_and_explicit_keys_win(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {lr: 1e-3, steps: 10}\nextra: &e {seed: 1}\nrun:\n  <<: [*b, *e]\n  steps: 20\n")
    data, where = load_yaml(path)
    assert data["run"] == {"lr": 1e-3, "steps": 20, "seed": 1}
    assert where.line(("run", "steps")) == 5
    path.write_text("run:\n  <<: 3\n")
    assert _refused(path) == f"{path}:2: '<<' merges mappings only"
