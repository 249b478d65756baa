"""PASCAL VOC average precision (pure numpy), with the devkit's conventions as options.

Reference implementations this module reproduces:

* the VOC devkit (``VOCevaldet.m`` / ``VOCap.m``, 2010+ all-point AP; the VOC2007 11-point AP),
* py-faster-rcnn ``lib/datasets/voc_eval.py`` (``voc_ap`` / ``voc_eval``),
* rafaelpadilla/review_object_detection_metrics ``pascal_voc_evaluator.py`` (every-point /
  11-point interpolation, ``IoU >= t``, ``+1`` pixel areas, COCO xywh -> corners with
  ``x2 = x + w``).

Conventions (per class)
-----------------------
**Order.** Detections are sorted by score, descending, with a *stable* sort: detections of
equal score keep their input order (as the devkit's MATLAB ``sort`` and Python's ``sorted``;
py-faster-rcnn's ``np.argsort`` is not stable, so ties can differ there).

**IoU** of a detection ``d`` and a ground-truth box ``g`` (xyxy, floats), with ``e = 1`` when
``plus_one`` (devkit: a box ``[x1, x2]`` covers ``x2 - x1 + 1`` pixels) else ``e = 0``
(continuous)::

    iw    = max(min(d.x2, g.x2) - max(d.x1, g.x1) + e, 0)
    ih    = max(min(d.y2, g.y2) - max(d.y1, g.y1) + e, 0)
    inter = iw * ih
    union = (d.x2 - d.x1 + e) * (d.y2 - d.y1 + e) + (g.x2 - g.x1 + e) * (g.y2 - g.y1 + e) - inter
    iou   = inter / union            (0 where union <= 0)

This is py-faster-rcnn's expression, evaluated in float64 in the same order (so ties at the
threshold break identically). The devkit only considers pairs with ``iw > 0 and ih > 0``;
rafaelpadilla's ``have_intersection`` requires ``max(x1) <= min(x2)`` (``iw >= 1`` with
``+1``): the three agree except for sub-pixel gaps between degenerate (< 1 pixel) boxes.

**Matching** (greedy, in score order, as ``VOCevaldet.m``): a detection is compared with every
ground-truth box *of its class in its image*; ``j = argmax IoU`` (first one on ties). If
``IoU_j >= t`` (``iou_rule="ge"``, devkit and rafaelpadilla) or ``IoU_j > t``
(``iou_rule="gt"``, py-faster-rcnn):

* ``g_j`` difficult -> the detection is neither TP nor FP ("don't care"),
* ``g_j`` not yet matched -> TP, ``g_j`` becomes matched,
* ``g_j`` already matched -> FP (duplicate);

otherwise (no gt in the image, or IoU below the threshold) -> FP. A detection is *not*
re-assigned to its second-best gt when the best one is taken.

``npos`` = number of non-difficult gt boxes of the class. ``recall = cumsum(tp) / npos``,
``precision = cumsum(tp) / (cumsum(tp) + cumsum(fp))`` (don't-care detections add a point with
unchanged tp/fp, exactly as the devkit).

**AP.** All-point (devkit 2010+, ``VOCap.m``): ``mrec = [0, rec, 1]``, ``mpre = [0, prec, 0]``,
``mpre[i] = max(mpre[i:])``, ``AP = sum over i where mrec changes of
(mrec[i+1] - mrec[i]) * mpre[i+1]``. 11-point (VOC2007): ``AP = sum_t p(t) / 11`` for
``t in np.arange(0., 1.1, 0.1)`` with ``p(t) = max(prec[rec >= t])`` (0 if empty). The
thresholds are numpy's (``0.30000000000000004``, ``0.6000000000000001``,
``0.7000000000000001``), identical to py-faster-rcnn and rafaelpadilla (``np.linspace(0, 1,
11)``), so a recall of exactly 3/10 does not reach the 0.3 point there either; MATLAB's
``0:0.1:1`` rounds 0.6 and 0.7 differently.

**Classes without ground truth** (``npos == 0``): AP is NaN (recall is undefined; py-faster-rcnn
would divide by zero) and the class is left out of the mAP, which is the mean AP over the
classes with ``npos > 0`` (rafaelpadilla: mean over classes present in the ground truth).
A class with gt but no detections has AP 0 and counts.

``use_difficult=True`` treats difficult boxes as ordinary ones (py-faster-rcnn's ``use_diff``;
rafaelpadilla has no difficult flag).

**Crowd regions.** A ground-truth box flagged ``ignore`` (COCO ``iscrowd``, the Sample's
``ignore`` field) is a "don't care" box like a difficult one, whatever ``use_difficult`` says:
it is not counted in ``npos`` and a detection whose best match it is counts neither as TP nor
as FP. (Unlike COCOeval, a crowd box is matched with the ordinary IoU and can absorb only the
detections that pick it as their best match.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Hashable, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

from incdet.errors import ConfigError, DataError

IOU_RULES = ("ge", "gt")
XYWH_RULES = ("x+w", "x+w-1")

__all__ = [
    "IOU_RULES",
    "XYWH_RULES",
    "as_numpy",
    "ClassAP",
    "VOCResult",
    "box_iou",
    "voc_ap",
    "evaluate_class",
    "voc_evaluate",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]


def as_numpy(x: Any, dtype=None) -> np.ndarray:
    """Array from a numpy array, list or torch tensor (without importing torch)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def xywh_to_xyxy(boxes: Any, rule: str = "x+w") -> np.ndarray:
    """COCO ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]`` (float64).

    ``rule="x+w"``: ``x2 = x + w``, ``y2 = y + h`` (pycocotools, rafaelpadilla, torchvision).
    ``rule="x+w-1"``: ``x2 = x + w - 1`` (Detectron's inclusive-pixel convention, the inverse
    of ``w = x2 - x1 + 1``).
    """
    if rule not in XYWH_RULES:
        raise ConfigError(f"xywh rule must be one of {XYWH_RULES}, got {rule!r}")
    b = as_numpy(boxes, np.float64).reshape(-1, 4)
    out = b.copy()
    out[:, 2] = b[:, 0] + b[:, 2]
    out[:, 3] = b[:, 1] + b[:, 3]
    if rule == "x+w-1":
        out[:, 2] -= 1.0
        out[:, 3] -= 1.0
    return out


