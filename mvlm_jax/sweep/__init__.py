"""Ablation sweeps from experiment files (`mvlm sweep`, docs/SWEEPS.md).

spec (trials and stages) -> plan (stages keyed by config hash, shared) -> state (status, leases) ->
execute (one stage) -> local / slurm (runners) -> report (tables, plots, edge_model).
"""
