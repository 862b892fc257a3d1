"""Every CLI parse error is one line on stderr and exit code 2 (typer's bundled click raises them in non-standalone
mode; `mixlab.cli.main` maps them). Most cases run `main()` in-process, one through the real console entry point."""

from __future__ import annotations

import sys

import pytest

from mixlab import cli, procs


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["mixlab", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


CASES = {
    "bad value": (["eval", "run", "tiny", "--limit", "abc"],
                  "error: mixlab eval run: Invalid value for '--limit' / '-n': Input should be a valid integer, "
                  "unable to parse string as an integer (try 'mixlab eval run --help')"),
    "unknown option": (["--bogus"], "error: mixlab: No such option: --bogus (try 'mixlab --help')"),
    "unknown sub-option": (["mix", "build", "demo-balanced", "--forse"],
                           "error: mixlab mix build: No such option: --forse (Possible options: --force) "
                           "(try 'mixlab mix build --help')"),
    "missing argument": (["model", "info"],
                         "error: mixlab model info: Missing argument 'preset_or_path'. (try 'mixlab model info --help')"),
    "unknown command": (["no-such-command"], "error: mixlab: No such command 'no-such-command'. (try 'mixlab --help')"),
    "extra argument": (["version", "extra"], "error: mixlab version: Got unexpected extra argument(s) (extra) "
                       "(try 'mixlab version --help')"),
    "device": (["eval", "run", "tiny", "--suite", "proc-math-l1", "--device", "tpu"],
               "error: device 'tpu': expected auto, cpu or cuda[:N]"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_parse_errors_are_one_line_exit_2(monkeypatch, capsys, tmp_path, case):
    monkeypatch.chdir(tmp_path)  # nothing may be written anywhere that matters
    args, expected = CASES[case]
    code, out, err = _main(monkeypatch, capsys, *args)
    assert (code, out, err) == (2, "", expected + "\n")


def test_console_script_parse_error(tmp_path):
    out = procs.run(procs.mixlab_args("eval", "run", "tiny", "--limit", "abc"), capture_output=True, text=True,
                    timeout=120, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stdout == "" and out.stderr == CASES["bad value"][1] + "\n"


def test_serve_refuses_unknown_device(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert _main(monkeypatch, capsys, "serve", "tiny", "--device", "tpu") == (
        2, "", "error: device 'tpu': expected auto, cpu or cuda[:N]\n")


def test_bare_group_still_prints_help(monkeypatch, capsys):
    code, out, err = _main(monkeypatch, capsys, "mix")
    assert code == 0 and "Usage" in out + err
