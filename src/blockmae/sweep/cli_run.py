"""`blockmae sweep run SPEC [--out DIR]` (the work is in blockmae.sweep.cli)."""

from blockmae.sweep.cli import run as run, run_arguments as add_arguments

__all__ = ["add_arguments", "run"]
