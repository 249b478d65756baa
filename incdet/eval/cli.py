"""``incdet eval-detections``: score any detector's COCO-format results against VOC or COCO gt.

::

    incdet eval-detections --gt (VOC_ROOT | instances.json) --dets RESULTS.json \\
        --metric voc07|voc|coco [--iou 0.5] [--iou-rule ge|gt] [--plus-one/--no-plus-one] \\
        [--use-difficult] [--xywh x+w|x+w-1] [--det-origin 1|0] [--split S] [--classes ...] \\
        [--max-dets 1 10 100] [--json OUT]

RESULTS.json is the standard COCO results list: ``[{"image_id", "category_id", "bbox": [x, y,
w, h], "score"}, ...]`` (a COCO-style dict whose ``annotations`` carry scores is accepted
too; its own ``images``/``categories`` then map ids to file stems / class names).

Ground truth
------------
* a directory: VOC layout (``Annotations/``, ``ImageSets/Main/<split>.txt``; the
  ``VOC20xx`` folder, or a ``VOCdevkit`` folder holding exactly one). ``--split`` defaults to
  the first list that exists among ``test``, ``val``, ``trainval``, ``train``. Classes:
  ``--classes`` (comma-separated names or a file with one per line), else ``classes.txt`` in
  the root, else the 20 VOC classes. Read with :class:`incdet.data.voc.VOCDetection` when
  ``JPEGImages/`` exists (full validation); otherwise (an annotations-only folder) with
  :func:`incdet.data.voc.read_voc_objects`, which parses only the XML objects (name, bndbox,
  difficult).
  ``image_id`` is the file stem: a string, or an int ``i`` with ``str(i)`` equal to the stem
  or else ``int(stem) == i`` for an all-digit stem when that is unique (``5`` matches
  ``"000005"``). ``category_id`` is a class name or its 1-based index into the class list.
* a file: a COCO instances json; ``image_id`` / ``category_id`` are COCO ids (or a file stem /
  category name). For ``voc``/``voc07`` metrics, ``iscrowd`` (or a ``difficult``/``ignore``
  flag) annotations are treated as VOC difficult.

Coordinates
-----------
``bbox`` ``[x, y, w, h]`` becomes corners with ``x2 = x + w`` (``--xywh x+w``, default: as
pycocotools and rafaelpadilla/review_object_detection_metrics) or ``x2 = x + w - 1``
(``--xywh x+w-1``); COCO gt boxes are converted the same way. For a VOC gt, detections are
taken in the XML's 1-based pixel frame by default (``--det-origin 1``: the frame of the
devkit's results files, of py-faster-rcnn's written results and of any tool reading the XML
as is), so with the defaults the numbers equal the devkit on raw XML coordinates. With
``--det-origin 0`` they are in the 0-based frame of :class:`incdet.data.Sample` (XML - 1).
IoU is translation invariant; internally the gt is moved to the detections' frame (exact for
the XML's integer coordinates).

Metrics: ``voc07`` = 11-point, ``voc`` = all-point AP (see :mod:`incdet.eval.voc` for the
formulas; ``--iou-rule ge`` is the devkit's ``IoU >= t``, ``gt`` py-faster-rcnn's ``IoU > t``;
``--plus-one`` the devkit's +1 pixel widths, default on); ``coco`` = pycocotools COCOeval
(``--max-dets``; ``--iou``/``--iou-rule``/``--plus-one`` do not apply). The per-class table is
printed; ``--json OUT`` writes ``{"metric", "per_class": {name: AP or null}, "mAP", "npos",
"num_dets", "options", ...}`` (NaN, i.e. a class without gt, is written as null).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
from typing import Any, Dict, Hashable, List, Optional, Sequence

import numpy as np

from incdet.data.cocofile import check_coco_dataset
from incdet.data.safeload import load_json, short_repr
from incdet.data.voc import VOC_CLASSES, VOCDetection, read_classes_file, read_image_set, read_voc_objects
from incdet.errors import ConfigError, DataError
from incdet.eval.voc import XYWH_RULES, voc_evaluate, xywh_to_xyxy

log = logging.getLogger(__name__)

SPLIT_ORDER = ("test", "val", "trainval", "train")


# ----------------------------------------------------------------------------- ground truth
class GroundTruth:
    """Evaluation gt in the detections' frame: ``records[key] = {"boxes", "labels", "difficult"}``."""

    def __init__(self, kind: str, path: str, classes: List[str], records: Dict[Hashable, dict],
                 coco_dataset: Optional[dict] = None, cat_ids: Optional[List[int]] = None,
                 file_stems: Optional[Dict[str, Hashable]] = None):
        self.kind = kind
        self.path = path
        self.classes = classes
        self.records = records
        self.coco_dataset = coco_dataset
        self.cat_ids = cat_ids
        self.file_stems = file_stems or {}
        self.split: Optional[str] = None


