"""``incdet data ...``: dataset utilities (``make-shapes`` builds the shapes-voc benchmark)."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    """Add the ``data`` command group to the ``incdet`` parser."""
    from incdet.data.shapes import ShapesParams

    data = sub.add_parser("data", help="dataset utilities", description="Dataset utilities.")
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    dsub.required = True

    d = ShapesParams()
    p = dsub.add_parser(
        "make-shapes",
        help="build the synthetic shapes-voc benchmark (VOC layout)",
        description="Deterministically write the shapes-voc dataset (VOC layout: JPEGImages, Annotations, "
        "SegmentationClass, SegmentationObject, ImageSets, classes.txt). Re-uses an existing build with the "
        "same parameters unless --force is given.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, type=Path, help="output directory (the dataset root)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed")
    p.add_argument("--train", type=int, default=d.n_train, help="images in the train split")
    p.add_argument("--val", type=int, default=d.n_val, help="images in the val split (trainval = train + val)")
    p.add_argument("--test", type=int, default=d.n_test, help="images in the test split")
    p.add_argument("--size", type=int, default=d.size, help="image side in pixels (square images)")
    p.add_argument("--min-objects", type=int, default=d.min_objects, help="fewest objects per image")
    p.add_argument("--max-objects", type=int, default=d.max_objects, help="most objects per image")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (the files do not depend on it)")
    p.add_argument("--force", action="store_true", help="rebuild even if a matching build exists")
    p.set_defaults(func=_make_shapes)


def _make_shapes(args) -> int:
    from incdet.data.shapes import ensure_shapes, make_shapes, read_manifest

    kw = dict(seed=args.seed, n_train=args.train, n_val=args.val, n_test=args.test, size=args.size,
              min_objects=args.min_objects, max_objects=args.max_objects, workers=args.workers,
              progress=True)
    root = (make_shapes if args.force else ensure_shapes)(args.out, **kw)
    m = read_manifest(root) or {}
    stats = m.get("stats", {})
    print(f"shapes-voc: {root}")
    for split in ("train", "val", "test"):
        st = stats.get(split)
        if st:
            per = st["per_class"].values()
            print(f"  {split:5s}: {st['images']:5d} images, {st['objects']:6d} objects "
                  f"({st['difficult']} difficult, {st['truncated']} truncated, {st['occluded']} occluded), "
                  f"per class {min(per)}-{max(per)}")
    return 0
