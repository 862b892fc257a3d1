"""Hostile YAML through the one loader (mixlab/yamlio.py) and through each CLI that reads YAML:
one line naming file and line, exit code 2, bounded time and memory."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from mixlab import procs
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


def _refused(path: Path) -> str:
    start = time.monotonic()
    with pytest.raises(MixlabError) as info:
        load_yaml(path)
    # a generous bound: the point is "not minutes" (the unbounded loader ran past 60 s)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_alias_bomb_refused(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    assert "alias bomb" in _refused(path)


def test_recursive_alias_refused(tmp_path):
    path = tmp_path / "rec.yaml"
    path.write_text("a: &x [1, *x]\n")
    assert _refused(path) == f"{path}:1: recursive YAML alias"


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


def test_deep_nesting_refused(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert _refused(path) == f"{path}:1: YAML nested deeper than {MAX_DEPTH} levels"


def test_huge_file_refused_before_parsing(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as fh:  # 100 MB, sparse: cheap to make
        fh.write(b"a: 1\n")
        fh.truncate(100 * 1024 * 1024)
    assert _refused(path) == f"{path}: YAML file larger than {MAX_BYTES // (1024 * 1024)} MiB, refused before parsing"


def test_text_input_is_capped_too():
    with pytest.raises(MixlabError, match="larger than"):
        load_yaml("<recipe>", text="a: 1\n" + "#" * (MAX_BYTES + 1))


@pytest.mark.parametrize("command", [["mix", "build"], ["run", "--dry-run"], ["sweep"], ["ladder"]],
                         ids=["mixture", "recipe", "sweep", "ladder"])
def test_every_yaml_cli_refuses_a_bomb_in_one_line(tmp_path, command):
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    out = procs.run(procs.mixlab_args(*command, str(path)), capture_output=True, text=True, timeout=120,
                    cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [f"error: {path}:6: YAML expands to more than 100,000 nodes (alias bomb?), refused"]
    assert out.stdout == ""