def _find_voc_root(path: str) -> str:
    if os.path.isdir(os.path.join(path, "Annotations")):
        return path
    subs = [os.path.join(path, d) for d in sorted(os.listdir(path))
            if os.path.isdir(os.path.join(path, d, "Annotations"))]
    if len(subs) == 1:
        return subs[0]
    if not subs:
        raise DataError(f"{path}: not a VOC folder (no Annotations/ in it or in a sub-folder)")
    raise DataError(f"{path}: several VOC folders inside ({', '.join(os.path.basename(s) for s in subs)}); "
                    "pass one of them as --gt")


def _parse_classes(arg: Optional[str], root: str) -> Optional[List[str]]:
    if arg is None:
        return None
    if os.path.isfile(arg):
        return read_classes_file(arg)
    names = [c.strip() for c in arg.split(",") if c.strip()]
    if not names:
        raise ConfigError(f"--classes {arg!r}: no class names")
    if len(set(names)) != len(names):
        raise ConfigError(f"--classes {arg!r}: duplicate names")
    return names


def load_voc_gt(path: str, split: Optional[str], classes: Optional[List[str]], det_origin: int) -> GroundTruth:
    """VOC-layout gt with boxes in the detections' frame (see the module docstring)."""
    root = _find_voc_root(path)
    main = os.path.join(root, "ImageSets", "Main")
    if split is None:
        for s in SPLIT_ORDER:
            if os.path.isfile(os.path.join(main, f"{s}.txt")):
                split = s
                break
        else:
            raise DataError(f"{main}: none of {', '.join(s + '.txt' for s in SPLIT_ORDER)} exists; pass --split")
    shift = 1.0 if det_origin == 1 else 0.0
    records: Dict[Hashable, dict] = {}
    if os.path.isdir(os.path.join(root, "JPEGImages")):
        ds = VOCDetection(root, split, classes=classes, use_difficult=True, keep_masks=False)
        for i in range(len(ds)):
            s = ds.annotation(i)
            b = s.boxes.numpy().astype(np.float64) + shift  # Sample = XML - 1
            records[s.image_id] = {"boxes": b, "labels": s.labels.numpy().astype(np.int64),
                                   "difficult": s.difficult.numpy().astype(bool)}
        names = list(ds.classes)
    else:
        if classes is None:
            cfile = os.path.join(root, "classes.txt")
            if os.path.isfile(cfile):
                classes = read_classes_file(cfile)
            else:
                classes = list(VOC_CLASSES)
        names = list(classes)
        c2i = {c: k + 1 for k, c in enumerate(names)}
        for img in read_image_set(os.path.join(main, f"{split}.txt")):
            xml = os.path.join(root, "Annotations", f"{img}.xml")
            if not os.path.isfile(xml):
                raise DataError(f"{xml}: annotation file for listed id {img!r} does not exist")
            b, l, d = read_voc_objects(xml, c2i)
            records[img] = {"boxes": b - 1.0 + shift, "labels": l, "difficult": d}
    gt = GroundTruth("voc", root, names, records)
    gt.split = split
    return gt


