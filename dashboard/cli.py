"""`mixlab dashboard [--db PATH] [--port P] [--host 127.0.0.1]`: serve the Streamlit app over a mixlab database."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from mixlab import procs
from mixlab.errors import MixlabError

APP = Path(__file__).with_name("app.py")


def streamlit_command(db: Path, port: int, host: str) -> tuple[list[str], dict[str, str]]:
    """The `streamlit run` command line (through `server.py`, which loads the app's libraries first) and
    environment: local-only, headless, no usage statistics."""
    cmd = procs.argv([
        "-m", "mixlab.dashboard.server", "run", str(APP),
        "--server.address", host, "--server.port", str(port), "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
        "--theme.base", "light", "--client.toolbarMode", "viewer",
    ])
    env = procs.env(MIXLAB_DB=str(db.resolve()), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    return cmd, env


def register(app: typer.Typer) -> None:
    @app.command("dashboard")
    def dashboard(
        db: Path = typer.Option(None, "--db", help="DuckDB file (default: $MIXLAB_DB or runs/mixlab.duckdb)"),
        port: int = typer.Option(8501, "--port", help="port to serve on"),
        host: str = typer.Option("127.0.0.1", "--host", help="address to bind (keep 127.0.0.1 unless you mean it)"),
    ) -> None:
        """Serve the leaderboard-vs-usability dashboard (read-only; works while runs are writing)."""
        from mixlab.paths import default_db_path

        db_path = Path(db) if db is not None else default_db_path()
        if db is not None and db_path.is_dir():
            raise MixlabError(f"--db {db_path} is a directory; pass the .duckdb file")
        if not 0 < port < 65536:
            raise MixlabError(f"--port {port} is out of range 1-65535")
        if not db_path.is_file():
            typer.echo(f"note: no database at {db_path} yet; the dashboard will explain how to make one (`make demo`)",
                       err=True)
        cmd, env = streamlit_command(db_path, port, host)
        typer.echo(f"mixlab dashboard: http://{host}:{port}  (db {db_path})", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        # Become the Streamlit server: signals (Ctrl-C, SIGTERM from a supervisor) reach it directly, no orphan.
        os.execve(cmd[0], cmd, env)