def xyxy_to_xywh(boxes: Any, rule: str = "x+w") -> np.ndarray:
    """Inverse of :func:`xywh_to_xyxy` for the same ``rule`` (``w = x2 - x1 [+ 1]``)."""
    if rule not in XYWH_RULES:
        raise ConfigError(f"xywh rule must be one of {XYWH_RULES}, got {rule!r}")
    b = as_numpy(boxes, np.float64).reshape(-1, 4)
    out = b.copy()
    out[:, 2] = b[:, 2] - b[:, 0]
    out[:, 3] = b[:, 3] - b[:, 1]
    if rule == "x+w-1":
        out[:, 2] += 1.0
        out[:, 3] += 1.0
    return out


def box_iou(dets: Any, gts: Any, plus_one: bool = True) -> np.ndarray:
    """IoU matrix ``[N, M]`` between xyxy boxes, with the formula of the module docstring."""
    d = as_numpy(dets, np.float64).reshape(-1, 4)
    g = as_numpy(gts, np.float64).reshape(-1, 4)
    e = 1.0 if plus_one else 0.0
    ixmin = np.maximum(g[None, :, 0], d[:, None, 0])
    iymin = np.maximum(g[None, :, 1], d[:, None, 1])
    ixmax = np.minimum(g[None, :, 2], d[:, None, 2])
    iymax = np.minimum(g[None, :, 3], d[:, None, 3])
    iw = np.maximum(ixmax - ixmin + e, 0.0)
    ih = np.maximum(iymax - iymin + e, 0.0)
    inters = iw * ih
    area_d = (d[:, 2] - d[:, 0] + e) * (d[:, 3] - d[:, 1] + e)
    area_g = (g[:, 2] - g[:, 0] + e) * (g[:, 3] - g[:, 1] + e)
    uni = area_d[:, None] + area_g[None, :] - inters
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(uni > 0, inters / np.where(uni > 0, uni, 1.0), 0.0)
    return iou


def voc_ap(rec: Any, prec: Any, use_07_metric: bool = False) -> float:
    """AP from recall/precision arrays (in detection order), all-point or 11-point.

    Same arithmetic as py-faster-rcnn's ``voc_ap`` (see the module docstring).
    """
    rec = as_numpy(rec, np.float64).ravel()
    prec = as_numpy(prec, np.float64).ravel()
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            sel = rec >= t
            p = float(np.max(prec[sel])) if np.any(sel) else 0.0
            ap = ap + p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


