"""`blockmae sweep plan SPEC [--out DIR]` (the work is in blockmae.sweep.cli)."""

from blockmae.sweep.cli import plan as run, plan_arguments as add_arguments

__all__ = ["add_arguments", "run"]
