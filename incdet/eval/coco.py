"""COCO detection metrics through pycocotools' ``COCOeval``.

``coco_evaluate(ground_truth, detections, max_dets=(1, 10, 100))`` runs
``evaluate()``/``accumulate()`` and reads the summary numbers from ``eval['precision']`` /
``eval['recall']`` itself instead of calling ``summarize()``: pycocotools' ``summarize``
hard-codes ``maxDets=100`` for the first AP (it returns -1 when 100 is not in the list,
e.g. BlitzNet's ``(1, 10, 200)``). Here every AP uses the *largest* ``max_dets`` and
``AR@m`` is reported for each ``m``; with the default ``(1, 10, 100)`` the numbers equal
``COCOeval.stats``. A metric with nothing to average (pycocotools' -1) is NaN here.

Stats keys: ``AP`` (IoU .50:.05:.95), ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``,
``AR@<m>`` for each ``m`` in ``max_dets``, ``ARs``, ``ARm``, ``ARl``. Per-class AP (and
AP50) are averaged over the same axes for one category (NaN for a category without gt).

Ground truth may be a pycocotools ``COCO`` object, a COCO dataset dict, or an iterable of
:class:`incdet.data.Sample` with its class list. Samples are converted with boxes
``xyxy -> xywh`` (``w = x2 - x1``, or ``x2 - x1 + 1`` with ``xywh_rule="x+w-1"``),
``area = w * h`` (the box area: Samples carry no segmentation area), categories ``1..K`` =
labels, and ``ignore`` *or* ``difficult`` objects as ``iscrowd=1`` (COCOeval's only way to
make a gt box "neither TP nor FN"; note that crowd regions match with IoU = intersection /
detection area).
"""
from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from incdet.data.cocofile import check_coco_dataset
from incdet.data.safeload import short_repr
from incdet.errors import ConfigError, DataError
from incdet.eval.voc import XYWH_RULES, as_numpy, xyxy_to_xywh

