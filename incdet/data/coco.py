"""COCO reader on pycocotools.

Labels are contiguous ``1..K`` in increasing category-id order (``classes[k-1]`` is the
name of label k). Boxes: COCO ``[x, y, w, h]`` becomes ``[x, y, x + w, y + h]``
(continuous coordinates, so converting back to xywh is exact). ``iscrowd`` annotations
are kept with ``ignore=True``. Images without annotations are kept (empty ``boxes [0, 4]``).

Semantic masks (``keep_masks=True``) are rasterised from the instance polygons / RLE with
pycocotools: 0 background, k = label k. Crowd regions are painted 255 (void) first
(``crowd_mask="void"``, default; ``"class"`` paints them with their label like other
instances), then the non-crowd instances from the largest area to the smallest, so a
small object lying on a larger one keeps its pixels. An instance without a usable
segmentation has its box painted void rather than left as background.

Box validity: ``w > 0`` and ``h > 0``; the box must lie inside the image up to
``BOX_TOLERANCE`` pixels (COCO boxes are floats derived from polygons and sometimes end a
hair beyond the border); such boxes are kept unchanged, never clipped. A degenerate or
outside box raises :class:`DataError` (or, with ``on_error="skip"``, drops that image with
a logged warning, counted in ``skipped``).

The file itself is read and checked by :func:`incdet.data.cocofile.read_coco_json`: bad JSON,
nesting deeper than 100 levels, non-UTF-8 text, duplicate image / category / annotation ids,
annotations whose ``image_id`` or ``category_id`` does not exist, ids of the wrong type and a
non-0/1 ``iscrowd`` raise :class:`DataError` naming the file (never skipped: the whole file is
suspect).
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from typing import Dict, List, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from incdet.data.cocofile import read_coco_json
from incdet.data.images import load_rgb
from incdet.data.safeload import short_repr
from incdet.data.sample import Sample, check_index, load_records
from incdet.errors import DataError

log = logging.getLogger(__name__)

BOX_TOLERANCE = 1.0  # pixels a COCO box may extend beyond the image border


def _load_coco(ann_file: str):
    try:
        from pycocotools.coco import COCO
    except ImportError as e:  # pragma: no cover - pycocotools is a dependency
        raise ImportError("pycocotools is required for COCODetection (pip install pycocotools)") from e
    data = read_coco_json(ann_file, "COCO annotation", image_fields=("id", "file_name", "width", "height"))
    coco = COCO()
    with contextlib.redirect_stdout(io.StringIO()):
        coco.dataset = data
        coco.createIndex()
    return coco


MAX_PIXELS = 1 << 28  # width * height an annotation may declare (the mask is allocated from it)


def _rle_string_counts(s: Union[str, bytes]) -> List[int]:
    """Run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``, bounds-checked)."""
    b = s.encode("ascii", "replace") if isinstance(s, str) else bytes(s)
    counts: List[int] = []
    p = 0
    while p < len(b):
        x = k = 0
        more = True
        while more:
            if p >= len(b):
                raise ValueError("truncated RLE string")
            c = b[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"byte {b[p]} at {p} is not an RLE character")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if k > 7:
                raise ValueError("RLE count too long")
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def checked_segmentation(seg, h: int, w: int):
    """Check a COCO ``segmentation`` before pycocotools (C code without bounds checks) sees it.

    Polygons: lists of finite numbers, an even count within ``[-max(h, w), 2 max(h, w)]``;
    polygons with fewer than 3 points are dropped (an instance left with none has no usable
    segmentation). RLE (``{"size": [h, w], "counts": list or string}``): the size must be the
    image's, counts non-negative and summing to ``h * w`` (pycocotools would write past its
    buffer otherwise). Returns the segmentation to decode (possibly ``[]``); ``ValueError``
    says what is wrong.
    """
    if isinstance(seg, list):
        lim = 2.0 * max(h, w)
        polys = []
        for j, poly in enumerate(seg):
            if not isinstance(poly, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in poly):
                raise ValueError(f"polygon {j} is not a list of numbers")
            if len(poly) % 2:
                raise ValueError(f"polygon {j} has an odd number of coordinates ({len(poly)})")
            for v in poly:
                try:
                    ok = math.isfinite(v) and -lim / 2 <= v <= lim
                except OverflowError:
                    ok = False
                if not ok:
                    raise ValueError(f"polygon {j} has a coordinate {short_repr(v)} far outside the {w}x{h} image")
            if len(poly) >= 6:
                polys.append(poly)
        return polys
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and size == [h, w]):
            raise ValueError(f"RLE size {short_repr(size)} is not the image size [{h}, {w}]")
        if isinstance(counts, list):
            if any(isinstance(c, bool) or not isinstance(c, int) for c in counts):
                raise ValueError("RLE counts are not integers")
            values = counts
        elif isinstance(counts, (str, bytes)):
            values = _rle_string_counts(counts)
        else:
            raise ValueError(f"RLE counts must be a list or a string, got {type(counts).__name__}")
        if any(c < 0 or c >= 1 << 32 for c in values) or sum(values) != h * w:
            raise ValueError(f"RLE counts must be non-negative and sum to {h * w} (the image's pixels)")
        return seg
    raise ValueError(f"segmentation must be polygons or RLE, got {type(seg).__name__}")


class COCODetection(Dataset):
    """COCO-format detection (+ semantic masks from instances) dataset of :class:`Sample`.

    Args:
        ann_file: ``instances_*.json``.
        img_dir: folder with the images (``file_name`` is relative to it).
        keep_masks: rasterise the semantic mask (costs a polygon/RLE decode per instance).
        crowd_mask: ``"void"`` (crowd pixels 255) or ``"class"`` (crowd pixels get the label).
        on_error: ``"raise"`` or ``"skip"`` (see the module docstring).
        check_images: decode every image at construction (see :class:`VOCDetection`).

    ``image_id`` of a sample is the COCO image id (``int``); ``ids`` lists them in order
    (increasing id). ``cat_ids[k-1]`` is the COCO category id of label k.
    """

    def __init__(
        self,
        ann_file: Union[str, os.PathLike],
        img_dir: Union[str, os.PathLike],
        keep_masks: bool = True,
        crowd_mask: str = "void",
        on_error: str = "raise",
        check_images: bool = False,
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if crowd_mask not in ("void", "class"):
            raise ValueError(f"crowd_mask must be 'void' or 'class', got {crowd_mask!r}")
        self.ann_file = os.fspath(ann_file)
        self.img_dir = os.fspath(img_dir)
        if not os.path.isdir(self.img_dir):
            raise DataError(f"{self.img_dir}: COCO image directory does not exist")
        self.keep_masks = keep_masks
        self.crowd_mask = crowd_mask
        self.on_error = on_error
        self.coco = _load_coco(self.ann_file)
        self.cat_ids: List[int] = sorted(self.coco.cats)
        self.cat_to_label: Dict[int, int] = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.classes: List[str] = [self.coco.cats[c]["name"] for c in self.cat_ids]
        dup = sorted({c for c in self.classes if self.classes.count(c) > 1})
        if dup:
            raise DataError(f"{self.ann_file}: several categories share the names {dup}")
        self.ids, self._records, self.skipped_files = load_records(
            sorted(self.coco.imgs), lambda i: self._load_record(i, check_images), on_error, self.ann_file)
        self.skipped = len(self.skipped_files)

    def image_path(self, img_id: int) -> str:
        return os.path.join(self.img_dir, self.coco.imgs[img_id]["file_name"])

    def _load_record(self, img_id: int, check_images: bool) -> dict:
        info = self.coco.imgs[img_id]
        path = self.image_path(img_id)
        where = f"{self.ann_file}: image {img_id} ({info['file_name']})"
        w, h = info["width"], info["height"]
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (w, h)):
            raise DataError(f"{where}: width/height are not integers ({short_repr(w)}, {short_repr(h)})")
        if w <= 0 or h <= 0:
            raise DataError(f"{where}: non-positive size {w}x{h}")
        if w * h > MAX_PIXELS:
            raise DataError(f"{where}: size {w}x{h} is more than {MAX_PIXELS} pixels")
        if not os.path.isfile(path):
            raise DataError(f"{path}: image file for COCO image {img_id} (listed in {self.ann_file}) does not exist")
        boxes, labels, crowd, anns = [], [], [], []
        for a in self.coco.imgToAnns.get(img_id, []):
            what = f"{where}, annotation {a['id']}"
            if a["category_id"] not in self.cat_to_label:
                raise DataError(f"{what}: unknown category_id {a['category_id']}")
            bb = a["bbox"]
            if not (isinstance(bb, (list, tuple)) and len(bb) == 4):
                raise DataError(f"{what}: bbox must be [x, y, w, h], got {short_repr(bb)}")
            try:
                x, y, bw, bh = (float(v) for v in bb)
            except (TypeError, ValueError):
                raise DataError(f"{what}: bbox has non-numeric values {short_repr(bb)}") from None
            if not all(math.isfinite(v) for v in (x, y, bw, bh)):
                raise DataError(f"{what}: bbox has non-finite values {short_repr(bb)}")
            if bw <= 0 or bh <= 0:
                raise DataError(f"{what}: zero or negative box size (w={bw:g}, h={bh:g})")
            t = BOX_TOLERANCE
            if x < -t or y < -t or x + bw > w + t or y + bh > h + t:
                raise DataError(f"{what}: box [x={x:g}, y={y:g}, w={bw:g}, h={bh:g}] lies outside the {w}x{h} image")
            boxes.append((x, y, x + bw, y + bh))
            labels.append(self.cat_to_label[a["category_id"]])
            crowd.append(bool(a.get("iscrowd", 0)))
            anns.append(a)
        if check_images:
            self._load_image(img_id, (h, w))
        return {
            "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, dtype=np.int64),
            "ignore": np.asarray(crowd, dtype=bool),
            "size": (h, w),
            "anns": anns,
        }

    def _load_image(self, img_id: int, size: Tuple[int, int]) -> torch.Tensor:
        path = self.image_path(img_id)
        img = load_rgb(path)
        hw = (int(img.shape[1]), int(img.shape[2]))
        if hw != tuple(size):
            raise DataError(f"{path}: image is {hw[1]}x{hw[0]} (WxH) but {self.ann_file} says {size[1]}x{size[0]}")
        return img

    def semantic_mask(self, i: int) -> torch.Tensor:
        """The ``uint8 [H, W]`` semantic mask of item ``i`` (see the module docstring)."""
        from pycocotools import mask as mask_utils

        rec = self._records[i]
        h, w = rec["size"]
        out = np.zeros((h, w), dtype=np.uint8)
        items = []
        for a, lab, crowd, box in zip(rec["anns"], rec["labels"], rec["ignore"], rec["boxes"]):
            value = 255 if (crowd and self.crowd_mask == "void") else int(lab)
            first = value == 255  # void regions go first so any instance overrides them
            area = float(a.get("area", 0.0)) or float((box[2] - box[0]) * (box[3] - box[1]))
            items.append((0 if first else 1, -area, a, value, box))
        items.sort(key=lambda t: (t[0], t[1]))
        for _, _, a, value, box in items:
            m = None
            seg = a.get("segmentation")
            if seg:
                try:
                    seg = checked_segmentation(seg, h, w)
                except ValueError as e:
                    raise DataError(
                        f"{self.ann_file}: image {self.ids[i]}, annotation {a['id']}: bad segmentation ({e})"
                    ) from None
            if seg:
                try:
                    if isinstance(seg, list):
                        rles = mask_utils.frPyObjects(seg, h, w)
                        rle = mask_utils.merge(rles)
                    elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
                        rle = mask_utils.frPyObjects(seg, h, w)
                    else:
                        rle = seg
                    m = mask_utils.decode(rle)
                    if m.shape != (h, w):
                        raise ValueError(f"decoded mask shape {m.shape} != {(h, w)}")
                except Exception as e:  # pycocotools raises assorted exception types
                    raise DataError(
                        f"{self.ann_file}: image {self.ids[i]}, annotation {a['id']}: bad segmentation ({e})"
                    ) from None
            if m is None:
                x1, y1, x2, y2 = box
                out[int(math.floor(max(y1, 0))):int(math.ceil(min(y2, h))),
                    int(math.floor(max(x1, 0))):int(math.ceil(min(x2, w)))] = 255
            else:
                out[m.astype(bool)] = value
        return torch.from_numpy(out)

    def __len__(self) -> int:
        return len(self.ids)

    def _sample(self, i: int, image, mask) -> Sample:
        rec = self._records[i]
        n = len(rec["labels"])
        return Sample(
            image=image,
            boxes=torch.from_numpy(rec["boxes"].copy()),
            labels=torch.from_numpy(rec["labels"].copy()),
            difficult=torch.zeros(n, dtype=torch.bool),
            ignore=torch.from_numpy(rec["ignore"].copy()),
            mask=mask,
            image_id=self.ids[i],
            orig_size=rec["size"],
        )

    def annotation(self, i: int) -> Sample:
        """The sample without pixels (``image=None``, ``mask=None``); no file is opened."""
        return self._sample(i, None, None)

    def __getitem__(self, i: int) -> Sample:
        i = check_index(i, len(self))
        rec = self._records[i]
        image = self._load_image(self.ids[i], rec["size"])
        mask = self.semantic_mask(i) if self.keep_masks else None
        return self._sample(i, image, mask)

    def __repr__(self) -> str:
        return (f"COCODetection(ann_file={self.ann_file!r}, images={len(self)}, "
                f"classes={len(self.classes)}, skipped={self.skipped})")
