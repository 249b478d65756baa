"""Datasets, the sample record and class-incremental task splits.

* :class:`Sample` - the record every model consumes (docs/design.md).
* :class:`VOCDetection`, :data:`VOC_CLASSES` - VOCdevkit layout (also ``shapes-voc``).
* :class:`COCODetection` - COCO json on pycocotools.
* :class:`ClassSplit` - ordered class groups, ``train_subset`` / ``eval_subset``.
"""
from incdet.data.coco import COCODetection
from incdet.data.images import load_index_mask, load_rgb
from incdet.data.sample import Sample, detection_collate
from incdet.data.tasks import ClassSplit, TaskSubset
from incdet.data.voc import VOC_CLASSES, VOCDetection

__all__ = [
    "Sample",
    "detection_collate",
    "VOC_CLASSES",
    "VOCDetection",
    "COCODetection",
    "ClassSplit",
    "TaskSubset",
    "load_rgb",
    "load_index_mask",
]
