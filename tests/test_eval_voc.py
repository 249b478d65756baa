"""VOC AP: hand-worked cases and cross-checks against straightforward reference re-implementations."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from incdet.errors import ConfigError, DataError
from incdet.eval.voc import box_iou, evaluate_class, voc_ap, voc_evaluate, xywh_to_xyxy, xyxy_to_xywh

# Ground truth of the main hand-worked case (one class, one image, +1 pixel areas: 10x10 = 100):
G1, G2, G3 = [0, 0, 9, 9], [20, 0, 29, 9], [40, 0, 49, 9]
G4_DIFF = [60, 0, 69, 9]


def _gt(difficult_g4=True):
    return {"img": {"boxes": np.array([G1, G2, G3, G4_DIFF], float), "labels": np.array([1, 1, 1, 1]),
                    "difficult": np.array([False, False, False, difficult_g4])}}


def _dets():
    # D5 (.95) hits the difficult G4 -> neither TP nor FP
    # D1 (.9) = G1 -> TP; D2 (.8) far away -> FP; D3 (.7) = G2 -> TP; D4 (.6) = G1 again -> FP (duplicate)
    return [
        {"image_id": "img", "label": 1, "score": 0.8, "box": [100, 100, 109, 109]},
        {"image_id": "img", "label": 1, "score": 0.9, "box": G1},
        {"image_id": "img", "label": 1, "score": 0.6, "box": G1},
        {"image_id": "img", "label": 1, "score": 0.7, "box": G2},
        {"image_id": "img", "label": 1, "score": 0.95, "box": G4_DIFF},
    ]


def test_all_point_by_hand():
    # Sorted: D5 (don't care), D1 TP, D2 FP, D3 TP, D4 FP; npos = 3 (G4 is difficult).
    # cumulative tp = [0,1,1,2,2], fp = [0,0,1,1,2]
    # rec  = [0, 1/3, 1/3, 2/3, 2/3], prec = [0 (0/0 -> 0), 1, 1/2, 2/3, 1/2]
    # mrec = [0, 0, 1/3, 1/3, 2/3, 2/3, 1]; envelope mpre = [1, 1, 1, 2/3, 2/3, 1/2, 0]
    # AP = (1/3 - 0) * 1 + (2/3 - 1/3) * 2/3 + (1 - 2/3) * 0 = 1/3 + 2/9 = 5/9
    r = voc_evaluate(_dets(), _gt(), ["a"])
    c = r.per_class["a"]
    assert c.npos == 3
    np.testing.assert_array_equal(c.tp, [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(c.fp, [0, 0, 1, 0, 1])
    np.testing.assert_allclose(c.recall, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(c.precision, [0, 1, 1 / 2, 2 / 3, 1 / 2])
    assert r.ap["a"] == pytest.approx(5 / 9, abs=1e-12)
    assert r.mAP == pytest.approx(5 / 9, abs=1e-12)


def test_eleven_point_by_hand():
    # Same curve. t = 0, .1, .2, .3: some rec (1/3) >= t -> max prec = 1   (4 points)
    #             t = .4, .5, .6: rec 2/3 >= t -> max prec over those = 2/3 (3 points)
    #             t = .7 ... 1.0: no recall reaches t -> 0                   (4 points)
    # AP = (4 * 1 + 3 * 2/3) / 11 = 6/11
    r = voc_evaluate(_dets(), _gt(), ["a"], use_07_metric=True)
    assert r.ap["a"] == pytest.approx(6 / 11, abs=1e-12)


def test_difficult_counts_when_use_difficult():
    # G4 becomes a positive: npos = 4; order D5 TP, D1 TP, D2 FP, D3 TP, D4 FP
    # rec = [1/4, 2/4, 2/4, 3/4, 3/4], prec = [1, 1, 2/3, 3/4, 3/5]
    # envelope at the recall steps: 1 (to 1/4), 1 (to 2/4), 3/4 (to 3/4) -> AP = 1/4 + 1/4 + 3/16 = 11/16
    r = voc_evaluate(_dets(), _gt(), ["a"], use_difficult=True)
    assert r.per_class["a"].npos == 4
    assert r.ap["a"] == pytest.approx(11 / 16, abs=1e-12)
    # the same gt not flagged difficult gives the same
    r2 = voc_evaluate(_dets(), _gt(difficult_g4=False), ["a"])
    assert r2.ap["a"] == pytest.approx(11 / 16, abs=1e-12)


def test_difficult_only_class_is_nan_and_excluded_from_map():
    gt = {"i": {"boxes": np.array([G1, G2], float), "labels": np.array([1, 2]), "difficult": np.array([False, True])}}
    dets = [{"image_id": "i", "label": 1, "score": 0.5, "box": G1}, {"image_id": "i", "label": 2, "score": 0.5, "box": G2},
            {"image_id": "i", "label": 3, "score": 0.5, "box": G3}]
    r = voc_evaluate(dets, gt, ["a", "b", "c"])
    assert r.ap["a"] == 1.0
    assert math.isnan(r.ap["b"]) and math.isnan(r.ap["c"])  # no non-difficult gt
    assert r.mAP == 1.0
    d = r.to_dict()
    assert d["per_class"]["b"] is None and d["mAP"] == 1.0


def test_class_with_gt_but_no_detection_counts_zero():
    gt = {"i": {"boxes": np.array([G1, G2], float), "labels": np.array([1, 2]), "difficult": np.array([False, False])}}
    r = voc_evaluate([{"image_id": "i", "label": 1, "score": 1.0, "box": G1}], gt, ["a", "b"])
    assert r.ap == {"a": 1.0, "b": 0.0}
    assert r.mAP == 0.5


def test_greedy_match_is_not_reassigned():
    # G1 = [0,0,9,9], G2 = [5,0,14,9]. A = G1 (.9) -> TP on G1.
    # B = [2,0,11,9] (.8): IoU(B,G1) = 8*10 / (100+100-80) = 0.667 (max), IoU(B,G2) = 7*10/(200-70) = 0.538.
    # Its best gt G1 is taken -> FP, although G2 alone would match. rec = [.5,.5], prec = [1,.5] -> AP = 0.5
    gt = {"i": (np.array([G1, [5, 0, 14, 9]], float), np.array([False, False]))}
    c = evaluate_class(["i", "i"], [0.9, 0.8], [G1, [2, 0, 11, 9]], gt)
    np.testing.assert_array_equal(c.tp, [1, 0])
    assert c.ap == pytest.approx(0.5)


def test_iou_rule_at_exactly_half():
    # det [0,0,9,4] inside gt [0,0,9,9]: +1 areas 10*5 = 50 and 100, inter 50 -> IoU = 50/100 = 0.5 exactly
    assert box_iou([[0, 0, 9, 4]], [G1])[0, 0] == 0.5
    gt = {"i": (np.array([G1], float), np.array([False]))}
    assert evaluate_class(["i"], [1.0], [[0, 0, 9, 4]], gt, iou_rule="ge").ap == 1.0  # devkit: ov >= 0.5
    assert evaluate_class(["i"], [1.0], [[0, 0, 9, 4]], gt, iou_rule="gt").ap == 0.0  # py-faster-rcnn: ov > 0.5


def test_plus_one_effect():
    # continuous areas: 9*9 = 81 and 9*4 = 36, inter 36 -> IoU = 36/81 = 0.444 < 0.5
    assert box_iou([[0, 0, 9, 4]], [G1], plus_one=False)[0, 0] == pytest.approx(36 / 81)
    gt = {"i": (np.array([G1], float), np.array([False]))}
    assert evaluate_class(["i"], [1.0], [[0, 0, 9, 4]], gt, plus_one=True).ap == 1.0
    assert evaluate_class(["i"], [1.0], [[0, 0, 9, 4]], gt, plus_one=False).ap == 0.0
    # touching boxes: +1 makes a shared border column overlap (1 px); continuous: 0
    assert box_iou([[9, 0, 18, 9]], [G1])[0, 0] == pytest.approx(10 / 190)
    assert box_iou([[9, 0, 18, 9]], [G1], plus_one=False)[0, 0] == 0.0


def test_ties_keep_input_order():
    # two detections with the same score: the first listed is ranked first (stable sort)
    gt = {"i": (np.array([G1], float), np.array([False]))}
    far = [100, 100, 110, 110]
    c1 = evaluate_class(["i", "i"], [0.5, 0.5], [G1, far], gt)   # TP then FP -> AP 1
    c2 = evaluate_class(["i", "i"], [0.5, 0.5], [far, G1], gt)   # FP then TP -> prec 1/2 at rec 1 -> AP 0.5
    assert c1.ap == 1.0 and c2.ap == 0.5


def test_detections_mapping_and_samples_input():
    import torch
    from incdet.data.sample import Sample

    s = Sample(image=None, boxes=torch.tensor([G1, G2], dtype=torch.float32), labels=torch.tensor([1, 2]),
               difficult=torch.tensor([False, False]), image_id="x")
    preds = {"x": {"boxes": torch.tensor([G1, G2], dtype=torch.float32), "scores": torch.tensor([0.9, 0.8]),
                   "labels": torch.tensor([1, 1])}}
    r = voc_evaluate(preds, [s], ["a", "b"])
    # class a: TP (.9) then FP (.8, G2 belongs to class b) -> AP 1; class b: no detection -> 0
    assert r.ap == {"a": 1.0, "b": 0.0}


def test_bad_inputs():
    gt = _gt()
    with pytest.raises(DataError, match="not in the ground truth"):
        voc_evaluate([{"image_id": "zzz", "label": 1, "score": 1.0, "box": G1}], gt, ["a"])
    with pytest.raises(DataError, match="non-finite score"):
        voc_evaluate([{"image_id": "img", "label": 1, "score": float("nan"), "box": G1}], gt, ["a"])
    with pytest.raises(DataError, match="label 2 outside"):
        voc_evaluate([{"image_id": "img", "label": 2, "score": 1.0, "box": G1}], gt, ["a"])
    with pytest.raises(ConfigError):
        voc_evaluate([], gt, ["a"], iou_rule="geq")
    with pytest.raises(ConfigError):
        voc_evaluate([], gt, ["a"], iou_thresh=0)
    # unknown images as false positives when asked
    r = voc_evaluate([{"image_id": "zzz", "label": 1, "score": 1.0, "box": G1}], gt, ["a"], unknown_image="fp")
    assert r.ap["a"] == 0.0


def test_xywh_conversions():
    b = [[10, 20, 5, 6]]
    np.testing.assert_array_equal(xywh_to_xyxy(b), [[10, 20, 15, 26]])
    np.testing.assert_array_equal(xywh_to_xyxy(b, "x+w-1"), [[10, 20, 14, 25]])
    for rule in ("x+w", "x+w-1"):
        np.testing.assert_array_equal(xyxy_to_xywh(xywh_to_xyxy(b, rule), rule), b)


def test_voc_ap_curves():
    # perfect detector -> 1; precision 1/2 flat -> 1/2 (all-point), 11-point also 1/2
    assert voc_ap([0.5, 1.0], [1.0, 1.0]) == 1.0
    assert voc_ap([0.5, 1.0], [0.5, 0.5]) == 0.5
    assert voc_ap([0.5, 1.0], [0.5, 0.5], use_07_metric=True) == pytest.approx(0.5)
    # recall exactly 0.3 does not reach numpy's 0.30000000000000004 point (as py-faster-rcnn)
    assert voc_ap([0.3], [1.0], use_07_metric=True) == pytest.approx(3 / 11)


# --------------------------------------------------------------------------- reference re-implementations
def _pyfrcnn_voc_eval(class_recs, image_ids, confidence, BB, ovthresh, use_07_metric):
    """py-faster-rcnn lib/datasets/voc_eval.py, literally (loops), for one class; the only change is a
    stable argsort (the original's default quicksort orders tied scores arbitrarily)."""
    import copy

    class_recs = copy.deepcopy(class_recs)
    npos = sum(int((~r["difficult"]).sum()) for r in class_recs.values())
    sorted_ind = np.argsort(-confidence, kind="stable")
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def _padilla_ap(gts, dets, iou_threshold, eleven):
    """rafaelpadilla/review_object_detection_metrics pascal_voc_evaluator for one class, re-written:
    gts: list of (image, (x, y, w, h)); dets: list of (image, score, (x, y, w, h)); corners x2 = x + w,
    areas and intersections with +1, IoU >= t, stable sort (Python sorted, reverse=True)."""

    def corners(b):
        x, y, w, h = b
        return (float(x), float(y), float(x + w), float(y + h))

    def iou(a, b):
        if a[0] > b[2] or b[0] > a[2] or a[3] < b[1] or a[1] > b[3]:
            return 0
        inter = (min(a[2], b[2]) - max(a[0], b[0]) + 1) * (min(a[3], b[3]) - max(a[1], b[1]) + 1)
        area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
        area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
        return inter / float(area_a + area_b - inter)

    by_img = {}
    for img, b in gts:
        by_img.setdefault(img, []).append(corners(b))
    npos = len(gts)
    dects = sorted(dets, key=lambda d: d[1], reverse=True)
    TP = np.zeros(len(dects))
    FP = np.zeros(len(dects))
    seen = {k: np.zeros(len(v)) for k, v in by_img.items()}
    for k, (img, _, b) in enumerate(dects):
        iou_max = sys.float_info.min
        jm = None
        for j, g in enumerate(by_img.get(img, [])):
            o = iou(corners(b), g)
            if o > iou_max:
                iou_max, jm = o, j
        if iou_max >= iou_threshold and seen[img][jm] == 0:
            TP[k] = 1
            seen[img][jm] = 1
        else:
            FP[k] = 1
    acc_tp, acc_fp = np.cumsum(TP), np.cumsum(FP)
    rec = acc_tp / npos
    prec = np.divide(acc_tp, acc_fp + acc_tp)
    if eleven:
        rho = []
        for r in np.linspace(0, 1, 11)[::-1]:
            idx = np.argwhere(rec >= r)
            rho.append(max(prec[idx.min():]) if idx.size else 0)
        return sum(rho) / 11
    mrec = [0] + list(rec) + [1]
    mpre = [0] + list(prec) + [0]
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    ap = 0
    for i in range(1, len(mrec)):
        if mrec[i] != mrec[i - 1]:
            ap += (mrec[i] - mrec[i - 1]) * mpre[i]
    return ap


def _random_case(rng, n_img=6, integer=True):
    gts, dets = {}, []
    for i in range(n_img):
        m = rng.integers(0, 5)
        xy = rng.uniform(0, 80, size=(m, 2))
        wh = rng.uniform(4, 40, size=(m, 2))
        g = np.concatenate([xy, xy + wh], 1)
        if integer:
            g = np.round(g)
        gts[f"im{i}"] = (g, rng.random(m) < 0.2)
        for b in g:  # jittered copies (some duplicates), plus random boxes
            for _ in range(rng.integers(0, 3)):
                d = b + rng.normal(0, 4, size=4)
                dets.append((f"im{i}", d))
        for _ in range(rng.integers(0, 3)):
            xy = rng.uniform(0, 80, size=2)
            dets.append((f"im{i}", np.concatenate([xy, xy + rng.uniform(4, 40, size=2)])))
    if integer:
        dets = [(i, np.round(d)) for i, d in dets]
    scores = rng.random(len(dets))
    return gts, dets, scores


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("use07", [False, True])
def test_matches_py_faster_rcnn_on_random_boxes(seed, use07):
    rng = np.random.default_rng(seed)
    gts, dets, scores = _random_case(rng, integer=seed % 2 == 0)
    class_recs = {k: {"bbox": g.reshape(-1, 4), "difficult": d.astype(bool), "det": [False] * len(g)}
                  for k, (g, d) in gts.items()}
    ids = [i for i, _ in dets]
    BB = np.array([d for _, d in dets]).reshape(-1, 4)
    ref = _pyfrcnn_voc_eval(class_recs, ids, scores, BB, 0.5, use07)
    ours = evaluate_class(ids, scores, BB, gts, iou_rule="gt", use_07_metric=use07).ap
    if np.isnan(ref):
        assert np.isnan(ours)
    else:
        assert ours == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("use07", [False, True])
@pytest.mark.parametrize("thr", [0.5, 0.7])
def test_matches_padilla_evaluator_on_random_xywh(seed, use07, thr):
    # COCO xywh in, x2 = x + w, +1 areas, IoU >= t, no difficult flags; integer boxes make exact ties likely
    rng = np.random.default_rng(100 + seed)
    gts, dets, scores = _random_case(rng, integer=True)
    scores = np.round(scores, 1)  # many equal scores: stable-order tie breaking must agree too
    g_list = [(k, (b[0], b[1], b[2] - b[0], b[3] - b[1])) for k, (g, _) in gts.items() for b in g]
    d_list = [(i, float(s), (b[0], b[1], b[2] - b[0], abs(b[3] - b[1]))) for (i, b), s in zip(dets, scores)]
    if not g_list:
        pytest.skip("no gt drawn")
    ref = _padilla_ap(g_list, d_list, thr, use07)
    gt_map = {k: {"boxes": xywh_to_xyxy(np.array([b for kk, b in g_list if kk == k]).reshape(-1, 4)),
                  "labels": np.ones(sum(kk == k for kk, _ in g_list), int),
                  "difficult": np.zeros(sum(kk == k for kk, _ in g_list), bool)} for k in gts}
    recs = [{"image_id": i, "label": 1, "score": s, "box": xywh_to_xyxy(b)[0]} for i, s, b in d_list]
    ours = voc_evaluate(recs, gt_map, ["a"], iou_thresh=thr, use_07_metric=use07).ap["a"]
    assert ours == pytest.approx(ref, abs=1e-12)
