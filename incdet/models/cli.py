"""``incdet proposals``: precompute class-agnostic proposals for a dataset split.

    incdet proposals --data ROOT --split trainval --out proposals/trainval.npz

``ROOT`` is a VOC-layout root (``ImageSets/Main/<split>.txt``, ``JPEGImages/``; shapes-voc
too) or a COCO-layout root (``annotations/instances_<split>.json``, ``<split>/``). The output
is the ``.npz`` format documented in :mod:`incdet.models.proposals`. An existing output file is
extended: images already in it are not recomputed (``--overwrite`` recomputes everything).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from incdet.engine.cli import run_cli
from incdet.models.proposals import METHODS, compute_for_images, read_npz, save_npz, voc_image_list

log = logging.getLogger(__name__)


def _run(args: argparse.Namespace) -> int:
    items = voc_image_list(args.data, args.split)
    if args.limit:
        items = items[: args.limit]
    out = Path(args.out)
    have = {}
    if out.exists() and not args.overwrite:
        have = read_npz(out)
    todo = [(i, p) for i, p in items if i not in have]
    t0 = time.time()
    got = compute_for_images(todo, args.method, args.max_proposals, args.max_side, args.workers, progress=not args.quiet)
    have.update(got)
    meta = {"method": args.method, "max_proposals": args.max_proposals, "max_side": args.max_side,
            "data": str(args.data), "split": args.split}
    save_npz(out, have, meta)
    counts = np.array([len(v) for v in have.values()]) if have else np.zeros(1)
    dt = time.time() - t0
    print(f"{out}: {len(have)} images ({len(todo)} computed in {dt:.1f} s), proposals per image: "
          f"mean {counts.mean():.0f}, min {counts.min()}, max {counts.max()}, empty {int((counts == 0).sum())}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("proposals", help="compute class-agnostic proposals (selective search) for a dataset split",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset root (VOC or COCO layout)")
    p.add_argument("--split", required=True, help="split name, e.g. trainval, test, val2017")
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument("--method", default="selective_search", choices=METHODS)
    p.add_argument("--max-proposals", type=int, default=2000)
    p.add_argument("--max-side", type=int, default=500, help="selective search runs on images downscaled to this long side")
    p.add_argument("--workers", type=int, default=0, help="processes (0: all CPUs)")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    p.add_argument("--overwrite", action="store_true", help="recompute images already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
    from incdet.models.predict import register as register_predict

    register_predict(sub)


def main(argv=None) -> int:
    return run_cli("incdet-models", "Incremental Fast R-CNN tools.", [register], argv)
