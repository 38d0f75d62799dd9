"""Texture-vs-shape diagnostics of frozen encoders, one module each; the shared shape is in `base`.

Adding one: a new module with a `base.Diagnostic` subclass and `add_arguments, run = base.command(Cls)`,
a row in `blockmae.cli.COMMANDS`, optionally a thin `eval/<script>.py` (see docs/diagnostics.md).
"""
