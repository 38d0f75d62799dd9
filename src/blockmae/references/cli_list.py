"""`blockmae weights list [--root DIR]` (the work is in blockmae.references.cli)."""

from blockmae.references.cli import list_arguments as add_arguments, list_command as run

__all__ = ["add_arguments", "run"]
