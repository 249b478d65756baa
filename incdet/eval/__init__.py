"""Detection and segmentation metrics.

* :mod:`incdet.eval.voc`: VOC AP / mAP (11-point and all-point, devkit conventions as options).
* :mod:`incdet.eval.coco`: COCO metrics through pycocotools (configurable ``max_dets``).
* :mod:`incdet.eval.segmentation`: dataset-level confusion matrix, per-class IoU, mIoU.
* :mod:`incdet.eval.cli`: ``incdet eval-detections``.
"""
from incdet.eval.segmentation import ConfusionMatrix, SegmentationResult, segmentation_metrics
from incdet.eval.voc import ClassAP, VOCResult, box_iou, evaluate_class, voc_ap, voc_evaluate, xywh_to_xyxy, xyxy_to_xywh


def coco_evaluate(*args, **kwargs):
    """See :func:`incdet.eval.coco.coco_evaluate` (imported lazily: pycocotools)."""
    from incdet.eval.coco import coco_evaluate as f

    return f(*args, **kwargs)


__all__ = [
    "ClassAP", "VOCResult", "box_iou", "evaluate_class", "voc_ap", "voc_evaluate", "xywh_to_xyxy", "xyxy_to_xywh",
    "coco_evaluate", "ConfusionMatrix", "SegmentationResult", "segmentation_metrics",
]
