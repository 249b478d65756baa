"""The sample record shared by every model (see docs/design.md, "The sample record")."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor


@dataclass
class Sample:
    """One annotated image.

    Attributes:
        image: ``uint8`` tensor ``[3, H, W]``, RGB, or ``None`` (from ``annotation(i)``).
        boxes: ``float32`` ``[N, 4]``, xyxy in 0-based pixel coordinates. For VOC the box
            covers ``[x1, x2] x [y1, y2]`` inclusive (devkit ``xmin - 1`` ... ``xmax - 1``);
            for COCO ``x2 = x + w``, ``y2 = y + h`` (continuous, as pycocotools).
        labels: ``int64`` ``[N]``, 1-based index into the dataset's (or task split's)
            class list; 0 is background and never appears here.
        difficult: ``bool`` ``[N]``, VOC ``difficult`` flag.
        ignore: ``bool`` ``[N]``, COCO ``iscrowd`` (not a positive, not a miss).
        mask: ``uint8`` ``[H, W]`` semantic labels (0 background, k class k, 255 void)
            or ``None`` when the image has no segmentation (or masks were not requested).
        image_id: VOC file stem (``str``) or COCO image id (``int``).
        orig_size: ``(H, W)`` of the image on disk.

    ``difficult`` / ``ignore`` default to all-False and ``orig_size`` to the image size
    when left as ``None``.
    """

    image: Optional[Tensor]
    boxes: Tensor = None  # type: ignore[assignment]
    labels: Tensor = None  # type: ignore[assignment]
    difficult: Tensor = None  # type: ignore[assignment]
    ignore: Tensor = None  # type: ignore[assignment]
    mask: Optional[Tensor] = None
    image_id: Union[str, int, None] = None
    orig_size: Optional[Tuple[int, int]] = None

    def __post_init__(self):
        if self.boxes is None:
            self.boxes = torch.zeros((0, 4), dtype=torch.float32)
        n = self.boxes.shape[0]
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"Sample.boxes must be [N, 4], got {tuple(self.boxes.shape)}")
        if self.labels is None:
            self.labels = torch.zeros((n,), dtype=torch.int64)
        if self.difficult is None:
            self.difficult = torch.zeros((n,), dtype=torch.bool)
        if self.ignore is None:
            self.ignore = torch.zeros((n,), dtype=torch.bool)
        for name in ("labels", "difficult", "ignore"):
            t = getattr(self, name)
            if t.ndim != 1 or t.shape[0] != n:
                raise ValueError(f"Sample.{name} must have shape [{n}], got {tuple(t.shape)}")
        if self.orig_size is None and self.image is not None:
            self.orig_size = (int(self.image.shape[-2]), int(self.image.shape[-1]))

    @property
    def num_objects(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, keep: Tensor) -> "Sample":
        """A copy keeping only the objects where ``keep`` (bool ``[N]`` or index tensor) holds."""
        return Sample(
            image=self.image,
            boxes=self.boxes[keep],
            labels=self.labels[keep],
            difficult=self.difficult[keep],
            ignore=self.ignore[keep],
            mask=self.mask,
            image_id=self.image_id,
            orig_size=self.orig_size,
        )


def check_index(i: int, n: int) -> int:
    """``i`` as a position in a sequence of ``n`` items (negative counts from the end); IndexError if out."""
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(i)
    return i


def load_records(ids: Sequence[Any], load: Callable[[Any], dict], on_error: str, where: str
                 ) -> Tuple[List[Any], List[dict], List[Tuple[str, str]]]:
    """``load(id)`` for every id: ``(kept ids, their records, [(id, message)] of skipped ids)``.

    A :class:`~incdet.errors.DataError` from ``load`` is raised (``on_error="raise"``) or logged,
    and the id left out (``"skip"``); ``where`` (the annotation file or dataset root) names the
    data set in the summary warning."""
    from incdet.errors import DataError

    log = logging.getLogger("incdet.data")
    kept, records, skipped = [], [], []
    for img_id in ids:
        try:
            rec = load(img_id)
        except DataError as e:
            if on_error == "raise":
                raise
            log.warning("skipping %s: %s", img_id, e)
            skipped.append((str(img_id), str(e)))
            continue
        kept.append(img_id)
        records.append(rec)
    if skipped:
        log.warning("%s: skipped %d of %d images with bad data", where, len(skipped), len(ids))
    return kept, records, skipped


def detection_collate(samples: Sequence[Sample]) -> List[Sample]:
    """Collate function for ``DataLoader``: images differ in size, so a batch is a list."""
    return list(samples)
