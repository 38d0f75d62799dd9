"""`blockmae data prepare`: download (verified, resumable) or take a local copy, extract, build the caches."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from blockmae.config import number
from blockmae.data import cifar, cue_conflict, dtd, load_dataset, mvh, tiny_imagenet
from blockmae.data.cache import default_workers
from blockmae.data.mvh import DATASETS as MVH_DATASETS, PREFIX as MVH_PREFIX
from blockmae.data.roots import default_root, obtain

PREPARABLE = ("tiny-imagenet", "cifar10", "cifar100", "dtd", "cue-conflict") + tuple(
    MVH_PREFIX + n for n in MVH_DATASETS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=PREPARABLE, metavar="DATASET",
                        help="which dataset to prepare: " + ", ".join(PREPARABLE[:5]) + ", or mvh-NAME for "
                             "model-vs-human's datasets (" + ", ".join(MVH_DATASETS) + ")")
    parser.add_argument("--root", type=Path, default=None,
                        help="folder to hold the download, the extracted files and the caches "
                             "(default: $BLOCKMAE_CACHE_DIR/datasets/<dataset>)")
    parser.add_argument("--source", default=None,
                        help="a zip/tar archive, a URL, or an already extracted folder (used in place); "
                             "default: the official download")
    parser.add_argument("--md5", default=None, help="expected md5 of a --source URL's file")
    parser.add_argument("--sha256", default=None, help="expected sha256 of a --source URL's file")
    parser.add_argument("--image-size", type=number(int, ">=1"), default=None,
                        help="side of the cached square images (default 64; model-vs-human's datasets: 224)")
    parser.add_argument("--resize", choices=("center-crop", "stretch"), default="center-crop",
                        help="how non-square or other-size images are fitted (default center-crop: shorter side "
                             "to --image-size, centre crop)")
    parser.add_argument("--partition", type=number(int, "1..10"), default=1, help="DTD partition 1..10 (default 1)")
    parser.add_argument("--workers", type=number(int, ">=0"), default=None,
                        help="decoding processes (default: CPU count, at most 8; 0 = in this process)")


def run(args: argparse.Namespace) -> int:
    if args.image_size is None:
        args.image_size = 224 if args.dataset.startswith(MVH_PREFIX) else 64
    name = args.dataset
    root = args.root if args.root is not None else default_root(name)
    workers = default_workers() if args.workers is None else args.workers
    official, find, layout, members_under, splits = _dataset_facts(name)
    if args.source is None or args.source == getattr(official, "url", None):
        members = members_under
    else:
        members = None  # a user's archive: take all of it
    options = {} if name in ("cifar10", "cifar100") else {"workers": workers, "resize": args.resize}
    if name == "dtd":
        options["partition"] = args.partition

    def verify(data_dir: Path, cache_dir: Path) -> None:
        """Every split decodes (a truncated image is refused before the root's record changes)."""
        cache = {} if name in ("cifar10", "cifar100") else {"cache_dir": cache_dir}
        for split in splits:
            load_dataset(name, split, root=data_dir, image_size=args.image_size, **options, **cache)

    root, data_dir = obtain(name, root, args.source, find, layout, official=official, md5=args.md5,
                            sha256=args.sha256, members_under=members, verify=verify)
    counts, classes = {}, 0
    for split in splits:
        dataset = load_dataset(name, split, root=root, image_size=args.image_size, **options)
        counts[split], classes = len(dataset), dataset.num_classes
    print(f"{name} prepared in {root} (data: {data_dir}; {args.image_size} px)")
    print(f"classes: {classes}")
    for split, count in counts.items():
        print(f"{split}: {count}")
    sys.stdout.flush()
    return 0


def _dataset_facts(name: str):
    """(official RemoteFile, find_data_dir, layout text, archive prefix to extract, splits) of a dataset."""
    if name == "tiny-imagenet":
        return (tiny_imagenet.OFFICIAL_ZIP, tiny_imagenet.find_data_dir, tiny_imagenet.LAYOUT, None,
                tiny_imagenet.SPLITS)
    if name == "dtd":
        return dtd.OFFICIAL_ARCHIVE, dtd.find_data_dir, dtd.LAYOUT, None, dtd.SPLITS
    if name == "cue-conflict":
        return (cue_conflict.OFFICIAL_ARCHIVE, cue_conflict.find_data_dir, cue_conflict.LAYOUT,
                cue_conflict.STIMULI_IN_ARCHIVE, ("test",))
    if name.startswith(MVH_PREFIX):
        return mvh.official_archive(name), mvh.data_dir_finder(name), mvh.layout(name), None, mvh.SPLITS
    return (cifar.official_archive(name), partial(cifar.find_data_dir, name), cifar.layout(name), None, cifar.SPLITS)
