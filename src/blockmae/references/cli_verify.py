"""`blockmae weights verify [--root DIR] [ID ...]` (the work is in blockmae.references.cli)."""

from blockmae.references.cli import verify_arguments as add_arguments, verify_command as run

__all__ = ["add_arguments", "run"]