@dataclass
class ClassAP:
    """Result for one class.

    ``precision``/``recall``/``tp``/``fp``/``scores`` follow the sorted detections (length =
    number of detections of the class); ``tp``/``fp`` are 0/1 per detection (both 0 for a
    don't-care match with a difficult box). ``ap`` and ``recall`` are NaN when ``npos == 0``.
    """

    ap: float
    npos: int
    precision: np.ndarray
    recall: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    scores: np.ndarray
    num_dets: int


def _check_options(iou_thresh: float, iou_rule: str) -> None:
    if iou_rule not in IOU_RULES:
        raise ConfigError(f"iou_rule must be one of {IOU_RULES} ('ge': IoU >= t as the devkit, 'gt': IoU > t "
                          f"as py-faster-rcnn), got {iou_rule!r}")
    try:
        t = float(iou_thresh)
    except (TypeError, ValueError):
        t = float("nan")
    if not 0.0 < t <= 1.0:
        raise ConfigError(f"iou_thresh must be in (0, 1], got {iou_thresh!r}")


def evaluate_class(
    det_image_ids: Sequence[Hashable],
    det_scores: Any,
    det_boxes: Any,
    gt: Mapping[Hashable, Tuple[Any, Any]],
    *,
    iou_thresh: float = 0.5,
    use_07_metric: bool = False,
    iou_rule: str = "ge",
    plus_one: bool = True,
    use_difficult: bool = False,
) -> ClassAP:
    """AP of one class.

    Args:
        det_image_ids: image id of each detection (``K``).
        det_scores: ``[K]`` confidences (finite).
        det_boxes: ``[K, 4]`` xyxy, in the same coordinate frame as the gt.
        gt: ``image id -> (boxes [M, 4] xyxy, difficult [M] bool)`` of *this class*, for every
            evaluated image (images without objects of the class may be absent or empty).
            A detection whose image is not in ``gt`` is a false positive (use
            :func:`voc_evaluate` to have unknown images rejected).
        iou_thresh, use_07_metric, iou_rule, plus_one, use_difficult: see the module docstring.
    """
    _check_options(iou_thresh, iou_rule)
    scores = as_numpy(det_scores, np.float64).ravel()
    boxes = as_numpy(det_boxes, np.float64).reshape(-1, 4)
    ids = list(det_image_ids)
    nd = len(ids)
    if scores.shape[0] != nd or boxes.shape[0] != nd:
        raise ValueError(f"{nd} image ids, {scores.shape[0]} scores and {boxes.shape[0]} boxes")
    if nd and not np.all(np.isfinite(scores)):
        raise DataError("detection scores must be finite (found NaN or inf)")

    gtb: Dict[Hashable, np.ndarray] = {}
    gtd: Dict[Hashable, np.ndarray] = {}
    npos = 0
    for k, (b, dif) in gt.items():
        b = as_numpy(b, np.float64).reshape(-1, 4)
        dif = as_numpy(dif, bool).ravel() if dif is not None else np.zeros(len(b), bool)
        if dif.shape[0] != b.shape[0]:
            raise ValueError(f"image {k!r}: {b.shape[0]} gt boxes but {dif.shape[0]} difficult flags")
        if use_difficult:
            dif = np.zeros(len(b), bool)
        gtb[k], gtd[k] = b, dif
        npos += int((~dif).sum())

    order = np.argsort(-scores, kind="stable")
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    # group the sorted detections by image; matching in one image does not depend on others
    by_image: Dict[Hashable, List[int]] = {}
    for rank, i in enumerate(order):
        by_image.setdefault(ids[i], []).append(rank)
    sorted_boxes = boxes[order]
    ge = iou_rule == "ge"
    for img, ranks in by_image.items():
        g = gtb.get(img)
        if g is None or g.shape[0] == 0:
            fp[ranks] = 1.0
            continue
        dif = gtd[img]
        taken = np.zeros(g.shape[0], dtype=bool)
        ious = box_iou(sorted_boxes[ranks], g, plus_one=plus_one)
        jmax_all = np.argmax(ious, axis=1)
        for row, rank in enumerate(ranks):
            j = int(jmax_all[row])
            ov = ious[row, j]
            if (ov >= iou_thresh) if ge else (ov > iou_thresh):
                if dif[j]:
                    continue
                if not taken[j]:
                    tp[rank] = 1.0
                    taken[j] = True
                else:
                    fp[rank] = 1.0
            else:
                fp[rank] = 1.0

    ctp = np.cumsum(tp)
    cfp = np.cumsum(fp)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = ctp / (ctp + cfp)
    prec = np.where(ctp + cfp > 0, prec, 0.0)  # only before the first counted detection
    if npos > 0:
        rec = ctp / float(npos)
        ap = voc_ap(rec, prec, use_07_metric)
    else:
        rec = np.full(nd, np.nan)
        ap = float("nan")
    return ClassAP(ap=ap, npos=npos, precision=prec, recall=rec, tp=tp, fp=fp,
                   scores=scores[order], num_dets=nd)


