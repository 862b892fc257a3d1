"""`mixlab model ...` commands."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    model_app = typer.Typer(help="Kimi Linear model: presets, parameter counts, checkpoints.", no_args_is_help=True)

    @model_app.command("info")
    def info(
        preset_or_path: str = typer.Argument(..., help="preset name (tiny, demo, small, 1b-a150m, 48b-a3b), "
                                             "a checkpoint folder or a config.json"),
        as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    ) -> None:
        """Layer map, total and active parameters and tensor count, computed from the config on the meta device;
        for a checkpoint folder, also every shard's header and tensor shapes checked against the config."""
        import json

        from mixlab.model.info import checkpoint_weights, model_info, resolve_config

        config, source = resolve_config(preset_or_path)
        facts = model_info(config)
        facts["source"] = source
        facts["weights"] = checkpoint_weights(preset_or_path, config)  # a folder's tensors must match its config
        if as_json:
            typer.echo(json.dumps(facts, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        console = Console()
        console.print(f"[bold]{source}[/bold]: {facts['num_layers']} layers "
                      f"({facts['kda_layers']} KDA + {facts['mla_layers']} MLA, {facts['moe_layers']} MoE), "
                      f"d={facts['hidden_size']}, vocab={facts['vocab_size']}")
        console.print(f"total params   {facts['total_params']:,} ({_human(facts['total_params'])})")
        console.print(f"active params  {facts['active_params']:,} ({_human(facts['active_params'])}; "
                      f"{_human(facts['active_params_excluding_embeddings'])} without embeddings / LM head)")
        console.print(f"tensors        {facts['tensor_count']:,} (official checkpoint names)")
        if facts["weights"] is not None:
            w = facts["weights"]
            console.print(f"weights        {w['tensors']:,} tensors in {len(w['shards'])} shard(s), "
                          f"{_human(w['bytes'])}B: names and shapes match the config")
        table = Table("layer (1-based)", "attention", "ffn", "params")
        for row in facts["layers"]:
            table.add_row(str(row["number"]), row["attention"].upper(), row["ffn"], f"{row['params']:,}")
        console.print(table)

    app.add_typer(model_app, name="model")


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)
