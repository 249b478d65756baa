"""Segmentation confusion matrix and mIoU on hand-worked label maps."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from incdet.errors import DataError
from incdet.eval.segmentation import ConfusionMatrix, segmentation_metrics

# 4 classes (0 background, 1, 2, 3); class 3 appears in neither gt nor prediction.
TARGET = np.array([[0, 0, 1, 1],
                   [0, 0, 1, 1],
                   [2, 2, 255, 255]])
PRED = np.array([[0, 1, 1, 1],
                 [0, 0, 1, 2],
                 [2, 0, 3, 0]])  # the two void pixels (predicted 3 and 0) are ignored


def test_miou_by_hand():
    # counted pixels (10): gt 0: 4 px -> pred 0,1,0,0 ; gt 1: 4 px -> 1,1,1,2 ; gt 2: 2 px -> 2,0
    # M (rows gt, cols pred):  [[3,1,0,0],[0,3,1,0],[1,0,1,0],[0,0,0,0]]
    # IoU0 = 3 / (4 + 4 - 3) = 3/5 ; IoU1 = 3 / (4 + 4 - 3) = 3/5 ; IoU2 = 1 / (2 + 2 - 1) = 1/3 ; IoU3 = 0/0 -> NaN
    # mIoU = (3/5 + 3/5 + 1/3) / 3 = 23/45 ; pixel acc = 7/10 ; mean acc = (3/4 + 3/4 + 1/2) / 3 = 2/3
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    np.testing.assert_array_equal(cm.matrix, [[3, 1, 0, 0], [0, 3, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    r = cm.compute(["bg", "a", "b", "c"])
    np.testing.assert_allclose(r.iou[:3], [3 / 5, 3 / 5, 1 / 3])
    assert math.isnan(r.iou[3])
    assert r.miou == pytest.approx(23 / 45)
    assert r.pixel_acc == pytest.approx(0.7)
    assert r.mean_acc == pytest.approx(2 / 3)
    d = r.to_dict()
    assert d["per_class_iou"]["c"] is None and d["mIoU"] == pytest.approx(23 / 45)


def test_accumulates_over_batches_and_torch_equals_numpy():
    cm_np = ConfusionMatrix(4)
    cm_np.update(PRED, TARGET)
    cm_np.update(PRED[None], TARGET[None])  # batch dimension is fine
    cm_t = ConfusionMatrix(4)
    cm_t.update(torch.from_numpy(PRED), torch.from_numpy(TARGET).to(torch.uint8))
    cm_t.update(torch.from_numpy(PRED)[None], torch.from_numpy(TARGET)[None])
    np.testing.assert_array_equal(cm_np.matrix, cm_t.matrix)
    assert cm_np.matrix.sum() == 20
    cm_np.reset()
    assert cm_np.matrix.sum() == 0 and math.isnan(cm_np.compute().miou)


def test_predicted_but_absent_class_counts_zero():
    # class 3 predicted on one pixel whose gt is 0: IoU3 = 0 / (0 + 1 - 0) = 0 -> counted in the mean
    cm = ConfusionMatrix(4)
    cm.update(np.array([3, 0]), np.array([0, 0]))
    r = cm.compute()
    assert r.iou[3] == 0.0 and r.iou[0] == 0.5
    assert math.isnan(r.iou[1]) and r.miou == pytest.approx(0.25)


def test_bad_labels():
    cm = ConfusionMatrix(3)
    with pytest.raises(DataError, match="target labels \\[7\\]"):
        cm.update(np.array([0, 1]), np.array([0, 7]))
    with pytest.raises(ValueError, match="predicted labels \\[5\\]"):
        cm.update(np.array([0, 5]), np.array([0, 1]))
    with pytest.raises(ValueError):
        cm.update(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError):
        segmentation_metrics(np.zeros((2, 3)))
