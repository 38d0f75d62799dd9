"""Declarative ablation sweeps: specs (configs/ablations/), plan, run, status, executors (docs/ablations.md)."""
