"""Diagnostics by name: the `blockmae eval NAME` commands, run from Python with options as a mapping.

The sweep's evaluations and the quickstart both run diagnostics this way, so a diagnostic that lands
later (a new module with its row in ``blockmae.diagnostics.DIAGNOSTICS``) is available to both by its name.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any, Mapping, Sequence

from blockmae.diagnostics import DIAGNOSTICS
from blockmae.diagnostics.plugin import Diagnostic
from blockmae.diagnostics.runner import run_diagnostic
from blockmae.errors import BlockMAEError


def diagnostic_modules() -> dict[str, str]:
    """Diagnostic name -> module (one list of diagnostics: blockmae.diagnostics.DIAGNOSTICS)."""
    return {name: module for name, module, _ in DIAGNOSTICS}


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print usage and exit
        raise BlockMAEError(message)


def option_argv(options: Mapping[str, Any]) -> list[str]:
    """Command-line words of an options mapping: `sigmas: [0, 1]` -> --sigmas 0 1, `x: true` -> --x,
    `x: false` -> --no-x."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append("--no-" + str(key).replace("_", "-"))
        else:
            argv += [flag, *(str(v) for v in (value if isinstance(value, (list, tuple)) else [value]))]
    return argv


def diagnostic_arguments(name: str, options: Mapping[str, Any], extra: Sequence[str]) -> argparse.Namespace:
    """The diagnostic's parsed command line: `extra` (checkpoint, outputs, probe) plus `options`."""
    modules = diagnostic_modules()
    if name not in modules:
        raise BlockMAEError(f"unknown diagnostic {name!r}; choose among {sorted(modules)}")
    module = importlib.import_module(modules[name])
    parser = _RaisingParser(prog=f"blockmae eval {name}")
    module.add_arguments(parser)
    args = parser.parse_args([*extra, *option_argv(options)])
    if isinstance(args.checkpoint, list):  # diagnostics that compare checkpoints take several; here: one run
        if len(args.checkpoint) != 1:
            raise BlockMAEError(f"{name}: one --checkpoint per run here, got {len(args.checkpoint)}")
        args.checkpoint = args.checkpoint[0]
    return args


def diagnostic_class(name: str) -> Any:
    """The Diagnostic subclass behind `blockmae eval NAME`."""
    module = importlib.import_module(diagnostic_modules()[name])
    return next(v for v in vars(module).values()
                if isinstance(v, type) and issubclass(v, Diagnostic) and getattr(v, "name", None) == name)


def run_named_diagnostic(name: str, options: Mapping[str, Any], extra: Sequence[str]) -> tuple[str, Path, Any]:
    """Run `blockmae eval NAME` in this process; returns (registry run id, run dir, DiagnosticResult)."""
    return run_diagnostic(diagnostic_class(name)(), diagnostic_arguments(name, options, extra))
