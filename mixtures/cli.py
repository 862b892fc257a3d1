"""`mixlab mix list | show NAME | build NAME_OR_PATH [--data-root DIR] [--json] [--force] | diff A B`."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Optional

import pyarrow.parquet as pq
import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from mixlab.mixtures import solver
from mixlab.mixtures.artifact import BuiltMixture, mixtures_dir
from mixlab.mixtures.build import build
from mixlab.mixtures.loader import artifact_path
from mixlab.mixtures.registry_io import list_mixtures, load_mixture
from mixlab.mixtures.schema import MixtureSpec, iter_components
from mixlab.mixtures.tokens import TokenCounter


def _console():
    """A console for tables: piped output (files, CI, tests) gets a wide fixed width instead of 80 columns."""
    console = Console()
    return console if console.is_terminal else Console(width=220)


def _fmt_int(n: Any) -> str:
    return "-" if n is None else f"{int(n):,}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def composition_table(manifest: dict[str, Any], title: str | None = None) -> Table:
    unit = manifest["budget"]["unit"]
    table = Table(title=title or f"{manifest['name']}  {manifest['mixture_id']}  ({manifest['kind']}, "
                  f"budget {manifest['budget']['total']:,} {unit})")
    for col in ("component", "source", "target", "realised", "rows", "tokens", "trainable", "epochs", "cap",
                "filtered", "dedup", "decontam"):
        table.add_column(col, justify="left" if col in ("component", "source") else "right")
    for c in manifest["components"]:
        d = c["dropped"]
        table.add_row(c["path"], f"{c['adapter']} · {c['uri']}", _pct(c["target_share"]), _pct(c["realised_share"]),
                      _fmt_int(c["realised_rows"]), _fmt_int(c["tokens"]), _fmt_int(c["trainable_tokens"]),
                      f"{c['epochs']:.2f}", f"{c['max_epochs']:g}", _fmt_int(sum(d["filters"].values()) + d.get("invalid", 0)),
                      _fmt_int(d["dedup_exact"] + d["dedup_near"]), _fmt_int(d["decontamination"]))
    table.add_section()
    table.add_row("total", "", "100.0%", "100.0%", _fmt_int(manifest["n_rows"]), _fmt_int(manifest["n_tokens"]),
                  _fmt_int(manifest["n_trainable_tokens"]), "", "", "", "", "")
    return table


def _summary(built: BuiltMixture) -> dict[str, Any]:
    m = built.manifest
    return {
        "mixture_id": built.mixture_id, "name": built.name, "kind": built.kind, "path": str(built.path),
        "cache_hit": built.cache_hit, "n_rows": m["n_rows"], "n_tokens": m["n_tokens"],
        "n_trainable_tokens": m["n_trainable_tokens"], "phases": m["phases"],
        "components": [{k: c[k] for k in ("path", "source_id", "target_share", "realised_share", "realised_rows",
                                           "tokens", "trainable_tokens", "epochs", "dropped")} for c in m["components"]],
        "decontamination": None if m["decontamination"] is None else
        {k: m["decontamination"][k] for k in ("flagged_rows", "by_benchmark", "tasks", "skipped")},
    }


def _latest_manifest(name: str) -> dict[str, Any] | None:
    found = []
    for path in mixtures_dir().glob(f"{name}-*/manifest.json") if mixtures_dir().is_dir() else []:
        manifest = json.loads(path.read_text())
        if manifest["name"] == name:
            found.append((path.stat().st_mtime, manifest))
    return max(found, key=lambda x: x[0])[1] if found else None


def _manifest_for(ref: str, data_root: Optional[Path]) -> dict[str, Any]:
    """A mixture id (already built) or a name/path (built now, usually a cache hit)."""
    return json.loads((artifact_path(ref, data_root) / "manifest.json").read_text())


def preview_rows(manifest: dict[str, Any], path: Path, n: int) -> list[Text]:
    """Rendered chat-template text of the first `n` rows, trainable (assistant-mask) tokens highlighted."""
    counter = TokenCounter(manifest["tokenizer"]["name"], manifest["spec"].get("chat_template"), path)
    tok = counter.tokenizer
    rows = pq.read_table(path / manifest["shards"][0]["file"]).slice(0, n).to_pylist() if manifest["shards"] else []
    out = []
    for row in rows:
        if manifest["kind"] == "sft":
            messages, gen = row["messages"], False
        elif manifest["kind"] == "preference":
            messages, gen = row["prompt"] + row["chosen"], False
        else:
            messages, gen = row["prompt"], True
        plain = [{"role": m["role"], "content": m["content"]} for m in messages]
        enc = tok.apply_chat_template(plain, tokenize=True, return_dict=True, add_generation_prompt=gen,
                                      return_assistant_tokens_mask=not gen)
        ids, mask = enc["input_ids"], enc.get("assistant_masks") or [0] * len(enc["input_ids"])
        text = Text(f"{row['group_path']} · row {row['row_id']} · {len(ids)} tokens, {sum(mask)} trainable\n",
                    style="dim")
        start = 0
        for i in range(1, len(ids) + 1):
            if i == len(ids) or mask[i] != mask[start]:
                text.append(tok.decode(ids[start:i]), style="bold green" if mask[start] else "")
                start = i
        out.append(text)
    return out


def list_cmd() -> None:
    """Registry mixtures with kind, budget and component count (and the last build, if any)."""
    table = Table("name", "kind", "family", "budget", "leaves", "extends", "last build", "description")
    for item in list_mixtures():
        if isinstance(item, tuple):
            path, error = item
            table.add_row(path.stem, "[red]invalid[/red]", "", "", "", "", "", error)
            continue
        spec = item.spec
        latest = _latest_manifest(spec.name)
        table.add_row(spec.name, spec.kind, spec.family or "", f"{spec.budget.total:,} {spec.budget.unit}",
                      str(len(spec.leaves())), spec.extends or "", latest["mixture_id"] if latest else "",
                      spec.description)
    _console().print(table)


def show_cmd(
    name: str = typer.Argument(..., help="registry name or YAML path"),
    preview: int = typer.Option(0, "--preview", help="render the first N rows of the last build through the "
                                "chat template, trainable tokens highlighted"),
) -> None:
    """The resolved mixture: component tree with target shares, sources, caps, phases; and its last build."""
    loaded = load_mixture(name)
    spec = loaded.spec
    console = _console()
    console.print(f"[bold]{spec.name}[/bold] ({spec.kind}) {spec.description}")
    console.print(f"file {loaded.path}" + (f" (extends {spec.extends})" if spec.extends else ""))
    console.print(f"budget {spec.budget.total:,} {spec.budget.unit} · seed {spec.seed} · tokenizer "
                  f"{spec.tokenizer} · dedup exact={spec.dedup.exact} near={spec.dedup.near is not None} · "
                  f"decontamination {'on, n=' + str(spec.decontamination.n) if spec.decontamination.enabled else 'off'}")
    for table in _phase_tables(spec):
        console.print(table)
    latest = _latest_manifest(spec.name)
    if not latest:
        console.print("not built yet: mixlab mix build " + spec.name)
        return
    console.print(composition_table(latest, title=f"last build {latest['mixture_id']}"))
    if preview:
        for text in preview_rows(latest, mixtures_dir() / latest["mixture_id"], preview):
            console.print(text)


def _phase_tables(spec: MixtureSpec) -> list[Table]:
    """Per phase: the component tree with weights, target shares, epoch caps, sources and adapters."""
    caps = solver.leaf_max_epochs(spec)
    tables = []
    for phase, share, leaves in solver.phases(spec):
        table = Table("component", "weight", "target share", "max_epochs", "source", "adapter",
                      title=f"phase {phase} ({share:.0%} of the budget)")
        for component, path in iter_components(spec.components):
            depth = path.count("/")
            src = component.source
            where = "" if src is None else (src.local or src.hub or f"procedural {src.procedural} "
                                             f"L{src.level or 'all'} {src.split or 'train'}")
            adapter = "" if src is None else (src.adapter if isinstance(src.adapter, str) else
                                              (src.adapter or {}).get("name", "procedural" if src.procedural else ""))
            table.add_row("  " * depth + component.name, f"{component.weight:g}",
                          _pct(leaves.get(path)) if component.is_leaf else "",
                          f"{caps[path]:g}" if component.is_leaf else "", where, adapter or "")
        tables.append(table)
    return tables


def build_cmd(
    name_or_path: str = typer.Argument(..., help="registry name or YAML path"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="data root for local sources and eval sets "
                                             "(default: MIXLAB_DATA, else ../shared/data)"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON summary instead of tables"),
    force: bool = typer.Option(False, "--force", help="rebuild even when the artifact exists (byte-identical)"),
) -> None:
    """Build a mixture into runs/artifacts/mixtures/<id>/ and record it in DuckDB (a cache hit if unchanged)."""
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=as_json or not console.is_terminal) as bar:
        tasks: dict[str, Any] = {}

        def report(stage: str, done: int, total: int) -> None:
            key = stage.split(" ")[0] if stage.startswith("read ") else stage
            if key not in tasks:
                tasks[key] = bar.add_task(stage if key != "read" else "read sources", total=total)
            bar.update(tasks[key], completed=done, total=total)

        built = build(name_or_path, data_root=data_root, force=force, progress=report)
    if as_json:
        typer.echo(json.dumps(_summary(built), indent=2, sort_keys=True))
        return
    out = _console()
    out.print(composition_table(built.manifest))
    dc = built.manifest["decontamination"]
    if dc is not None:
        flagged = ", ".join(f"{k} {v}" for k, v in sorted(dc["by_benchmark"].items())) or "none"
        out.print(f"decontamination ({dc['n']}-grams vs {len(dc['tasks'])} eval sets): {dc['flagged_rows']} rows "
                  f"dropped; hits by benchmark: {flagged}")
        if dc["skipped"]:
            out.print(f"[yellow]eval sets not checked (data absent): {sorted(dc['skipped'])}[/yellow]")
    out.print(f"{'cache hit' if built.cache_hit else 'built'}: {built.path}")


def diff_cmd(
    a: str = typer.Argument(..., help="mixture id, registry name or YAML path"),
    b: str = typer.Argument(..., help="mixture id, registry name or YAML path"),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
) -> None:
    """Composition of A and B side by side (target and realised shares, rows, tokens, epochs) + spec diff."""
    ma, mb = _manifest_for(a, data_root), _manifest_for(b, data_root)
    console = _console()
    console.print(_diff_table(ma, mb))
    ya = yaml.safe_dump(ma["spec"], sort_keys=True).splitlines()
    yb = yaml.safe_dump(mb["spec"], sort_keys=True).splitlines()
    lines = list(difflib.unified_diff(ya, yb, fromfile=f"A {ma['name']}", tofile=f"B {mb['name']}", lineterm=""))
    console.print("\n".join(lines) if lines else "specs are identical", markup=False, highlight=False)


def _diff_table(ma: dict[str, Any], mb: dict[str, Any]) -> Table:
    table = Table("component", "target A", "target B", "realised A", "realised B", "Δ realised (pp)",
                  "rows A", "rows B", "tokens A", "tokens B", "epochs A", "epochs B",
                  title=f"A = {ma['mixture_id']}   B = {mb['mixture_id']}")
    ca = {c["path"]: c for c in ma["components"]}
    cb = {c["path"]: c for c in mb["components"]}
    for path in list(ca) + [p for p in cb if p not in ca]:
        x, y = ca.get(path), cb.get(path)
        get = lambda c, k: None if c is None else c[k]  # noqa: E731
        delta = 100 * ((get(y, "realised_share") or 0) - (get(x, "realised_share") or 0))
        table.add_row(path, _pct(get(x, "target_share")), _pct(get(y, "target_share")),
                      _pct(get(x, "realised_share")), _pct(get(y, "realised_share")), f"{delta:+.1f}",
                      _fmt_int(get(x, "realised_rows")), _fmt_int(get(y, "realised_rows")),
                      _fmt_int(get(x, "tokens")), _fmt_int(get(y, "tokens")),
                      "-" if x is None else f"{x['epochs']:.2f}", "-" if y is None else f"{y['epochs']:.2f}")
    table.add_section()
    table.add_row("total", "", "", "", "", "", _fmt_int(ma["n_rows"]), _fmt_int(mb["n_rows"]),
                  _fmt_int(ma["n_tokens"]), _fmt_int(mb["n_tokens"]), "", "")
    return table


def register(app: typer.Typer) -> None:
    mix_app = typer.Typer(help="Data mixtures: list, show, build, diff (YAML registry in mixtures/registry/).",
                          no_args_is_help=True)
    mix_app.command("list")(list_cmd)
    mix_app.command("show")(show_cmd)
    mix_app.command("build")(build_cmd)
    mix_app.command("diff")(diff_cmd)
    app.add_typer(mix_app, name="mix")