def _load_json(path: str, what: str) -> Any:
    return load_json(path, what)


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except OverflowError:  # an int beyond the float range
        return False


def _check_bbox(b: Any, where: str) -> List[float]:
    if not isinstance(b, (list, tuple)) or len(b) != 4:
        raise DataError(f"{where}: bbox must be a list of 4 numbers [x, y, w, h], got {short_repr(b)}")
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in b):
        raise DataError(f"{where}: bbox must be a list of 4 numbers [x, y, w, h], got {short_repr(b)}")
    if not all(_finite(x) for x in b):
        raise DataError(f"{where}: bbox has non-numeric or non-finite values {short_repr(b)}")
    v = [float(x) for x in b]
    if v[2] < 0 or v[3] < 0:
        raise DataError(f"{where}: bbox has negative width or height {short_repr(b)}")
    return v


def _flag(a: dict, key: str, where: str) -> bool:
    v = a.get(key, 0)
    if v not in (0, 1) or isinstance(v, float):
        raise DataError(f"{where}: {key} must be 0 or 1, got {short_repr(v)}")
    return bool(v)


def load_coco_gt(path: str, xywh: str, metric: Optional[str] = None) -> GroundTruth:
    """COCO instances json as evaluation gt. The file is checked by
    :func:`incdet.data.cocofile.check_coco_dataset` (duplicate or dangling ids refused; with
    ``metric="coco"`` every annotation needs ``iscrowd`` and ``area``, which COCOeval reads)."""
    data = _load_json(path, "COCO ground-truth")
    check_coco_dataset(data, path, eval_fields=(metric == "coco"), category_names=False)
    cats = data["categories"]
    cat_ids = sorted(c["id"] for c in cats)
    by_id = {c["id"]: c for c in cats}
    classes = [str(by_id[i].get("name", i)) for i in cat_ids]
    if len(set(classes)) != len(classes):
        classes = [f"{n}:{i}" for n, i in zip(classes, cat_ids)]
    c2l = {cid: k + 1 for k, cid in enumerate(cat_ids)}
    recs: Dict[Hashable, dict] = {}
    stems: Dict[str, Hashable] = {}
    for im in data["images"]:
        recs[im["id"]] = {"boxes": [], "labels": [], "difficult": []}
        if isinstance(im.get("file_name"), str):
            stems[os.path.splitext(os.path.basename(im["file_name"]))[0]] = im["id"]
    for k, a in enumerate(data["annotations"]):
        where = f"{path}: annotations[{k}]"
        b = _check_bbox(a["bbox"], where)
        r = recs[a["image_id"]]
        r["boxes"].append(b)
        r["labels"].append(c2l[a["category_id"]])
        r["difficult"].append(bool(a.get("iscrowd", 0)) or _flag(a, "difficult", where) or _flag(a, "ignore", where))
    for r in recs.values():
        r["boxes"] = xywh_to_xyxy(np.asarray(r["boxes"], np.float64).reshape(-1, 4), xywh)
        r["labels"] = np.asarray(r["labels"], np.int64)
        r["difficult"] = np.asarray(r["difficult"], bool)
    return GroundTruth("coco", path, classes, recs, coco_dataset=data, cat_ids=cat_ids, file_stems=stems)


# ----------------------------------------------------------------------------- detections
def _resolve_image(v: Any, gt: GroundTruth, numeric: Dict[int, Hashable]) -> Optional[Hashable]:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer, str)):
        return None
    if v in gt.records:
        return v
    if isinstance(v, (int, np.integer)):
        if str(v) in gt.records:
            return str(v)
        return numeric.get(int(v))
    if isinstance(v, str):
        if v in gt.file_stems:
            return gt.file_stems[v]
        if v.isdigit() and int(v) in gt.records:
            return int(v)
    return None


