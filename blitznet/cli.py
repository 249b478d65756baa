"""The ``blitznet`` command line.

    blitznet train CONFIG [--set k=v ...]            # shared driver (incdet.engine.cli)
    blitznet eval RUN_DIR                             # shared: re-evaluate a run's weights
    blitznet report RUN_DIR                           # shared: results matrix + forgetting
    blitznet predict --weights W IMG... --out DIR     # IMG.json (COCO results), IMG_mask.png, IMG_overlay.jpg
    blitznet eval-weights --weights W --root VOC_ROOT [--split val] [--fold-bn --channels-last --compile]   # VOC mAP + mIoU
    blitznet export RUN_DIR/checkpoint.pt --out W.pt  # standalone weights file from a run checkpoint
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from incdet.engine.cli import run_cli
from incdet.errors import ConfigError, DataError

log = logging.getLogger("blitznet")


def _predict(args) -> int:
    from blitznet.predict import BlitzNetPredictor
    from incdet.data.images import image_size
    from incdet.engine.config import check_range
    from incdet.vis import StagedOutputs, check_writable_size, encode_outputs, output_stems, to_chw_uint8

    check_range("", "--batch-size", args.batch_size, 1)
    check_range("", "--score-thresh", args.score_thresh, 0, 1, hi_open=True)
    check_range("", "--vis-thresh", args.vis_thresh, 0, 1)
    # everything that can be checked before the model runs: output names, files, sizes
    stems = output_stems(args.images, with_mask=True)
    for path in args.images:
        check_writable_size(path, image_size(str(path)))
    p = BlitzNetPredictor(args.weights, device=args.device, score_thresh=args.score_thresh,
                          batch_size=args.batch_size, channels_last=args.channels_last,
                          amp=None if args.amp == "none" else args.amp, compile_model=args.compile,
                          fold_bn=args.fold_bn, freezing=args.freezing)
    lines = []
    with StagedOutputs(args.out) as st:  # all files or none
        for k in range(0, len(args.images), args.batch_size):
            paths = args.images[k:k + args.batch_size]
            imgs = [to_chw_uint8(i) for i in paths]
            for path, stem, img, pred in zip(paths, stems[k:k + args.batch_size], imgs, p.predict(imgs)):
                enc = encode_outputs(pred, img, stem, p.classes, vis_thresh=args.vis_thresh)
                files = [st.add(name, data) for name, data in enc.values()]
                n = int((pred["scores"] >= args.vis_thresh).sum())
                lines.append(f"{path}: {n} detections >= {args.vis_thresh}; wrote " + ", ".join(files))
    print("\n".join(lines))
    return 0


def _eval_weights(args) -> int:
    import torch

    from blitznet.learner import BlitzNetLearner, BlitzNetLearnerConfig
    from blitznet.predict import check_inference_options, load_weights, prepare_inference
    from incdet.data import VOCDetection
    from incdet.engine import Task
    from incdet.engine.distributed import resolve_device

    from incdet.engine.config import check_range

    root = Path(args.root)
    if not root.is_dir():
        raise DataError(f"{root}: no such dataset folder")
    check_range("", "--max-images", args.max_images, 1, allow_none=True)
    check_inference_options(args.compile, args.freezing)
    if args.json and (Path(args.json).is_dir() or not Path(args.json).resolve().parent.is_dir()):
        raise ConfigError(f"--json {args.json}: not a file path in an existing folder")
    device = resolve_device(args.device)
    model, classes = load_weights(args.weights, device)
    ds = VOCDetection(root, args.split, keep_masks=True)
    if list(ds.classes[:len(classes)]) != list(classes) and not args.ignore_class_names:
        raise ConfigError(f"{args.weights}: model classes {classes[:5]}... do not match {root} classes "
                          f"{list(ds.classes)[:5]}... (use --ignore-class-names to evaluate anyway)")
    if args.max_images:
        from incdet.data.builder import First

        ds = First(ds, args.max_images)
    learner = BlitzNetLearner(BlitzNetLearnerConfig(model=model.config, nms_method=args.nms), device)
    learner.model = model
    learner.inference_forward = prepare_inference(model, channels_last=args.channels_last, fold_bn=args.fold_bn,
                                                  compile_model=args.compile, freezing=args.freezing)
    learner.classes = list(classes)
    task = Task(index=0, name="eval", new_classes=list(classes), seen_classes=list(classes), eval_set=ds)
    with torch.no_grad():
        m = learner.evaluate(task)
    print(f"mAP={m['mAP']:.2f}% mIoU={m['mIoU']:.2f}% ({len(ds)} images, {args.split})")
    if args.json:  # NaN (no ground truth) as null; written atomically
        _write_json_atomic(Path(args.json), {k: (None if v != v else v) for k, v in m.items()})
    return 0


def _write_json_atomic(path: Path, obj) -> None:
    """``obj`` as JSON at ``path`` (:func:`incdet.engine.checkpoint.write_atomic`: temp file in
    the same folder, fsync, ``os.replace``); OS errors -> DataError naming ``path``."""
    from incdet.engine.checkpoint import write_atomic

    text = json.dumps(obj, indent=2, allow_nan=False)
    try:
        write_atomic(path, lambda f: f.write(text))
    except OSError as e:
        raise DataError(f"{path}: cannot write ({e.strerror or e})") from None


def _export(args) -> int:
    from blitznet.predict import load_weights, save_weights

    model, classes = load_weights(args.checkpoint)
    save_weights(model, args.out, classes)
    print(f"wrote {args.out}")
    return 0


def _inference_options(p) -> None:
    """The network options of ``predict`` and ``eval-weights`` (:func:`blitznet.predict.prepare_inference`)."""
    p.add_argument("--channels-last", action="store_true", help="NHWC network and inputs")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--freezing", action="store_true",
                   help="with --compile: inductor's inference freezing (weights folded as constants and prepacked)")
    p.add_argument("--fold-bn", action="store_true", help="fold BatchNorm into the convolutions (same outputs up to rounding)")


def register(sub) -> None:
    """Add the blitznet-specific commands (and the shared train/eval/report when available)."""
    from incdet.engine import cli as engine_cli

    engine_cli.register(sub)

    p = sub.add_parser("predict", help="detections JSON, mask PNG and overlay for each image",
                       description="STEM.json (COCO results), STEM_mask.png and STEM_overlay.jpg per image, "
                                   "STEM being the image's file stem. Two inputs with the same stem (a/x.jpg, "
                                   "b/x.png) are refused, never overwritten. Outputs are written all together "
                                   "or, on any error, not at all.")
    p.add_argument("images", nargs="+", metavar="IMG")
    p.add_argument("--weights", required=True, help="weights file (blitznet export) or run checkpoint")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--score-thresh", type=float, default=0.01, help="detections kept in the JSON")
    p.add_argument("--vis-thresh", type=float, default=0.3, help="detections drawn on the overlay")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"], help="autocast (CUDA only)")
    _inference_options(p)
    p.set_defaults(func=_predict)

    names = ["eval-weights"] + ([] if "eval" in sub.choices else ["eval"])
    for name in names:
        p = sub.add_parser(name, help="VOC mAP and mIoU of a weights file on a VOC-layout dataset")
        p.add_argument("--weights", required=True)
        p.add_argument("--root", required=True, help="VOC20xx folder (or a shapes-voc folder)")
        p.add_argument("--split", default="val")
        p.add_argument("--max-images", type=int, default=None)
        p.add_argument("--device", default="auto")
        p.add_argument("--nms", default="auto", choices=["auto", "cluster", "batched"])
        p.add_argument("--json", help="also write the metrics to this JSON file")
        p.add_argument("--ignore-class-names", action="store_true")
        _inference_options(p)
        p.set_defaults(func=_eval_weights)

    p = sub.add_parser("export", help="standalone weights file from a blitznet run checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_export)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli("blitznet", "BlitzNet: real-time joint detection and segmentation.", [register], argv)


if __name__ == "__main__":
    sys.exit(main())