@dataclass
class VOCResult:
    """Per-class results (``per_class[name]``), ``ap`` (name -> AP, NaN without gt) and ``mAP``."""

    per_class: Dict[str, ClassAP]
    ap: Dict[str, float]
    mAP: float
    options: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready summary (NaN -> None)."""

        def f(x):
            return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

        return {
            "per_class": {k: f(v) for k, v in self.ap.items()},
            "npos": {k: int(v.npos) for k, v in self.per_class.items()},
            "num_dets": {k: int(v.num_dets) for k, v in self.per_class.items()},
            "mAP": f(self.mAP),
            "options": dict(self.options),
        }


def _flags(v, n: int) -> np.ndarray:
    return np.zeros(n, bool) if v is None else as_numpy(v, bool).ravel()


def _gt_items(ground_truth) -> Iterable[Tuple[Hashable, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(image_id, boxes, labels, difficult, ignore) from Samples or a mapping of dicts."""
    if isinstance(ground_truth, Mapping):
        items = ground_truth.items()
    else:
        items = ((s.image_id, s) for s in ground_truth)
    for img, g in items:
        if isinstance(g, Mapping):
            b, l, d, ig = g["boxes"], g["labels"], g.get("difficult"), g.get("ignore")
        else:
            b, l, d, ig = g.boxes, g.labels, getattr(g, "difficult", None), getattr(g, "ignore", None)
        b = as_numpy(b, np.float64).reshape(-1, 4)
        yield img, b, as_numpy(l, np.int64).ravel(), _flags(d, len(b)), _flags(ig, len(b))


def _det_records(detections) -> Tuple[List[Hashable], np.ndarray, np.ndarray, np.ndarray]:
    """Flatten detections to (image ids, labels, scores, boxes) in input order."""
    ids: List[Hashable] = []
    labels, scores, boxes = [], [], []
    if isinstance(detections, Mapping):
        for img, p in detections.items():
            b = as_numpy(p["boxes"], np.float64).reshape(-1, 4)
            s = as_numpy(p["scores"], np.float64).ravel()
            l = as_numpy(p["labels"], np.int64).ravel()
            if not (len(b) == len(s) == len(l)):
                raise ValueError(f"image {img!r}: {len(b)} boxes, {len(s)} scores, {len(l)} labels")
            ids.extend([img] * len(b))
            boxes.append(b)
            scores.append(s)
            labels.append(l)
    else:
        for r in detections:
            ids.append(r["image_id"])
            labels.append(np.asarray([int(r["label"])], np.int64))
            scores.append(np.asarray([float(r["score"])], np.float64))
            boxes.append(as_numpy(r["box"], np.float64).reshape(1, 4))
    if not ids:
        return [], np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4))
    return ids, np.concatenate(labels), np.concatenate(scores), np.concatenate(boxes)


