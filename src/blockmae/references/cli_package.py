"""`blockmae weights package --run-dir DIR --block B --seed S --command TEXT`: a finished pretraining run as
a reference encoder (blockmae.references.package), measured with the quickstart's evaluation and verified."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from blockmae import quickstart
from blockmae.config import number
from blockmae.errors import BlockMAEError
from blockmae.fileio import claim_output_dir, output_kind
from blockmae.lock import output_lock
from blockmae.references.package import package_reference
from blockmae.references.store import REFERENCES_DIR, reference_id
from blockmae.references.verify import verify_reference

REFERENCE_KIND = "reference"  # fileio.output_kind's name for a reference folder
EVALUATION_DIR = "reference_evaluation"  # under the run dir, unless --work-dir says otherwise


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
        work_dir.mkdir(parents=True, exist_ok=True)
        kept = work_dir / weights.name
        shutil.copyfile(weights, kept)
        return quickstart.reference_evaluation(kept, work_dir / "evaluation")

    return evaluate


def run(args: argparse.Namespace) -> int:
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
