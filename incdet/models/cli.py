"""``incdet proposals``: precompute class-agnostic proposals for a dataset split.

    incdet proposals --data ROOT --split trainval --out proposals/trainval.npz [--workers N]
    incdet proposals --import d2_proposals.pkl [--data ROOT --split S] --out proposals/trainval.npz

``ROOT`` is a VOC-layout root (``ImageSets/Main/<split>.txt``, ``JPEGImages/``; shapes-voc
too) or a COCO-layout root (``annotations/instances_<split>.json``, ``<split>/``). The output
is the ``.npz`` format documented in :mod:`incdet.models.proposals`. An existing output file is
extended: images already in it are not recomputed (``--overwrite`` recomputes everything).

Computing runs over ``--workers`` processes (0: all CPUs) with a progress bar. Each finished
image is stored at once in a resumable cache (``--cache-dir``, default ``OUT.parts/``: one small
checked ``.npz`` per image, written atomically): a killed run keeps what it computed, and the
same command started again skips those images (a damaged piece is recomputed). When all images
are done they are merged into ``--out`` and the cache is deleted (``--keep-cache`` keeps it).

``--import`` is the fast path for VOC/COCO: it converts precomputed proposals (detectron2's
proposal ``.pkl``, read as data by an allow-list unpickler, or ``.npz`` files) into the format,
checking every image's boxes; with ``--data``/``--split`` only that split's images are kept and
images without proposals are reported (an error unless ``--allow-missing``). Training can also
read such a ``.pkl`` directly (``learner.proposals: path``).
"""
from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from incdet.engine.cli import run_cli
from incdet.errors import DataError
from incdet.models.proposals import (METHODS, ShardCache, compute_for_images, load_detectron2_pkl, read_npz,
                                     save_npz, validate_boxes, voc_image_list)

log = logging.getLogger(__name__)


def _summary(out: Path, have: dict, what: str) -> None:
    counts = np.array([len(v) for v in have.values()]) if have else np.zeros(1, int)
    print(f"{out}: {len(have)} images ({what}), proposals per image: "
          f"mean {counts.mean():.0f}, min {counts.min()}, max {counts.max()}, empty {int((counts == 0).sum())}")


def _import(args: argparse.Namespace) -> int:
    """Convert precomputed proposal files into the .npz format (checked, optionally per split)."""
    got: dict = {}
    for f in args.import_files:
        f = Path(f)
        if not f.is_file():
            raise DataError(f"{f}: no such proposal file")
        if f.suffix == ".pkl":
            part = load_detectron2_pkl(f)
        elif f.suffix == ".npz":
            part = read_npz(f)
        else:
            raise DataError(f"{f}: proposal files to import must be detectron2 .pkl or .npz")
        for k, v in part.items():
            if k not in got:  # earlier files win, as in ProposalSource
                got[k] = validate_boxes(v, k, str(f)).numpy()[: args.max_proposals]
    if args.data:
        if not args.split:
            raise DataError("--import with --data needs --split")
        ids = [i for i, _ in voc_image_list(args.data, args.split)]
        missing = [i for i in ids if i not in got]
        if missing and not args.allow_missing:
            raise DataError(f"{', '.join(args.import_files)}: no proposals for {len(missing)} of {len(ids)} images "
                            f"of {args.data} {args.split} (first: {missing[:5]}); --allow-missing writes the others")
        got = {i: got[i] for i in ids if i in got}
    out = Path(args.out)
    save_npz(out, got, {"imported": [str(f) for f in args.import_files], "max_proposals": args.max_proposals})
    _summary(out, got, f"imported from {len(args.import_files)} file(s)")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.import_files:
        return _import(args)
    if not args.data or not args.split:
        raise DataError("incdet proposals needs --data and --split (or --import FILE)")
    items = voc_image_list(args.data, args.split)
    if args.limit:
        items = items[: args.limit]
    out = Path(args.out)
    cache_dir = Path(args.cache_dir) if args.cache_dir else out.with_name(out.name + ".parts")
    have = {}
    if args.overwrite:
        shutil.rmtree(cache_dir, ignore_errors=True)
    elif out.exists():
        have = read_npz(out)
    todo = [(i, p) for i, p in items if i not in have]
    t0 = time.time()
    got = compute_for_images(todo, args.method, args.max_proposals, args.max_side, args.workers,
                             progress=not args.quiet, cache_dir=cache_dir)
    have.update(got)
    meta = {"method": args.method, "max_proposals": args.max_proposals, "max_side": args.max_side,
            "data": str(args.data), "split": args.split}
    save_npz(out, have, meta)
    if not args.keep_cache:
        ShardCache(cache_dir, {"method": args.method, "max_proposals": args.max_proposals,
                               "max_side": args.max_side}).clear()
    _summary(out, have, f"{len(todo)} computed or taken from the cache in {time.time() - t0:.1f} s")
    return 0


def register(sub) -> None:
    p = sub.add_parser("proposals", help="compute class-agnostic proposals (selective search) for a dataset split",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="dataset root (VOC or COCO layout)")
    p.add_argument("--split", help="split name, e.g. trainval, test, val2017")
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument("--method", default="selective_search", choices=METHODS)
    p.add_argument("--max-proposals", type=int, default=2000)
    p.add_argument("--max-side", type=int, default=500, help="selective search runs on images downscaled to this long side")
    p.add_argument("--workers", type=int, default=0, help="processes (0: all CPUs)")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    p.add_argument("--overwrite", action="store_true", help="recompute images already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--cache-dir", help="resumable per-image cache (default: OUT.parts/)")
    p.add_argument("--keep-cache", action="store_true", help="keep the cache after the merge into --out")
    p.add_argument("--import", dest="import_files", nargs="+", metavar="FILE",
                   help="convert precomputed proposals (detectron2 .pkl, .npz) instead of computing them")
    p.add_argument("--allow-missing", action="store_true", help="--import: images of the split may lack proposals")
    p.set_defaults(func=_run)
    from incdet.models.predict import register as register_predict

    register_predict(sub)


def main(argv=None) -> int:
    return run_cli("incdet-models", "Incremental Fast R-CNN tools.", [register], argv)
