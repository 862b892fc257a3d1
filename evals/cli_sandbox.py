"""`mixlab sandbox FILE.py`: run one Python file in the code sandbox and print the verdict."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("sandbox")(sandbox)


def sandbox(
    file: Path = typer.Argument(..., help="Python file to run (it runs as main.py in a fresh temp dir)."),
    timeout: float = typer.Option(10.0, "--timeout", help="Wall-clock limit in seconds (also the CPU-time limit)."),
    memory_mb: int = typer.Option(512, "--memory-mb", help="Address-space limit in MB (0: none)."),
    stdin_file: Optional[Path] = typer.Option(None, "--stdin", help="File whose content is fed to stdin."),
    mode: str = typer.Option("fork", "--mode", help="fork: warm fork-server interpreter; exec: a fresh python."),
    tests_file: Optional[Path] = typer.Option(
        None, "--tests", help="Trusted test file (asserts, check(f) ...) run in the sandbox's tester process against "
        "FILE's functions: passed = the tests ran to their end (FILE's exit status and output do not count)."),
    entry: list[str] = typer.Option([], "--entry", help="A name of FILE the tests call (repeatable; names the tests "
                                                        "use without defining them are found anyway)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
) -> None:
    """Run FILE.py in the sandbox (namespaces, private root, own uid, seccomp, rlimits, no network); exit 0 only
    if it passed."""
    from mixlab.errors import MixlabError
    from mixlab.evals.sandbox import run_code, run_tests

    def read(path: Path, what: str) -> str:
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MixlabError(f"{what} {path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise MixlabError(f"{what} {path}: cannot read ({exc})") from None

    code = read(file, "sandbox file")
    stdin = read(stdin_file, "--stdin file") if stdin_file is not None else None
    if tests_file is not None:
        if stdin is not None or mode != "fork":
            raise MixlabError("--tests runs in fork mode without --stdin")
        result = run_tests(code, read(tests_file, "--tests file"), entry, timeout_s=timeout, memory_mb=memory_mb)
    else:
        result = run_code(code, timeout_s=timeout, memory_mb=memory_mb, stdin=stdin, mode=mode)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        _print_verdict(file, result)
    # sys.exit, not typer.Exit: mixlab's main() runs click with standalone_mode=False, which drops Exit codes.
    sys.exit(0 if result.passed else 1)


def _print_verdict(file: Path, result) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    colour = {"passed": "green", "failed": "red", "timeout": "yellow", "oom": "yellow", "killed": "red",
              "error": "magenta"}.get(result.status, "white")
    console.print(f"[bold]{escape(str(file))}[/]: [bold {colour}]{result.status}[/] "
                  f"(exit {result.returncode}, {result.duration_s:.3f}s, isolation {result.isolation})")
    if result.reason:
        console.print(f"reason: {escape(result.reason)}")
    for name, text, total in (("stdout", result.stdout, result.stdout_bytes),
                              ("stderr", result.stderr, result.stderr_bytes)):
        if text:
            console.print(f"--- {name} ({total} bytes) ---", style="dim")
            console.print(escape(text[-4000:]), highlight=False, markup=False)
