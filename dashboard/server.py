"""The `mixlab dashboard` server process: Streamlit's own command line, started once the app's libraries are
loaded and exercised, so that the first visitor does not wait for them.

Measured on 2 loaded cores: importing pandas, Altair and DuckDB took ~1 s, and the first Altair validation, pandas
groupby and DuckDB query of a process another ~0.5 s; a plain `streamlit run` pays both inside the first page view.

    python -P -m mixlab.dashboard.server run dashboard/app.py --server.port 8501 ...   (what `mixlab dashboard` runs)
"""

from __future__ import annotations

import os
import sys

import pandas as pd
from streamlit.web import cli as streamlit_cli

from mixlab.dashboard import aggregates as agg
from mixlab.dashboard import charts, queries
from mixlab.errors import MixlabError


def warm_up(db: str | None) -> None:
    """Run the first view's computation once outside any session: imports, Altair's schema validator, pandas'
    groupby and DuckDB's first query are then warm. Its results are thrown away (sessions cache their own)."""
    points = pd.DataFrame({
        "run_id": ["a", "b"], "x": [0.2, 0.6], "x_lo": [0.1, 0.5], "x_hi": [0.3, 0.7], "y": [0.7, 0.3],
        "y_lo": [0.6, 0.2], "y_hi": [0.8, 0.4], "tier": ["front", "front"], "on_front": [True, True],
        "label": ["a", "b"], "mixture_name": ["m", "n"], "mixture_family": ["f", "g"], "stage": ["sft", "sft"],
        "rung": ["r0", "r0"], "base_model": ["b", "b"], "x_text": ["", ""], "y_text": ["", ""],
        "composition": ["", ""],
    })
    front = agg.front_line(points, (True, True))
    charts.tradeoff(points, front, x_title="x", y_title="y", color="mixture_family", color_title="family").to_dict()
    if db and os.path.isfile(db):
        try:
            metrics = queries.latest_metrics(db)
            cat = agg.catalog(metrics)
            agg.wide(metrics)
            queries.runs(db)
            agg.default_metrics(cat, "leaderboard")
        except MixlabError:
            pass  # a writer holds the file: the first visitor's session retries and reports it


def main() -> None:
    warm_up(os.environ.get("MIXLAB_DB"))
    sys.exit(streamlit_cli.main(prog_name="streamlit"))


if __name__ == "__main__":
    main()
