"""The store owns the schema: SQL lives only in `mixlab/store.py` and the dashboard's read-only `queries.py`, and the
lab's code writes through typed Store methods, never raw table names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mixlab", "mixtures", "recipes", "model", "kernels", "evals", "dashboard", "bench")
SQL_OWNERS = {"mixlab/store.py", "dashboard/queries.py"}
# Generated sample data bulk-loads whole tables through `Store.insert` (documented there); nothing else may.
RAW_WRITERS = {"dashboard/sample_data.py"}
SQL = re.compile(r"\b(SELECT\b.+\bFROM|INSERT\s+(OR\s+REPLACE\s+)?INTO|DELETE\s+FROM|UPDATE\s+\w+\s+SET|CREATE\s+"
                 r"(TABLE|INDEX|VIEW)|ALTER\s+TABLE|DROP\s+TABLE)\b", re.IGNORECASE | re.DOTALL)
RAW_CALLS = {"insert", "execute", "query", "query_df", "connect"}


def _sources():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            yield rel, ast.parse(path.read_text(), filename=rel)


def _strings(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value
        elif isinstance(node, ast.JoinedStr):  # f-strings: the literal parts joined
            text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
            yield node.lineno, text


def _docstrings(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                lines.add(first.value.lineno)
    return lines


def test_no_sql_outside_the_store_and_the_dashboard_queries():
    found = []
    for rel, tree in _sources():
        if rel in SQL_OWNERS:
            continue
        docs = _docstrings(tree)
        found += [f"{rel}:{line}: {text[:70]!r}" for line, text in _strings(tree) if line not in docs and SQL.search(text)]
    assert not found, "SQL outside mixlab/store.py and dashboard/queries.py:\n" + "\n".join(found)


def test_lab_code_writes_through_typed_store_methods():
    """`store.insert("table", ...)`, `store.execute(...)`, `store.query(...)`: raw access stays in the store."""
    found = []
    for rel, tree in _sources():
        if rel in SQL_OWNERS or rel in RAW_WRITERS:
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in RAW_CALLS
                    and isinstance(node.func.value, (ast.Name, ast.Attribute))
                    and "store" in ast.unparse(node.func.value).lower()):
                found.append(f"{rel}:{node.lineno}: {ast.unparse(node)[:80]}")
    assert not found, "raw store access outside the store:\n" + "\n".join(found)


def test_the_check_catches_sql():
    tree = ast.parse('x = 1\nstore.query("SELECT a FROM runs")\nf"DELETE FROM {t} WHERE a = ?"\n')
    assert sorted({line for line, text in _strings(tree) if SQL.search(text)}) == [2, 3]
