"""`blockmae weights verify [--root DIR] [ID ...]`: each reference checked against its manifest
(blockmae.references.verify)."""

from __future__ import annotations

import argparse
from pathlib import Path

from blockmae.errors import BlockMAEError
from blockmae.references.cli_list import add_root
from blockmae.references.store import load_reference, reference_folders, references_root
from blockmae.references.verify import verify_reference


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("ids", nargs="*", metavar="ID", help="references to check (default: all under --root)")


def run(args: argparse.Namespace) -> int:
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
