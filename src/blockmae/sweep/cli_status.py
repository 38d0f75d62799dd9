"""`blockmae sweep status SPEC [--out DIR]` (the work is in blockmae.sweep.cli)."""

from blockmae.sweep.cli import status as run, status_arguments as add_arguments

__all__ = ["add_arguments", "run"]
