"""The import rules of DESIGN.md, checked on the source (an AST walk; nothing is imported).

Imports point one way: kernels <- model <- evals (generation); evals.tasks <- mixtures (decontamination reads the eval
sets); model, mixtures, evals <- recipes; everything may use mixlab (store, paths, errors); dashboard reads only the
store. Nothing imports recipes or dashboard, except the `mixlab` command registering their CLIs.

And internal imports sit at the top of modules, so a reader (and this test) sees every dependency: one inside a
function is allowed in CLI modules (`cli.py`, `cli_*.py`, `*_cli.py`: `mixlab --help` must not import torch), or where a comment on the line above
or on the same line says why it must stay.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# folder -> import name (pyproject's [tool.setuptools.package-dir])
PACKAGES = {"mixlab": "mixlab", "kernels": "mixlab.kernels", "model": "mixlab.model", "evals": "mixlab.evals",
            "mixtures": "mixlab.mixtures", "recipes": "mixlab.recipes", "dashboard": "mixlab.dashboard"}

# Which packages each package may import (besides itself). `mixlab` is the core: CLI, store, paths, errors.
ALLOWED = {
    "mixlab": set(),
    "kernels": {"mixlab"},
    "model": {"mixlab", "kernels"},
    "evals": {"mixlab", "kernels", "model"},
    "mixtures": {"mixlab", "evals"},  # only evals' tasks and procedural generators: see MIXTURES_MAY_USE
    "recipes": {"mixlab", "kernels", "model", "evals", "mixtures"},
    "dashboard": {"mixlab", "evals"},  # only the store and its helpers, and evals' statistics: see DASHBOARD_MAY_USE
}
# Decontamination reads every registered task's items; procedural sources generate training rows with the same
# generators (and verifiers) whose held-out split the procedural tasks evaluate on.
MIXTURES_MAY_USE = ("mixlab.evals.tasks", "mixlab.evals.procedural")
# The dashboard's "within CI" and paired comparisons use the one statistics module (numpy only), as the CLI does.
DASHBOARD_MAY_USE = ("mixlab.store", "mixlab.errors", "mixlab.paths", "mixlab.procs", "mixlab.dashboard",
                     "mixlab.evals.stats")
# The one composition root: the `mixlab` command registers every domain's CLI module.
COMPOSITION_ROOT = "mixlab/cli.py"


@dataclass(frozen=True)
class Import:
    file: str  # repo-relative path
    line: int
    target: str  # absolute module (or module.name) imported
    in_function: bool
    commented: bool  # a comment on the same line or the line right above


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO)
    parts = list(rel.with_suffix("").parts)
    parts = [PACKAGES[parts[0]]] + parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_of(target: str) -> str | None:
    parts = target.split(".")
    if parts[0] != "mixlab":
        return None
    if len(parts) > 1 and parts[1] in PACKAGES and parts[1] != "mixlab":
        return parts[1]
    return "mixlab"


def source_files() -> list[Path]:
    return sorted(p for folder in PACKAGES for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts)


def imports_of(path: Path) -> list[Import]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    module = module_name(path)
    is_package = path.name == "__init__.py"
    rel = path.relative_to(REPO).as_posix()
    found: list[Import] = []

    def commented(node: ast.stmt) -> bool:
        same = "#" in lines[node.lineno - 1]
        above = node.lineno >= 2 and lines[node.lineno - 2].strip().startswith("#")
        return same or above

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against this module's package
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    origin = ".".join(base + ([child.module] if child.module else []))
                else:
                    origin = child.module or ""
                # `from mixlab.evals import procedural` imports the submodule: name it, so rules see it
                targets = [f"{origin}.{alias.name}" for alias in child.names]
            for target in targets:
                if package_of(target) is not None:
                    found.append(Import(rel, child.lineno, target, in_function, commented(child)))
            visit(child, inside)

    visit(ast.parse(text, filename=str(path)), False)
    return found


ALL_IMPORTS = [imp for path in source_files() for imp in imports_of(path)]


def _within(target: str, prefixes: tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def direction_violations(imports: list[Import]) -> list[str]:
    out = []
    for imp in imports:
        source_pkg = imp.file.split("/")[0]
        target_pkg = package_of(imp.target)
        if target_pkg == source_pkg:
            continue
        if imp.file == COMPOSITION_ROOT and imp.target.endswith(".cli"):
            continue
        ok = target_pkg in ALLOWED[source_pkg]
        if ok and source_pkg == "mixtures" and target_pkg == "evals":
            ok = _within(imp.target, MIXTURES_MAY_USE)
        if ok and source_pkg == "dashboard":
            ok = _within(imp.target, DASHBOARD_MAY_USE)
        if not ok:
            out.append(f"{imp.file}:{imp.line}: {source_pkg} imports {imp.target}")
    return out


def is_cli_module(file: str) -> bool:
    name = file.rsplit("/", 1)[-1]
    return name in ("cli.py", "__main__.py") or name.startswith("cli_") or name.endswith("_cli.py")


def function_level_violations(imports: list[Import]) -> list[str]:
    return [f"{imp.file}:{imp.line}: {imp.target} imported inside a function (move it to the top, or say why in a "
            "comment)" for imp in imports if imp.in_function and not imp.commented and not is_cli_module(imp.file)]


def test_the_walk_sees_the_packages():
    files = {p.relative_to(REPO).parts[0] for p in source_files()}
    assert files == set(PACKAGES)
    # A known edge in each direction the rules talk about, so an empty result cannot come from a blind walk.
    targets = {(i.file.split("/")[0], package_of(i.target)) for i in ALL_IMPORTS}
    assert {("model", "kernels"), ("recipes", "mixtures"), ("mixtures", "evals"), ("dashboard", "mixlab")} <= targets


def test_imports_point_the_way_design_md_says():
    assert direction_violations(ALL_IMPORTS) == []


def test_no_internal_import_hides_inside_a_function_outside_cli_modules():
    assert function_level_violations(ALL_IMPORTS) == []


@pytest.mark.parametrize("source, target, bad", [
    ("kernels/x.py", "mixlab.model.modeling", True),
    ("model/x.py", "mixlab.kernels.dispatch", False),
    ("mixtures/x.py", "mixlab.model.presets", True),
    ("mixtures/x.py", "mixlab.evals.tasks.base.get_task", False),
    ("mixtures/x.py", "mixlab.evals.runner.evaluate", True),
    ("evals/x.py", "mixlab.recipes.runner", True),
    ("evals/x.py", "mixlab.mixtures.build", True),
    ("dashboard/x.py", "mixlab.store.Store", False),
    ("dashboard/x.py", "mixlab.evals.stats", False),  # the one statistics module (numpy only)
    ("dashboard/x.py", "mixlab.evals.runner", True),
    ("dashboard/x.py", "mixlab.device", True),
    ("mixlab/store.py", "mixlab.dashboard.queries", True),
    ("mixlab/cli.py", "mixlab.recipes.cli", False),
    ("recipes/x.py", "mixlab.dashboard.queries", True),
])
def test_the_rules_catch_a_wrong_edge(source, target, bad):
    """The checker itself: a forbidden edge is reported, an allowed one is not."""
    assert bool(direction_violations([Import(source, 1, target, False, False)])) is bad


def test_a_function_level_import_needs_a_cli_module_or_a_reason():
    assert function_level_violations([Import("evals/runner.py", 3, "mixlab.evals.stats", True, False)])
    assert not function_level_violations([Import("evals/runner.py", 3, "mixlab.evals.stats", True, True)])
    assert not function_level_violations([Import("evals/cli_run.py", 3, "mixlab.evals.runner", True, False)])
    assert not function_level_violations([Import("recipes/optimise_cli.py", 3, "mixlab.recipes.x", True, False)])
    assert not function_level_violations([Import("evals/runner.py", 3, "mixlab.evals.stats", False, False)])
