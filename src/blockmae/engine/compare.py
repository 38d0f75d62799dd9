"""`blockmae ckpt compare A B`: are two checkpoints' weights identical, and if not, where do they differ most?

A and B may be .safetensors files, checkpoint directories (holding model.safetensors) or run
directories (their checkpoints/last). Exit 0 for any completed comparison (`--check`: 1 if they
differ beyond --atol), 2 for bad input.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from blockmae.config import number
from blockmae.engine.checkpoint import find_checkpoint
from blockmae.errors import BlockMAEError
from blockmae.models.io import resolve_weights_path


def weights_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file() and path.suffix != ".safetensors":
        raise BlockMAEError(f"{path} is not a .safetensors file; give a weights file, checkpoint dir or run dir")
    if path.is_dir():
        find_checkpoint(path)  # puts back a `last` whose atomic swap was interrupted

    return resolve_weights_path(path)


def _load(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise BlockMAEError(f"cannot read {path}: {err}") from None


@dataclass
class Comparison:
    tensors: int
    values: int
    differing: list[str]  # names of tensors that are not bit-identical
    max_diff: float
    max_name: str | None
    max_index: tuple[int, ...] | None
    only_a: list[str]
    only_b: list[str]
    shape_mismatch: list[str]

    @property
    def identical(self) -> bool:
        return not (self.differing or self.only_a or self.only_b or self.shape_mismatch)


def compare_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> Comparison:
    common = sorted(set(a) & set(b))
    shape_mismatch = [k for k in common if a[k].shape != b[k].shape or a[k].dtype != b[k].dtype]
    differing, max_diff, max_name, max_index, values = [], 0.0, None, None, 0
    for name in common:
        if name in shape_mismatch:
            continue
        x, y = a[name], b[name]
        values += x.numel()
        if torch.equal(x, y):
            continue
        differing.append(name)
        diff = (x.double() - y.double()).abs()
        diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)  # NaN vs number
        flat = int(diff.argmax())
        if max_name is None or diff.view(-1)[flat] > max_diff:
            max_diff, max_name = float(diff.view(-1)[flat]), name
            max_index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape)) if diff.dim() else ()
    return Comparison(len(common), values, differing, max_diff, max_name, max_index,
                      sorted(set(a) - set(b)), sorted(set(b) - set(a)), shape_mismatch)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", metavar="A", help="run dir, checkpoint dir or .safetensors file")
    parser.add_argument("b", metavar="B", help="run dir, checkpoint dir or .safetensors file")
    parser.add_argument("--atol", type=number(float, ">=0"), default=0.0,
                        help="differences up to this are reported as 'close' instead of 'different' (default 0)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the weights differ by more than --atol")


def run(args: argparse.Namespace) -> int:
    path_a, path_b = weights_file(args.a), weights_file(args.b)
    result = compare_weights(_load(path_a), _load(path_b))
    if result.identical:
        print(f"identical ({result.tensors} tensors, {result.values:,} values)")
        return 0
    for label, names in (("only in A", result.only_a), ("only in B", result.only_b),
                         ("shape/dtype differs", result.shape_mismatch)):
        if names:
            print(f"{label}: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}")
    structural = bool(result.only_a or result.only_b or result.shape_mismatch)
    if result.max_name is not None:
        where = f"{result.max_name}[{', '.join(map(str, result.max_index or ()))}]"
        verdict = "close" if result.max_diff <= args.atol and not structural else "different"
        print(f"{verdict}: max abs diff {result.max_diff:.6g} at {where}; "
              f"{len(result.differing)} of {result.tensors} tensors differ")
    else:
        verdict = "different"
    return 1 if args.check and verdict == "different" else 0
