"""`mixlab eval run CHECKPOINT --suite NAME` (also `mixlab eval CHECKPOINT ...`) and `mixlab serve CHECKPOINT`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    eval_app.command("run")(run)
    app.command("serve")(serve)


def run(
    checkpoint: str = typer.Argument(..., help="Checkpoint folder, model preset (random init), or for "
                                     "--backend openai the served model name."),
    suite: Optional[str] = typer.Option(None, "--suite", "-s", help="Suite name, task name, or a comma-separated "
                                        "mix (see `mixlab eval list`)."),
    backend: str = typer.Option("torch", "--backend", "-b", help="torch | hf | vllm | openai"),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Evaluate only the first N items per task."),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Attach to this run (default: the training run "
                                         "whose checkpoint this is, else a new eval run)."),
    judge: Optional[str] = typer.Option(None, "--judge", "-j", envvar="MIXLAB_JUDGE",
                                        help="Judge for chat tasks: openai:MODEL or openai:MODEL@BASE_URL, "
                                        "local:PATH_OR_PRESET, or rubric (env MIXLAB_JUDGE)."),
    judge_max_tokens: int = typer.Option(1024, "--judge-max-tokens", help="Most tokens a judge may write per verdict "
                                         "(part of the judge's identity in the cache)."),
    no_judge_cache: bool = typer.Option(False, "--no-judge-cache", help="Judge every answer again instead of reusing "
                                        "cached verdicts (the fresh verdicts replace the cached ones)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Override each task's default."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="0 = greedy (default)."),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    samples: Optional[int] = typer.Option(None, "--samples", help="Completions per prompt (pass@k on code tasks; "
                                          "use with --temperature > 0)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Generation batch size (torch/hf)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda | auto (torch/hf)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Endpoint for --backend openai "
                                           "(default MIXLAB_OPENAI_BASE_URL)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Benchmark data root."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Regenerate every item instead of reusing samples "
                                   "stored by an interrupted run of the same evaluation."),
    show_style: bool = typer.Option(False, "--style", help="Show style/* metrics in the table."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
) -> None:
    """Evaluate a checkpoint on a suite; every sample and metric goes to DuckDB."""
    from rich.console import Console

    from mixlab.errors import MixlabError
    from mixlab.evals.judges import get_judge
    from mixlab.evals.runner import evaluate, results_table
    from mixlab.store import Store

    if not suite:
        raise MixlabError("pass --suite NAME (a suite, a task, or a comma-separated list; see `mixlab eval list`)")
    opts: dict = {}
    if backend in ("torch", "hf"):
        from mixlab.device import resolve_device

        resolve_device(device)  # refuse `--device tpu` before any data or model is loaded
        opts = {"batch_size": batch_size, "device": device}
    elif backend == "openai":
        opts = {"base_url": base_url}
    overrides = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed,
                 "n": samples}
    console = Console(stderr=True)
    store = Store()
    judge_obj = (get_judge(judge, store=store, max_new_tokens=judge_max_tokens, use_cache=not no_judge_cache)
                 if judge and judge != "rubric" else judge)
    results = evaluate(
        checkpoint, suite, backend=backend, judge=judge_obj, store=store, limit=limit, run_id=run_id,
        gen_config=overrides, data_root=data_root, backend_opts=opts, resume=not no_resume, progress=not as_json,
        console=console,
    )
    if as_json:
        typer.echo(json.dumps(results.to_dict(), indent=2, default=str))
    else:
        Console().print(results_table(results, style_metrics=show_style))
    if not results.ok:
        # One line that says why, for each failed task (the table above wraps the reason over many lines).
        failed = "; ".join(f"task {t.task} failed: {' '.join(str(t.error).split())}"
                           for t in results.tasks if t.status != "completed")
        typer.echo(f"error: {failed} (finished samples and answers are kept; re-run to resume)", err=True)
        raise typer.Exit(2)


def serve(
    checkpoint: str = typer.Argument(..., help="Checkpoint folder or model preset (random init)."),
    port: int = typer.Option(8000, "--port", "-p", help="TCP port (0 = any free port; the bound one is printed)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Name served at /v1/models "
                                             "(default: the checkpoint folder or preset name)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda | auto"),
    batch_size: int = typer.Option(16, "--batch-size", help="Most requests merged into one generation batch."),
    max_tokens: int = typer.Option(2048, "--max-tokens", help="Cap on max_tokens per request."),
) -> None:
    """Serve a checkpoint over an OpenAI-compatible API (/v1/chat/completions, /v1/models)."""
    from mixlab.evals.serve import serve as serve_forever

    serve_forever(checkpoint, host=host, port=port, model_name=model_name, device=device, batch_size=batch_size,
                  max_tokens_cap=max_tokens)
