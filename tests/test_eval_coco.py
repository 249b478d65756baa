"""COCO metrics: equal to pycocotools' own COCOeval on coco-tiny with perturbed gt as detections."""
from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest

from incdet.errors import ConfigError, DataError
from incdet.eval.coco import coco_evaluate

STAT_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR@1", "AR@10", "AR@100", "ARs", "ARm", "ARl"]


def _perturbed_dets(data, seed=0):
    """Jittered gt boxes with random scores, ~15% dropped, a few duplicates and random false positives."""
    rng = np.random.default_rng(seed)
    cat_ids = [c["id"] for c in data["categories"]]
    dets = []
    for a in data["annotations"]:
        if rng.random() < 0.15:
            continue
        x, y, w, h = a["bbox"]
        for _ in range(1 + int(rng.random() < 0.2)):
            j = rng.normal(0, 0.08, size=4) * np.array([w, h, w, h])
            dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                         "bbox": [x + j[0], y + j[1], max(w + j[2], 1.0), max(h + j[3], 1.0)],
                         "score": float(rng.random())})
    for im in data["images"][:40]:
        for _ in range(3):
            dets.append({"image_id": im["id"], "category_id": int(rng.choice(cat_ids)),
                         "bbox": [float(v) for v in rng.uniform(0, 200, 2)] + [float(v) for v in rng.uniform(5, 150, 2)],
                         "score": float(rng.random()) * 0.5})
    return dets


def _pycoco_stats(ann_file, dets, max_dets=None):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        dt = gt.loadRes(dets)
        E = COCOeval(gt, dt, "bbox")
        if max_dets is not None:
            E.params.maxDets = list(max_dets)
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E


@pytest.fixture
def coco_val(coco_tiny_root):
    ann = coco_tiny_root / "annotations" / "instances_val2017.json"
    if not ann.is_file():
        pytest.skip(f"{ann} missing")
    with open(ann) as f:
        return ann, json.load(f)


def test_equals_pycocotools_summary(coco_val):
    ann, data = coco_val
    dets = _perturbed_dets(data)
    E = _pycoco_stats(ann, dets)
    ref = dict(zip(STAT_KEYS, E.stats))
    res = coco_evaluate(data, dets)
    assert 0.2 < res.stats["AP"] < 0.95  # a meaningful, non-trivial value
    for k in STAT_KEYS:
        if ref[k] == -1:
            assert math.isnan(res.stats[k]), k
        else:
            assert res.stats[k] == pytest.approx(ref[k], abs=1e-12), k
    # the same via a pycocotools COCO object
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
    res2 = coco_evaluate(gt, dets)
    assert res2.stats == res.stats
    # per-class AP: mean over IoU thresholds x recall points of that category's precision
    P = E.eval["precision"][:, :, :, 0, -1]
    names = {c["id"]: c["name"] for c in data["categories"]}
    for k, cid in enumerate(E.params.catIds):
        v = P[:, :, k]
        v = v[v > -1]
        if v.size:
            assert res.per_class[names[cid]] == pytest.approx(float(v.mean()), abs=1e-12)
        else:
            assert math.isnan(res.per_class[names[cid]])


def test_custom_max_dets(coco_val):
    ann, data = coco_val
    dets = _perturbed_dets(data, seed=1)
    E = _pycoco_stats(ann, dets, max_dets=(1, 10, 200))
    # pycocotools' summarize() looks for maxDets == 100 for the first AP and finds nothing
    assert E.stats[0] == -1
    res = coco_evaluate(data, dets, max_dets=(1, 10, 200))
    P = E.eval["precision"][:, :, :, 0, 2]
    assert res.stats["AP"] == pytest.approx(float(P[P > -1].mean()), abs=1e-12)
    assert res.stats["AP50"] == pytest.approx(E.stats[1], abs=1e-12)
    assert res.stats["AR@200"] == pytest.approx(E.stats[8], abs=1e-12)
    assert res.stats["AR@1"] == pytest.approx(E.stats[6], abs=1e-12)
    assert "AR@100" not in res.stats
    # a cap of 1 detection per image lowers recall
    small = coco_evaluate(data, dets, max_dets=(1,))
    assert small.stats["AR@1"] == res.stats["AR@1"]
    assert small.stats["AP"] < res.stats["AP"]
    with pytest.raises(ConfigError):
        coco_evaluate(data, dets, max_dets=(10, 1))


def test_samples_and_predictions_input():
    import torch
    from incdet.data.sample import Sample

    s1 = Sample(image=None, boxes=torch.tensor([[0.0, 0.0, 40.0, 40.0], [50.0, 50.0, 90.0, 80.0]]),
                labels=torch.tensor([1, 2]), image_id="a", orig_size=(100, 100))
    s2 = Sample(image=None, boxes=torch.zeros((0, 4)), labels=torch.zeros(0, dtype=torch.int64), image_id="b",
                orig_size=(100, 100))
    preds = {"a": {"boxes": s1.boxes.clone(), "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 2])},
             "b": {"boxes": torch.tensor([[1.0, 1.0, 20.0, 20.0]]), "scores": torch.tensor([0.1]),
                   "labels": torch.tensor([1])}}
    res = coco_evaluate([s1, s2], preds, classes=["x", "y"])
    # both objects found exactly, the only false positive ranks below the TP -> AP 1 for both classes
    assert res.stats["AP"] == pytest.approx(1.0)
    assert res.per_class == {"x": pytest.approx(1.0), "y": pytest.approx(1.0)}
    # no detections at all: AP 0 (not an error)
    empty = coco_evaluate([s1, s2], [], classes=["x", "y"])
    assert empty.stats["AP"] == 0.0
    with pytest.raises(DataError, match="not in the ground truth"):
        coco_evaluate([s1, s2], [{"image_id": "zz", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}],
                      classes=["x", "y"])
    with pytest.raises(DataError, match="category_id"):
        coco_evaluate([s1, s2], [{"image_id": "a", "category_id": 7, "bbox": [0, 0, 1, 1], "score": 1.0}],
                      classes=["x", "y"])
