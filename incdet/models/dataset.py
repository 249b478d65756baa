"""Training items for Fast R-CNN: a detection dataset joined with its proposals.

Each item is a dict: ``image`` (``uint8 [3, H, W]``, possibly mirrored), ``proposals``
(``float32 [K, 4]``), ``boxes`` / ``labels`` (the positives' ground truth; difficult and crowd
boxes removed unless ``use_difficult``), ``image_id``, ``flipped`` (bool) and ``index``.
Resizing happens in the model, so the coordinates are those of the image on disk (mirrored
when ``flipped``).

At construction, images that have no proposals or fewer than ``min_positives`` proposals with
IoU >= ``fg_iou`` to a ground-truth box are skipped (as the paper did), and the counts are
logged. This scan reads annotations only (``dataset.annotation(i)`` when available) unless the
proposals have to be computed from the pixels.
"""
from __future__ import annotations

import logging
from typing import Dict, Sequence

import torch
from torch.utils.data import Dataset

from incdet.models.proposals import ProposalSource, run_pool
from incdet.models.sampling import count_positives, flip_boxes

log = logging.getLogger(__name__)

_FORK_DS = None
_FORK_SRC = None


def _compute_one(i: int):
    # runs in a forked worker: the dataset and source are inherited through these globals
    s = _FORK_DS[i]
    return str(s.image_id), _FORK_SRC.raw(s.image_id, s.image)[0]


def ensure_computed(source: ProposalSource, dataset, workers: int = 0, progress: bool = True) -> None:
    """Compute the proposals of every image of ``dataset`` that ``source`` (a method) lacks, in
    the proposal process pool (:func:`incdet.models.proposals.run_pool`, forked), and save the
    source's cache file when it has one."""
    if source.method is None:
        return
    have = source.computed()
    todo = []
    for i in range(len(dataset)):
        iid = image_id_of(dataset, i)
        if iid is None or str(iid) not in have:
            todo.append(i)
    if not todo:
        return
    global _FORK_DS, _FORK_SRC
    _FORK_DS, _FORK_SRC = dataset, source
    try:
        for iid, boxes in run_pool(_compute_one, todo, workers, f"proposals ({source.method})", progress,
                                   min_jobs=9, chunksize=8, fork_only=True):
            source.add_computed(iid, boxes)
    finally:
        _FORK_DS = _FORK_SRC = None
    source.save_cache()


def image_id_of(dataset, i: int):
    """The image id of item ``i`` from ``dataset.annotation(i)`` (no pixels read), or None."""
    ann = getattr(dataset, "annotation", None)
    if ann is not None:
        return ann(i).image_id
    return None


def _annotation(dataset, i: int):
    ann = getattr(dataset, "annotation", None)
    return ann(i) if ann is not None else dataset[i]


def positive_targets(sample, use_difficult: bool = False):
    """``(boxes, labels)`` of the objects usable as positives (not crowd; not difficult unless
    ``use_difficult``)."""
    keep = ~sample.ignore
    if not use_difficult:
        keep &= ~sample.difficult
    return sample.boxes[keep].float(), sample.labels[keep]


class ProposalDetectionDataset(Dataset):
    """Wrap a detection dataset (``Sample`` items) with proposals and random horizontal flip."""

    def __init__(
        self,
        dataset,
        source: ProposalSource,
        flip_prob: float = 0.5,
        use_difficult: bool = False,
        min_positives: int = 1,
        fg_iou: float = 0.5,
        scan: bool = True,
    ):
        self.dataset = dataset
        self.source = source
        self.flip_prob = flip_prob
        self.use_difficult = use_difficult
        self.indices = list(range(len(dataset)))
        self.skipped: Dict[str, int] = {"no_proposals": 0, "few_positives": 0}
        if scan:
            self._scan(min_positives, fg_iou)

    def _scan(self, min_positives: int, fg_iou: float) -> None:
        keep = []
        for i in range(len(self.dataset)):
            s = _annotation(self.dataset, i)
            props = self.source.get(s.image_id, s.orig_size, s.image)
            if props.shape[0] == 0:
                self.skipped["no_proposals"] += 1
                continue
            boxes, _ = positive_targets(s, self.use_difficult)
            if count_positives(props, boxes, fg_iou) < min_positives:
                self.skipped["few_positives"] += 1
                continue
            keep.append(i)
        self.indices = keep
        n_skip = sum(self.skipped.values())
        if n_skip:
            log.info(
                "skipped %d of %d training images (%d without proposals, %d with fewer than %d positive proposals)",
                n_skip, len(self.dataset), self.skipped["no_proposals"], self.skipped["few_positives"], min_positives,
            )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> dict:
        i = self.indices[j]
        s = self.dataset[i]
        props = self.source.get(s.image_id, (int(s.image.shape[-2]), int(s.image.shape[-1])), s.image)
        boxes, labels = positive_targets(s, self.use_difficult)
        image = s.image
        flipped = bool(self.flip_prob > 0 and torch.rand(()) < self.flip_prob)
        if flipped:
            w = int(image.shape[-1])
            image = image.flip(-1)
            props = flip_boxes(props, w)
            boxes = flip_boxes(boxes, w)
        return {"image": image, "proposals": props, "boxes": boxes, "labels": labels,
                "image_id": s.image_id, "flipped": flipped, "index": i}


def collate(items: Sequence[dict]) -> Dict[str, list]:
    """List of items -> dict of lists (images differ in size)."""
    keys = items[0].keys() if items else []
    return {k: [it[k] for it in items] for k in keys}


__all__ = ["ProposalDetectionDataset", "collate", "ensure_computed", "positive_targets"]
