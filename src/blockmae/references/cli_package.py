"""`blockmae weights package --run-dir DIR --block B --seed S --command TEXT` (the work is in
blockmae.references.cli)."""

from blockmae.references.cli import package_arguments as add_arguments, package_command as run

__all__ = ["add_arguments", "run"]
