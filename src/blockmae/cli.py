"""The `blockmae` command.

Each subcommand lives in the module of its concept and exposes two functions:
``add_arguments(parser)`` and ``run(args) -> int``. Only the module of the command being
run is imported, so ``blockmae --help`` is instant and one broken area cannot break the rest.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn, Sequence

from blockmae.diagnostics import DIAGNOSTICS
from blockmae.errors import BlockMAEError, ReportedError, error_line
from blockmae.fileio import output_error

# (command words, module, one-line help). Group commands ("data", "bench", ...) are
# derived from the first word.
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("masks",), "blockmae.masking.cli", "inspect a mask setting: masks as text or PNG, --stats"),
    (("pretrain",), "blockmae.engine.cli", "pretrain a masked autoencoder from a YAML config"),
    (("finetune",), "blockmae.finetune.cli", "fine-tune a pretrained encoder (MAE recipe) from a YAML config"),
    (("export",), "blockmae.models.export", "export an encoder as a timm or Hugging Face model"),
    (("ckpt", "compare"), "blockmae.engine.compare", "compare the weights of two checkpoints or run dirs"),
    (("data", "prepare"), "blockmae.data.cli_prepare", "download/verify/extract a dataset and build its cache"),
    (("data", "preview"), "blockmae.data.cli_preview", "draw a labelled grid of dataset images"),
    (("probe",), "blockmae.evaluation.cli_probe", "linear (or k-NN) probe of a frozen encoder"),
    (("eval", "shape-bias"), "blockmae.evaluation.cli_shape_bias", "shape bias on cue-conflict images"),
    *((("eval", name), module, help_text) for name, module, help_text in DIAGNOSTICS),
    (("viz", "reconstructions"), "blockmae.visualisation.cli", "draw reconstructions of checkpoints"),
    (("runs",), "blockmae.registry.cli", "list the runs recorded in the experiment registry"),
    (("weights", "list"), "blockmae.references.cli_list", "list the reference encoders shipped with blockmae"),
    (("weights", "verify"), "blockmae.references.cli_verify", "check reference encoders against their manifests"),
    (("weights", "package"), "blockmae.references.cli_package", "package a finished pretraining run as a float16 reference encoder"),
    (("report",), "blockmae.report.cli", "HTML/markdown report of a sweep or of the runs in an output root"),
    (("mvh", "benchmark"), "blockmae.mvh.cli_benchmark", "model-vs-human's benchmark tables from its trial files, humans included"),
    (("sweep", "plan"), "blockmae.sweep.cli_plan", "list a sweep spec's arms and their cost before running"),
    (("sweep", "run"), "blockmae.sweep.cli_run", "run (or resume) every arm of a sweep spec and its evaluations"),
    (("sweep", "status"), "blockmae.sweep.cli_status", "progress of each arm and evaluation of a sweep"),
    (("quickstart",), "blockmae.quickstart.cli", "the main job on ShapeTex: 1x1 vs 2x2 vs 4x4 masking"),
    (("bench", "model"), "blockmae.bench.model", "time MAE training steps against HF ViTMAE"),
    (("bench", "data"), "blockmae.bench.data", "time the cached pipeline against ImageFolder"),
    (("bench", "finetune-data"), "blockmae.bench.finetune_data", "time RandAugment per sample against batched crops"),
    (("bench", "probe"), "blockmae.bench.probe", "time the cached-feature probe against the forward probe"),
]


def _matching(words: Sequence[str]) -> list[tuple[tuple[str, ...], str, str]]:
    return [c for c in COMMANDS if tuple(words[: len(c[0])]) == c[0]]


class _Parser(argparse.ArgumentParser):
    """argparse's errors as every other error of ours: one line, `blockmae: error: ...`, exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise BlockMAEError(f"{message} (see {self.prog} --help)")


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="blockmae",
        description="Block-Masked MAE: pretraining, probes and texture-vs-shape diagnostics.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    selected = _matching(argv)
    for words, module, help_text in COMMANDS:
        if len(words) == 1:
            target, name = sub, words[0]
        else:
            group = words[0]
            if group not in groups:
                group_parser = sub.add_parser(group, help=f"{group} commands")
                groups[group] = group_parser.add_subparsers(dest=f"{group}_command", metavar="COMMAND", required=True)
            target, name = groups[group], words[1]
        command_parser = target.add_parser(name, help=help_text, description=help_text)
        if (words, module, help_text) in selected:
            # Import only what will run: torch-heavy modules stay out of `blockmae --help`.
            mod = importlib.import_module(module)
            mod.add_arguments(command_parser)
            command_parser.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(argv).parse_args(argv)
        return int(args._run(args) or 0)
    except ReportedError:
        return 2
    except BlockMAEError as err:
        print(error_line(err), file=sys.stderr)
        return 2
    except OSError as err:
        if isinstance(err, BrokenPipeError):
            sys.stderr.close()  # `blockmae masks | head`: the reader left; not an error worth a traceback
            return 141
        # A file system that refuses a write or a read (read-only, full, a file where a folder is needed):
        # one line naming the path; each writer's atomic writes leave no partial output behind.
        print(error_line(output_error(err)), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("blockmae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
