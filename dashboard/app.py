"""Streamlit entry point: `streamlit run dashboard/app.py` (or `mixlab dashboard`). All logic lives in
`mixlab.dashboard.views` (layout) over `queries` / `aggregates` / `pareto` / `charts` (plain modules)."""

from mixlab.dashboard.views import main

main()