def voc_evaluate(
    detections,
    ground_truth,
    classes: Sequence[str],
    *,
    iou_thresh: float = 0.5,
    use_07_metric: bool = False,
    iou_rule: str = "ge",
    plus_one: bool = True,
    use_difficult: bool = False,
    unknown_image: str = "error",
) -> VOCResult:
    """VOC AP per class and mAP.

    Args:
        detections: either a mapping ``image_id -> {"boxes": [K, 4] xyxy, "scores": [K],
            "labels": [K] 1-based}`` (model outputs; arrays or tensors), or a sequence of
            records ``{"image_id", "label", "score", "box"}`` (xyxy). Ties in score keep this
            input order (mapping: image order, then the order within the image).
        ground_truth: an iterable of :class:`incdet.data.Sample` (``image_id``, ``boxes``,
            ``labels``, ``difficult``, ``ignore``), or a mapping ``image_id -> {"boxes",
            "labels", "difficult", "ignore"}`` (flags optional). Every evaluated image must
            appear (possibly with no objects). ``ignore`` (crowd) boxes are always "don't care".
        classes: class names; label ``k`` is ``classes[k - 1]``.
        unknown_image: ``"error"`` (a detection on an image absent from the ground truth
            raises :class:`DataError`) or ``"fp"`` (counted as a false positive).

    Boxes of detections and gt must be in the same coordinate frame; see the module
    docstring for the matching rules and the options.
    """
    _check_options(iou_thresh, iou_rule)
    if unknown_image not in ("error", "fp"):
        raise ConfigError(f"unknown_image must be 'error' or 'fp', got {unknown_image!r}")
    classes = list(classes)
    nc = len(classes)
    gt_per_class: List[Dict[Hashable, Tuple[np.ndarray, np.ndarray]]] = [dict() for _ in range(nc)]
    images = set()
    for img, b, l, d, ig in _gt_items(ground_truth):
        if img in images:
            raise DataError(f"ground truth lists image {img!r} twice")
        images.add(img)
        if len(l) != len(b) or len(d) != len(b) or len(ig) != len(b):
            raise DataError(f"image {img!r}: {len(b)} gt boxes, {len(l)} labels, {len(d)} difficult flags, "
                            f"{len(ig)} ignore flags")
        bad = l[(l < 1) | (l > nc)]
        if bad.size:
            raise DataError(f"image {img!r}: gt labels {sorted(set(bad.tolist()))} outside 1..{nc}")
        # "don't care" boxes: difficult ones (unless use_difficult) and crowd (ignore) ones always
        dont_care = (d & (not use_difficult)) | ig
        for c in np.unique(l):
            m = l == c
            gt_per_class[c - 1][img] = (b[m], dont_care[m])

    ids, labels, scores, boxes = _det_records(detections)
    if len(ids):
        if not np.all(np.isfinite(scores)):
            k = int(np.flatnonzero(~np.isfinite(scores))[0])
            raise DataError(f"detection {k} (image {ids[k]!r}) has a non-finite score {scores[k]}")
        if not np.all(np.isfinite(boxes)):
            k = int(np.flatnonzero(~np.all(np.isfinite(boxes), axis=1))[0])
            raise DataError(f"detection {k} (image {ids[k]!r}) has a non-finite box {boxes[k].tolist()}")
        bad = np.flatnonzero((labels < 1) | (labels > nc))
        if bad.size:
            k = int(bad[0])
            raise DataError(f"detection {k} (image {ids[k]!r}) has label {labels[k]} outside 1..{nc}")
        if unknown_image == "error":
            unknown = [i for i in dict.fromkeys(ids) if i not in images]
            if unknown:
                raise DataError(f"detections on {len(unknown)} image(s) not in the ground truth, e.g. {unknown[:5]}")

    per_class: Dict[str, ClassAP] = {}
    ap: Dict[str, float] = {}
    for c in range(nc):
        sel = np.flatnonzero(labels == c + 1)
        r = evaluate_class(
            [ids[i] for i in sel], scores[sel], boxes[sel], gt_per_class[c],
            iou_thresh=iou_thresh, use_07_metric=use_07_metric, iou_rule=iou_rule,
            plus_one=plus_one, use_difficult=False,  # already folded into the don't-care flags
        )
        per_class[classes[c]] = r
        ap[classes[c]] = r.ap
    valid = [v for v in ap.values() if not math.isnan(v)]
    mAP = float(np.mean(valid)) if valid else float("nan")
    opts = dict(iou_thresh=float(iou_thresh), use_07_metric=bool(use_07_metric), iou_rule=iou_rule,
                plus_one=bool(plus_one), use_difficult=bool(use_difficult))
    return VOCResult(per_class=per_class, ap=ap, mAP=mAP, options=opts)
