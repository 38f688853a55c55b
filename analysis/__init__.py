"""Sweep analysis: read run and multirun folders into pandas, write the sweep table and figures.

    from analysis import load_run, load_sweep, load_curves
    run = load_run("runs/mlp_grok/2024-01-01_12-00-00")     # config, overrides, summary, metrics (per step)
    table = load_sweep("runs/mlp_grok/multirun_...")        # one row per run or planned job
    curves = load_curves("runs/mlp_grok/multirun_...")      # run, step, metric, value

or from the shell: `python -m analysis <run or sweep folder> [--out DIR] [--grok-key KEY]`.
"""
from analysis.curves import load_curves, seed_bands
from analysis.plots import pareto_front, write_plots
from analysis.runs import Run, load_run
from analysis.table import load_sweep, to_markdown, write_table

__all__ = ["Run", "load_run", "load_sweep", "load_curves", "seed_bands", "pareto_front", "write_plots",
           "write_table", "to_markdown"]
