"""Semantic segmentation metrics from a dataset-level confusion matrix.

The matrix ``M[g, p]`` counts pixels of ground-truth class ``g`` predicted as ``p`` over the
whole dataset (accumulated batch by batch with ``bincount``); pixels whose target is
``ignore_index`` (255, VOC's void) are left out.

* ``IoU_c = M[c, c] / (sum_p M[c, p] + sum_g M[g, c] - M[c, c])`` (TP / (TP + FN + FP)).
  A class absent from both the ground truth and the predictions has a 0/0 IoU: it is NaN
  and left out of the mean. A class present in only one of them has IoU 0 and counts.
* ``mIoU`` = mean of the non-NaN ``IoU_c`` (classes 0..C-1, background included; pass
  ``classes`` to :meth:`ConfusionMatrix.compute` only for the names).
* ``pixel_acc = trace(M) / sum(M)`` (NaN when no pixel was counted).
* ``mean_acc`` = mean over classes present in the gt of ``M[c, c] / sum_p M[c, p]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import numpy as np

from incdet.errors import DataError

__all__ = ["ConfusionMatrix", "SegmentationResult", "segmentation_metrics"]


@dataclass
class SegmentationResult:
    iou: np.ndarray  # [C], NaN for classes absent from gt and prediction
    miou: float
    pixel_acc: float
    mean_acc: float
    names: Optional[Sequence[str]] = None

    def to_dict(self) -> dict:
        def f(x):
            return None if math.isnan(x) else float(x)

        names = list(self.names) if self.names is not None else [str(i) for i in range(len(self.iou))]
        return {"per_class_iou": {n: f(float(v)) for n, v in zip(names, self.iou)},
                "mIoU": f(self.miou), "pixel_acc": f(self.pixel_acc), "mean_acc": f(self.mean_acc)}


def segmentation_metrics(matrix: Any, names: Optional[Sequence[str]] = None) -> SegmentationResult:
    """Metrics of a ``[C, C]`` confusion matrix (rows = gt, columns = prediction)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {m.shape}")
    tp = np.diag(m)
    gt = m.sum(1)
    pr = m.sum(0)
    union = gt + pr - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
        acc = np.where(gt > 0, tp / np.where(gt > 0, gt, 1), np.nan)
    total = m.sum()
    valid = ~np.isnan(iou)
    miou = float(iou[valid].mean()) if valid.any() else float("nan")
    pixel_acc = float(tp.sum() / total) if total > 0 else float("nan")
    mean_acc = float(np.nanmean(acc)) if (~np.isnan(acc)).any() else float("nan")
    if names is not None and len(names) != m.shape[0]:
        raise ValueError(f"{len(names)} names for {m.shape[0]} classes")
    return SegmentationResult(iou=iou, miou=miou, pixel_acc=pixel_acc, mean_acc=mean_acc, names=names)


class ConfusionMatrix:
    """Dataset-level confusion matrix accumulator.

    ``update(pred, target)`` takes integer label maps of the same shape (numpy arrays or
    torch tensors on any device; any batch shape). Prediction values must lie in
    ``0..C-1``; target values in ``0..C-1`` or ``ignore_index``. Counting happens on the
    input's device (``torch.bincount`` / ``np.bincount``); the running matrix is an int64
    numpy array.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> None:
        self.matrix[:] = 0

    def update(self, pred: Any, target: Any) -> None:
        n = self.num_classes
        if hasattr(pred, "detach") or hasattr(target, "detach"):
            import torch

            p = torch.as_tensor(pred).reshape(-1).long()
            t = torch.as_tensor(target, device=p.device).reshape(-1).long()
            if p.shape != t.shape:
                raise ValueError(f"prediction has {p.numel()} pixels but target has {t.numel()}")
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
            if p.numel():
                lo = min(int(p.min()), int(t.min()))
                hi = max(int(p.max()), int(t.max()))
                if lo < 0 or hi >= n:
                    self._range_error(p.cpu().numpy(), t.cpu().numpy())
            counts = torch.bincount(t * n + p, minlength=n * n).cpu().numpy()
        else:
            p = np.asarray(pred).reshape(-1).astype(np.int64)
            t = np.asarray(target).reshape(-1).astype(np.int64)
            if p.shape != t.shape:
                raise ValueError(f"prediction has {p.size} pixels but target has {t.size}")
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
            if p.size and (min(p.min(), t.min()) < 0 or max(p.max(), t.max()) >= n):
                self._range_error(p, t)
            counts = np.bincount(t * n + p, minlength=n * n)
        self.matrix += counts.reshape(n, n).astype(np.int64)

    def _range_error(self, p: np.ndarray, t: np.ndarray) -> None:
        n = self.num_classes
        bad_t = np.unique(t[(t < 0) | (t >= n)])
        if bad_t.size:
            raise DataError(f"target labels {bad_t[:10].tolist()} outside 0..{n - 1} (and not the ignore "
                            f"index {self.ignore_index})")
        bad_p = np.unique(p[(p < 0) | (p >= n)])
        raise ValueError(f"predicted labels {bad_p[:10].tolist()} outside 0..{n - 1}")

    def compute(self, names: Optional[Sequence[str]] = None) -> SegmentationResult:
        return segmentation_metrics(self.matrix, names)