__all__ = ["COCOResult", "build_coco_gt", "coco_evaluate", "predictions_to_coco_results"]


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def _coco_from_dataset(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with _quiet():
        coco.createIndex()
    return coco


def build_coco_gt(samples, classes: Sequence[str], xywh_rule: str = "x+w"):
    """A pycocotools ``COCO`` from Samples; returns ``(coco, id_map)``.

    ``id_map`` maps each Sample's ``image_id`` to the integer id used inside ``coco``
    (the id itself when it is an int, else 1, 2, ... in sample order).
    """
    if xywh_rule not in XYWH_RULES:
        raise ConfigError(f"xywh_rule must be one of {XYWH_RULES}, got {xywh_rule!r}")
    samples = list(samples)
    all_int = all(isinstance(s.image_id, (int, np.integer)) and not isinstance(s.image_id, bool) for s in samples)
    id_map: Dict[Hashable, int] = {}
    images, anns = [], []
    nc = len(classes)
    for n, s in enumerate(samples):
        if s.image_id in id_map:
            raise DataError(f"ground truth lists image {s.image_id!r} twice")
        iid = int(s.image_id) if all_int else n + 1
        id_map[s.image_id] = iid
        h, w = (s.orig_size if s.orig_size is not None else (0, 0))
        images.append({"id": iid, "height": int(h), "width": int(w), "file_name": str(s.image_id)})
        boxes = xyxy_to_xywh(s.boxes, xywh_rule)
        labels = as_numpy(s.labels, np.int64).ravel()
        crowd = np.zeros(len(labels), bool)
        for attr in ("ignore", "difficult"):
            v = getattr(s, attr, None)
            if v is not None:
                crowd |= as_numpy(v, bool).ravel()
        for b, l, c in zip(boxes, labels, crowd):
            if not 1 <= l <= nc:
                raise DataError(f"image {s.image_id!r}: gt label {int(l)} outside 1..{nc}")
            anns.append({
                "id": len(anns) + 1, "image_id": iid, "category_id": int(l),
                "bbox": [float(x) for x in b], "area": float(b[2] * b[3]), "iscrowd": int(c),
            })
    cats = [{"id": k + 1, "name": str(c)} for k, c in enumerate(classes)]
    coco = _coco_from_dataset({"images": images, "annotations": anns, "categories": cats})
    return coco, id_map


def predictions_to_coco_results(
    predictions: Mapping[Hashable, Mapping[str, Any]],
    label_to_category: Optional[Sequence[int]] = None,
    id_map: Optional[Mapping[Hashable, int]] = None,
    xywh_rule: str = "x+w",
) -> List[dict]:
    """Model outputs ``image_id -> {"boxes" xyxy, "scores", "labels" 1-based}`` -> COCO results.

    ``label_to_category[k - 1]`` is the category id of label ``k`` (default: the label).
    """
    out = []
    for img, p in predictions.items():
        boxes = xyxy_to_xywh(p["boxes"], xywh_rule)
        scores = as_numpy(p["scores"], np.float64).ravel()
        labels = as_numpy(p["labels"], np.int64).ravel()
        iid = id_map[img] if id_map is not None and img in id_map else img
        for b, s, l in zip(boxes, scores, labels):
            cat = int(label_to_category[l - 1]) if label_to_category is not None else int(l)
            out.append({"image_id": iid, "category_id": cat, "bbox": [float(x) for x in b], "score": float(s)})
    return out


@dataclass
class COCOResult:
    """``stats`` (see module docstring), ``per_class`` AP@[.5:.95], ``per_class_ap50``."""

    stats: Dict[str, float]
    per_class: Dict[str, float]
    per_class_ap50: Dict[str, float]
    max_dets: Tuple[int, ...]
    coco_eval: Any = field(default=None, repr=False)

    @property
    def mAP(self) -> float:
        return self.stats["AP"]

    def to_dict(self) -> dict:
        def f(x):
            return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

        return {
            "per_class": {k: f(v) for k, v in self.per_class.items()},
            "per_class_AP50": {k: f(v) for k, v in self.per_class_ap50.items()},
            "mAP": f(self.stats["AP"]),
            "stats": {k: f(v) for k, v in self.stats.items()},
            "options": {"max_dets": list(self.max_dets)},
        }


def _mean_valid(s: np.ndarray) -> float:
    v = s[s > -1]
    return float(np.mean(v)) if v.size else float("nan")


def _finite(x) -> bool:
    try:
        return not isinstance(x, bool) and isinstance(x, (int, float, np.integer, np.floating)) and math.isfinite(float(x))
    except OverflowError:  # an int beyond the float range
        return False


def _validate_results(results: List[dict], coco_gt) -> None:
    img_ids = set(coco_gt.getImgIds())
    cat_ids = set(coco_gt.getCatIds())
    for k, r in enumerate(results):
        missing = [x for x in ("image_id", "category_id", "bbox", "score") if not isinstance(r, dict) or x not in r]
        if missing:
            raise DataError(f"detection {k}: missing {', '.join(missing)}")
        for key, known in (("image_id", img_ids), ("category_id", cat_ids)):
            v = r[key]
            if not isinstance(v, Hashable) or isinstance(v, bool) or v not in known:
                what = "is not in the ground truth" if key == "image_id" else "is not a ground-truth category"
                raise DataError(f"detection {k}: {key} {short_repr(v)} {what}"
                                + ("" if key == "image_id" else f" (known: {sorted(cat_ids)[:20]}...)"))
        b = r["bbox"]
        if not isinstance(b, (list, tuple)) or len(b) != 4 or not all(_finite(x) for x in b) or b[2] < 0 or b[3] < 0:
            raise DataError(f"detection {k}: bad bbox {short_repr(b)} (need 4 finite numbers, w >= 0, h >= 0)")
        if not _finite(r["score"]):
            raise DataError(f"detection {k}: non-finite score {short_repr(r['score'])}")


def coco_evaluate(
    ground_truth,
    detections,
    *,
    classes: Optional[Sequence[str]] = None,
    max_dets: Sequence[int] = (1, 10, 100),
    label_to_category: Optional[Sequence[int]] = None,
    xywh_rule: str = "x+w",
    iou_type: str = "bbox",
    gt_name: str = "ground truth",
) -> COCOResult:
    """COCO metrics.

    Args:
        ground_truth: pycocotools ``COCO``, a COCO dataset dict, or Samples (then ``classes``
            is required).
        detections: COCO results list (``image_id``, ``category_id``, ``bbox`` xywh,
            ``score``), in the gt's id space (for Samples: the Samples' ``image_id``); or model
            outputs ``image_id -> {"boxes" xyxy, "scores", "labels"}`` with labels mapped to
            categories by ``label_to_category`` (default for a COCO gt: the sorted category
            ids, i.e. label k = k-th smallest id as :class:`incdet.data.coco.COCODetection`;
            for Samples: the label).
        max_dets: increasing detection caps per image (COCOeval keeps the top
            ``max(max_dets)`` per image and category).
        gt_name: names the ground truth (its file) in error messages.

    A COCO dict / ``COCO`` ground truth is checked with
    :func:`incdet.data.cocofile.check_coco_dataset` (``eval_fields=True``): duplicate image,
    category or annotation ids, dangling ``image_id``/``category_id``, a missing or non-0/1
    ``iscrowd`` or a missing ``area`` raise :class:`DataError` instead of a ``KeyError`` deep in
    pycocotools or a silently wrong AP.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    md = tuple(int(m) for m in max_dets)
    if not md or any(m <= 0 for m in md) or list(md) != sorted(set(md)):
        raise ConfigError(f"max_dets must be strictly increasing positive integers, got {list(max_dets)}")

    id_map = None
    if isinstance(ground_truth, COCO):
        if isinstance(ground_truth.dataset, dict) and "images" in ground_truth.dataset:
            check_coco_dataset(ground_truth.dataset, gt_name, eval_fields=True, category_names=False)
        coco_gt = ground_truth
    elif isinstance(ground_truth, dict):
        check_coco_dataset(ground_truth, gt_name, eval_fields=True, category_names=False)
        coco_gt = _coco_from_dataset(ground_truth)
    else:
        if classes is None:
            raise ConfigError("coco_evaluate: `classes` is required when the ground truth is a list of Samples")
        coco_gt, id_map = build_coco_gt(ground_truth, classes, xywh_rule)

    cat_ids = sorted(coco_gt.getCatIds())
    if isinstance(detections, Mapping):
        l2c = label_to_category if label_to_category is not None else (None if id_map is not None else cat_ids)
        results = predictions_to_coco_results(detections, l2c, id_map, xywh_rule)
    else:
        results = []
        for k, r in enumerate(detections):
            if not isinstance(r, Mapping):
                raise DataError(f"detection {k}: must be a dict with image_id, category_id, bbox, score")
            r = dict(r)
            if id_map is not None:
                if not isinstance(r.get("image_id"), Hashable) or r.get("image_id") not in id_map:
                    raise DataError(f"detection {k}: image_id {r.get('image_id')!r} is not in the ground truth")
                r["image_id"] = id_map[r["image_id"]]
            results.append(r)
    _validate_results(results, coco_gt)

    if results:
        with _quiet():
            coco_dt = coco_gt.loadRes(results)
    else:
        coco_dt = _coco_from_dataset({"images": list(coco_gt.dataset.get("images", [])),
                                      "categories": list(coco_gt.dataset.get("categories", [])),
                                      "annotations": []})
    E = COCOeval(coco_gt, coco_dt, iou_type)
    E.params.maxDets = list(md)
    with _quiet():
        E.evaluate()
        E.accumulate()

    P = E.eval["precision"]  # [T, R, K, A, M]
    Rc = E.eval["recall"]  # [T, K, A, M]
    p = E.params
    a = {lbl: i for i, lbl in enumerate(p.areaRngLbl)}

    def t_idx(thr):
        return int(np.flatnonzero(np.isclose(p.iouThrs, thr))[0])

    stats = {
        "AP": _mean_valid(P[:, :, :, a["all"], -1]),
        "AP50": _mean_valid(P[t_idx(0.5), :, :, a["all"], -1]),
        "AP75": _mean_valid(P[t_idx(0.75), :, :, a["all"], -1]),
        "APs": _mean_valid(P[:, :, :, a["small"], -1]),
        "APm": _mean_valid(P[:, :, :, a["medium"], -1]),
        "APl": _mean_valid(P[:, :, :, a["large"], -1]),
    }
    for i, m in enumerate(md):
        stats[f"AR@{m}"] = _mean_valid(Rc[:, :, a["all"], i])
    stats["ARs"] = _mean_valid(Rc[:, :, a["small"], -1])
    stats["ARm"] = _mean_valid(Rc[:, :, a["medium"], -1])
    stats["ARl"] = _mean_valid(Rc[:, :, a["large"], -1])

    names = {c["id"]: c.get("name", str(c["id"])) for c in coco_gt.loadCats(p.catIds)}
    per_class, per_class50 = {}, {}
    for k, cid in enumerate(p.catIds):
        per_class[names[cid]] = _mean_valid(P[:, :, k, a["all"], -1])
        per_class50[names[cid]] = _mean_valid(P[t_idx(0.5), :, k, a["all"], -1])
    return COCOResult(stats=stats, per_class=per_class, per_class_ap50=per_class50, max_dets=md, coco_eval=E)
