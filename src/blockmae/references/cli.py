"""`blockmae weights list | verify | package` (docs: blockmae.references).

The command modules (cli_list, cli_verify, cli_package) are thin: the work is here.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from blockmae.config import number
from blockmae.errors import BlockMAEError
from blockmae.fileio import claim_output_dir, output_kind, output_lock
from blockmae.masking import mask_label
from blockmae.references import (
    REFERENCES_DIR, ROOT_ENV, Reference, list_references, load_reference, package_reference, reference_folders,
    reference_id, references_root, verify_reference,
)
from blockmae.text import table

REFERENCE_KIND = "reference"  # fileio.output_kind's name for a reference folder
EVALUATION_DIR = "reference_evaluation"  # under the run dir, unless --work-dir says otherwise


def add_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", metavar="DIR", default=None,
                        help=f"folder of reference folders (default: ${ROOT_ENV} when set, else the package's, "
                             f"{REFERENCES_DIR})")


def linear_top1(evaluation: dict[str, Any] | None) -> float | None:
    """The linear probe's top-1 accuracy in a manifest's evaluation: `linear_top1`, `linear.top1` or `top1`."""
    if not isinstance(evaluation, dict):
        return None
    linear = evaluation.get("linear")
    for value in (evaluation.get("linear_top1"), linear.get("top1") if isinstance(linear, dict) else None,
                  evaluation.get("top1")):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _row(ref: Reference) -> list[str]:
    mask = ref.manifest.get("mask", {})
    try:
        mask_text = mask_label(mask["family"], int(mask["block"]), float(mask["ratio"]), mask.get("align"))
    except (KeyError, TypeError, ValueError):
        mask_text = ref.label
    top1 = linear_top1(ref.manifest.get("evaluation"))
    return [ref.id, mask_text, str(ref.seed),
            f"{ref.images_seen:,}" if ref.images_seen is not None else "-",
            f"{ref.final_loss:.4f}" if ref.final_loss is not None else "-",
            f"{100 * top1:.1f}%" if top1 is not None else "-",
            str(ref.manifest.get("trained_on") or "-"), ref.manifest["weights"]["sha256"][:12]]


# ---------------------------------------------------------------------------------------------- list


def list_arguments(parser: argparse.ArgumentParser) -> None:
    add_root(parser)


def list_command(args: argparse.Namespace) -> int:
    args.root = args.root or str(references_root())
    refs = list_references(Path(args.root))
    if refs:
        header = ["id", "mask", "seed", "images seen", "final loss", "linear top-1", "trained on", "sha256"]
        print(table(header, [_row(ref) for ref in refs]))
        print(f"{len(refs)} reference encoder(s) in {args.root}; in Python, "
              f"blockmae.references.find_reference(block, seed).weights_path is a checkpoint for load_encoder")
    else:
        print(f"no reference encoders in {args.root}")
    return 0


# -------------------------------------------------------------------------------------------- verify


def verify_arguments(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("ids", nargs="*", metavar="ID", help="references to check (default: all under --root)")


def verify_command(args: argparse.Namespace) -> int:
    root = Path(args.root) if args.root else references_root()
    folders = reference_folders(root)
    if not folders:
        print(f"no reference encoders in {root}: nothing to verify")
        return 1
    if args.ids:
        names = {f.name: f for f in folders}
        unknown = [i for i in args.ids if i not in names]
        if unknown:
            raise BlockMAEError(f"no reference {', '.join(unknown)} in {root}; available: {', '.join(names)}")
        folders = [names[i] for i in dict.fromkeys(args.ids)]
    failed = 0
    for folder in folders:
        try:
            problems = verify_reference(load_reference(folder))
        except BlockMAEError as err:
            problems = [str(err)]
        failed += bool(problems)
        for problem in problems:
            print(f"FAIL  {folder.name}: {problem}")
        if not problems:
            print(f"OK    {folder.name}")
    print(f"{len(folders) - failed} of {len(folders)} reference(s) OK in {root}")
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------- package


def package_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, metavar="DIR", help="a finished pretraining run dir")
    parser.add_argument("--block", required=True, type=number(int, ">=1"),
                        help="its mask's block size (1: random masking)")
    parser.add_argument("--seed", required=True, type=number(int, ">=0"), help="its run.seed")
    parser.add_argument("--command", required=True, metavar="TEXT", help="the exact command that trained it")
    parser.add_argument("--out-root", metavar="DIR", help=f"where the reference folder goes (default: {REFERENCES_DIR})")
    parser.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the float16 encoder (blockmae.quickstart.reference_evaluation) and store the "
                             "results in the manifest (default: --evaluate)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing reference of the same id (never done without it)")
    parser.add_argument("--work-dir", metavar="DIR",
                        help=f"folder for the evaluation's files (default: RUN_DIR/{EVALUATION_DIR})")


def package_argv(args: argparse.Namespace) -> list[str]:
    """The command line of this packaging, as recorded in the manifest."""
    argv = ["blockmae", "weights", "package", "--run-dir", str(args.run_dir), "--block", str(args.block),
            "--seed", str(args.seed), "--command", args.command]
    if args.out_root:
        argv += ["--out-root", str(args.out_root)]
    argv.append("--evaluate" if args.evaluate else "--no-evaluate")
    if args.work_dir:
        argv += ["--work-dir", str(args.work_dir)]
    return argv


def _evaluator(work_dir: Path) -> Any:
    """`evaluate(weights)` for package_reference: evaluates a copy of the weights kept in `work_dir` (the
    staged file is renamed away afterwards, so results naming its path would point nowhere)."""
    def evaluate(weights: Path) -> dict[str, Any]:
        from blockmae.quickstart import reference_evaluation  # written beside the quickstart; heavy

        work_dir.mkdir(parents=True, exist_ok=True)
        kept = work_dir / weights.name
        shutil.copyfile(weights, kept)
        return reference_evaluation(kept, work_dir / "evaluation")

    return evaluate


def package_command(args: argparse.Namespace) -> int:
    if args.block < 1 or args.seed < 0:
        raise BlockMAEError(f"--block must be >= 1 and --seed >= 0, got {args.block} and {args.seed}")
    run_dir = Path(args.run_dir)
    out_root = Path(args.out_root) if args.out_root else REFERENCES_DIR
    ref_id = reference_id(args.block, args.seed)
    target = out_root / ref_id
    found = output_kind(target)
    replacing = found is not None
    if replacing and not args.force:
        what = f"the reference {ref_id}" if found == REFERENCE_KIND else "other files"
        raise BlockMAEError(f"{target} already holds {what}; pass --force to replace it, or --out-root DIR to "
                            f"package elsewhere")
    claim_output_dir(target, REFERENCE_KIND, option="--out-root", force=args.force)
    evaluate = _evaluator(Path(args.work_dir) if args.work_dir else run_dir / EVALUATION_DIR) if args.evaluate else None
    with output_lock(target):
        ref = package_reference(run_dir, out_root, ref_id, args.command, None, package_command=package_argv(args),
                                block=args.block, seed=args.seed, evaluate=evaluate)
    problems = verify_reference(ref)
    if problems:
        raise BlockMAEError(f"the packaged {ref.path} does not verify: {'; '.join(problems)}")
    weights = ref.manifest["weights"]
    print(f"{'replaced' if replacing else 'packaged'} {ref.id} in {ref.path}: {weights['parameters']:,} parameters, "
          f"{weights['bytes'] / 1e6:.1f} MB float16, sha256 {weights['sha256'][:12]}, "
          f"{ref.images_seen:,} images seen, final loss {ref.final_loss:.4f}")
    return 0