def _resolve_category(v: Any, gt: GroundTruth, names: Dict[str, int]) -> Optional[int]:
    """1-based label of a detection's category_id."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        return names.get(v)
    if isinstance(v, (int, np.integer)) or (isinstance(v, float) and v.is_integer()):
        v = int(v)
        if gt.kind == "voc":
            return v if 1 <= v <= len(gt.classes) else None
        return gt.cat_ids.index(v) + 1 if v in gt.cat_ids else None  # type: ignore[union-attr]
    return None


def load_detections(path: str, gt: GroundTruth, xywh: str) -> List[dict]:
    """Validated records ``{"image_id" (gt key), "label" (1-based), "score", "box" (xyxy), "bbox"}``."""
    data = _load_json(path, "detections")
    det_images: Dict[Any, str] = {}
    det_cats: Dict[Any, str] = {}
    if isinstance(data, dict):
        if not isinstance(data.get("annotations"), list):
            raise DataError(f"{path}: expected a COCO results list (or an object with an 'annotations' list)")
        for key, table in (("images", det_images), ("categories", det_cats)):
            items = data.get(key) or []
            if not isinstance(items, list):
                raise DataError(f"{path}: {key!r} must be a list, got {type(items).__name__}")
            for j, it in enumerate(items):
                if not isinstance(it, dict) or "id" not in it:
                    continue
                if isinstance(it["id"], bool) or not isinstance(it["id"], (int, str)):
                    raise DataError(f"{path}: {key}[{j}]: id must be an integer or a string, "
                                    f"got {short_repr(it['id'])}")
                if it["id"] in table:
                    raise DataError(f"{path}: {key}[{j}]: id {it['id']!r} listed twice")
                if key == "images" and isinstance(it.get("file_name"), str):
                    table[it["id"]] = os.path.splitext(os.path.basename(it["file_name"]))[0]
                elif key == "categories" and "name" in it:
                    table[it["id"]] = str(it["name"])
        data = data["annotations"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a COCO results list [{{image_id, category_id, bbox, score}}, ...]")
    numeric: Dict[int, Hashable] = {}
    if gt.kind == "voc":
        count: Dict[int, int] = {}
        for k in gt.records:
            if isinstance(k, str) and k.isdigit():
                count[int(k)] = count.get(int(k), 0) + 1
                numeric[int(k)] = k
        numeric = {i: s for i, s in numeric.items() if count[i] == 1}
    names = {n: k + 1 for k, n in enumerate(gt.classes)}
    out = []
    dup: Dict[tuple, int] = {}
    for k, r in enumerate(data):
        where = f"{path}: detection {k}"
        if not isinstance(r, dict):
            raise DataError(f"{where}: must be an object with image_id, category_id, bbox, score")
        missing = [x for x in ("image_id", "category_id", "bbox", "score") if x not in r]
        if missing:
            raise DataError(f"{where}: missing {', '.join(missing)}")
        for key in ("image_id", "category_id"):
            if isinstance(r[key], bool) or not isinstance(r[key], (int, float, str)):
                raise DataError(f"{where}: {key} must be an integer or a string, got {short_repr(r[key])}")
        raw_img = det_images.get(r["image_id"], r["image_id"]) if det_images else r["image_id"]
        img = _resolve_image(raw_img, gt, numeric)
        if img is None:
            raise DataError(f"{where}: unknown image_id {short_repr(r['image_id'])} (not in the ground truth {gt.path})")
        raw_cat = det_cats.get(r["category_id"], r["category_id"]) if det_cats else r["category_id"]
        label = _resolve_category(raw_cat, gt, names)
        if label is None:
            hint = ("a class name or its 1-based index 1..%d" % len(gt.classes)) if gt.kind == "voc" \
                else "a category id or name of the ground truth"
            raise DataError(f"{where}: unknown category_id {short_repr(r['category_id'])} (expected {hint})")
        bbox = _check_bbox(r["bbox"], where)
        s = r["score"]
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not _finite(s):
            raise DataError(f"{where}: score must be a finite number, got {short_repr(s)}")
        key = (img, label, float(s), tuple(bbox))
        dup[key] = dup.get(key, 0) + 1
        out.append({"image_id": img, "label": label, "score": float(s), "bbox": bbox,
                    "box": xywh_to_xyxy(bbox, xywh)[0]})
    n_dup = sum(c - 1 for c in dup.values())
    if n_dup:
        # COCO's tools accept repeated detections (each extra copy is a false positive): warn, count
        log.warning("%s: %d detection(s) repeat an earlier one exactly (same image, category, bbox and score); "
                    "each copy is scored as a separate detection", path, n_dup)
    return out


# ----------------------------------------------------------------------------- evaluation
def evaluate_detections(gt: GroundTruth, dets: List[dict], metric: str, *, iou: float = 0.5,
                        iou_rule: str = "ge", plus_one: bool = True, use_difficult: bool = False,
                        max_dets: Sequence[int] = (1, 10, 100), xywh: str = "x+w") -> dict:
    """Run the chosen metric; returns the JSON-ready result dict."""
    if metric in ("voc", "voc07"):
        res = voc_evaluate(dets, gt.records, gt.classes, iou_thresh=iou, use_07_metric=(metric == "voc07"),
                           iou_rule=iou_rule, plus_one=plus_one, use_difficult=use_difficult)
        out = res.to_dict()
    elif metric == "coco":
        from incdet.eval.coco import coco_evaluate

        if gt.kind == "coco":
            results = [{"image_id": d["image_id"], "category_id": gt.cat_ids[d["label"] - 1],  # type: ignore[index]
                        "bbox": d["bbox"], "score": d["score"]} for d in dets]
            res = coco_evaluate(gt.coco_dataset, results, max_dets=max_dets, gt_name=gt.path)
        else:
            from types import SimpleNamespace

            samples = [SimpleNamespace(image_id=k, boxes=r["boxes"], labels=r["labels"], difficult=r["difficult"],
                                       ignore=None, orig_size=None) for k, r in gt.records.items()]
            results = [{"image_id": d["image_id"], "category_id": d["label"], "bbox": d["bbox"],
                        "score": d["score"]} for d in dets]
            res = coco_evaluate(samples, results, classes=gt.classes, max_dets=max_dets, xywh_rule=xywh)
        out = res.to_dict()
        npos = {c: 0 for c in gt.classes}
        nd = {c: 0 for c in gt.classes}
        for r in gt.records.values():
            for l, d in zip(r["labels"], r["difficult"]):
                npos[gt.classes[l - 1]] += int(not d)
        for d in dets:
            nd[gt.classes[d["label"] - 1]] += 1
        out["npos"], out["num_dets"] = npos, nd
    else:  # argparse restricts the choices
        raise ConfigError(f"unknown metric {metric!r}")
    out["metric"] = metric
    out["options"] = dict(out.get("options", {}), gt=gt.path, xywh=xywh)
    return out


def format_table(result: dict) -> str:
    metric = result["metric"]
    col = "AP@[.5:.95]" if metric == "coco" else ("AP (11-pt)" if metric == "voc07" else "AP")
    names = list(result["per_class"])
    w = max([len("class")] + [len(n) for n in names])
    lines = [f"{'class':<{w}}  {'#gt':>6}  {'#dets':>7}  {col:>11}"]
    for n in names:
        ap = result["per_class"][n]
        aps = "n/a" if ap is None else f"{ap:.6f}"
        lines.append(f"{n:<{w}}  {result['npos'].get(n, 0):>6}  {result['num_dets'].get(n, 0):>7}  {aps:>11}")
    m = result["mAP"]
    lines.append(f"{'mAP':<{w}}  {'':>6}  {'':>7}  {('n/a' if m is None else f'{m:.6f}'):>11}")
    if metric == "coco":
        lines.append("  ".join(f"{k}={'n/a' if v is None else f'{v:.4f}'}" for k, v in result["stats"].items()))
    return "\n".join(lines)


def _cmd_eval_detections(args: argparse.Namespace) -> int:
    if args.metric == "coco":
        if args.iou is not None or args.iou_rule is not None or args.plus_one is not None:
            raise ConfigError("--iou, --iou-rule and --plus-one apply to --metric voc/voc07; "
                              "coco averages IoU 0.50:0.05:0.95 with continuous areas")
    elif args.max_dets is not None:
        raise ConfigError("--max-dets applies to --metric coco only")
    iou = 0.5 if args.iou is None else args.iou
    iou_rule = args.iou_rule or "ge"
    plus_one = True if args.plus_one is None else args.plus_one
    max_dets = tuple(args.max_dets) if args.max_dets else (1, 10, 100)

    if os.path.isdir(args.gt):
        classes = _parse_classes(args.classes, args.gt)
        gt = load_voc_gt(args.gt, args.split, classes, args.det_origin)
    elif os.path.isfile(args.gt):
        if args.split is not None or args.classes is not None:
            raise ConfigError("--split/--classes apply to a VOC ground-truth folder, not a COCO json")
        gt = load_coco_gt(args.gt, args.xywh, metric=args.metric)
    else:
        raise DataError(f"{args.gt}: ground truth does not exist (a VOC folder or a COCO json is expected)")
    dets = load_detections(args.dets, gt, args.xywh)
    result = evaluate_detections(gt, dets, args.metric, iou=iou, iou_rule=iou_rule, plus_one=plus_one,
                                 use_difficult=args.use_difficult, max_dets=max_dets, xywh=args.xywh)
    result["options"].update(dets=args.dets)
    if gt.kind == "voc":
        result["options"].update(split=gt.split, det_origin=args.det_origin)
    print(format_table(result))
    if args.json:
        d = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(d, exist_ok=True)
        from incdet.engine.checkpoint import write_atomic

        write_atomic(args.json, lambda f: json.dump(result, f, indent=2, allow_nan=False))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "eval-detections",
        help="VOC AP / COCO metrics of a COCO-format results file",
        description=__doc__.split("Ground truth")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--gt", required=True, help="VOC folder (VOC20xx with Annotations/, ImageSets/Main/) or COCO json")
    p.add_argument("--dets", required=True, help="COCO results json: [{image_id, category_id, bbox [x,y,w,h], score}]")
    p.add_argument("--metric", choices=("voc07", "voc", "coco"), default="voc",
                   help="voc07: 11-point AP; voc: all-point AP (devkit 2010+); coco: pycocotools (default voc)")
    p.add_argument("--iou", type=float, default=None, help="IoU threshold for voc/voc07 (default 0.5)")
    p.add_argument("--iou-rule", choices=("ge", "gt"), default=None,
                   help="ge: IoU >= t (devkit, default); gt: IoU > t (py-faster-rcnn)")
    p.add_argument("--plus-one", action=argparse.BooleanOptionalAction, default=None,
                   help="+1 pixel widths in areas/intersections (devkit; default on)")
    p.add_argument("--use-difficult", action="store_true",
                   help="count difficult/crowd gt as ordinary objects (default: neither TP nor FP)")
    p.add_argument("--xywh", choices=XYWH_RULES, default="x+w",
                   help="bbox to corners: x2 = x + w (default) or x2 = x + w - 1")
    p.add_argument("--det-origin", type=int, choices=(1, 0), default=1,
                   help="VOC gt only: detections in the XML's 1-based frame (1, default) or 0-based (0)")
    p.add_argument("--split", default=None, help="VOC image set (default: first of test, val, trainval, train)")
    p.add_argument("--classes", default=None,
                   help="VOC class names, comma-separated or a file with one per line "
                        "(default: classes.txt in the root, else the 20 VOC classes)")
    p.add_argument("--max-dets", type=int, nargs="+", default=None,
                   help="coco only: detections per image caps (default 1 10 100; BlitzNet: 1 10 200)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON")
    p.set_defaults(func=_cmd_eval_detections)
