"""PASCAL VOC reader (VOCdevkit layout).

Layout under ``root`` (``.../VOCdevkit/VOC2012`` or any dataset with the same layout, e.g.
``shapes-voc``)::

    Annotations/<id>.xml          objects: name, bndbox (1-based pixels), difficult, truncated
    ImageSets/Main/<split>.txt    one id per line (extra columns ignored)
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png    optional palette PNG: class index, 255 = void
    classes.txt                   optional: one class name per line (default: VOC_CLASSES)

Box convention: the devkit's 1-based inclusive ``xmin..xmax`` becomes 0-based inclusive
``xmin - 1 .. xmax - 1`` (all four coordinates shifted by one). A box is valid when
``1 <= xmin < xmax <= width`` and ``1 <= ymin < ymax <= height`` in the XML (so a box
touching the right border has ``xmax == width``). Anything else (outside the image, zero
or negative extent) is an error: nothing is clipped. A box with ``xmin == xmax`` is
rejected as zero-area even though the devkit would count it as one pixel wide, because
models with continuous box coordinates cannot regress a zero-width box.
"""
from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from incdet.data.images import image_size, load_index_mask, load_rgb
from incdet.data.safeload import short_repr
from incdet.data.sample import Sample, check_index, load_records
from incdet.errors import DataError

log = logging.getLogger(__name__)

VOC_CLASSES: Tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

ON_ERROR = ("raise", "skip")


def read_classes_file(path: str) -> List[str]:
    """One class name per non-empty line; duplicates are an error."""
    try:
        with open(path, encoding="utf-8") as f:
            names = [ln.strip() for ln in f if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read class list ({e})") from None
    if not names:
        raise DataError(f"{path}: class list is empty")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{path}: duplicate class names {dup}")
    return names


def read_image_set(path: str) -> List[str]:
    """Ids of an ``ImageSets/<dir>/<split>.txt`` list (first column of each non-empty line);
    :class:`DataError` naming the file when it is missing, unreadable, not UTF-8, or lists an id twice."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: image set list does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            ids = [ln.split()[0] for ln in f if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read image set list ({e})") from None
    seen = set()
    dups = [i for i in ids if i in seen or seen.add(i)]
    if dups:
        raise DataError(f"{path}: ids listed more than once: {short_repr(sorted(set(dups))[:10])}")
    return ids


def _text(elem: ET.Element, tag: str, xml_path: str, what: str) -> str:
    child = elem.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(f"{xml_path}: {what}: missing <{tag}>")
    return child.text.strip()


def _number(elem: ET.Element, tag: str, xml_path: str, what: str) -> float:
    s = _text(elem, tag, xml_path, what)
    try:
        v = float(s)
    except ValueError:
        raise DataError(f"{xml_path}: {what}: <{tag}> is not a number: {short_repr(s)}") from None
    if not math.isfinite(v):
        raise DataError(f"{xml_path}: {what}: <{tag}> is not finite: {short_repr(s)}")
    return v


def _flag(elem: ET.Element, tag: str, xml_path: str, what: str) -> bool:
    """Optional 0/1 field (``difficult``, ``truncated``); absent means 0."""
    child = elem.find(tag)
    if child is None or child.text is None or not child.text.strip():
        return False
    s = child.text.strip()
    try:
        v = float(s)
    except ValueError:
        v = None
    if v not in (0.0, 1.0):
        raise DataError(f"{xml_path}: {what}: <{tag}> must be 0 or 1, got {short_repr(s)}")
    return v == 1.0


def _object_box(obj: ET.Element, k: int, xml_path: str, class_to_idx: Dict[str, int]):
    """``(name, description, (xmin, ymin, xmax, ymax))`` of the ``k``-th ``<object>``: a known
    class name and four finite numbers, as written in the XML."""
    name = _text(obj, "name", xml_path, f"object {k}")
    what = f"object {k} ({short_repr(name)})"
    if name not in class_to_idx:
        known = ", ".join(class_to_idx)
        raise DataError(f"{xml_path}: {what}: unknown class name {short_repr(name)}; known classes: {known}")
    bb = obj.find("bndbox")
    if bb is None:
        raise DataError(f"{xml_path}: {what}: missing <bndbox>")
    return name, what, tuple(_number(bb, t, xml_path, what) for t in ("xmin", "ymin", "xmax", "ymax"))


def read_voc_objects(xml_path: str, class_to_idx: Dict[str, int]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Annotations-only reading (evaluation without images): ``(boxes, labels, difficult)``.

    ``boxes`` are the raw XML ``bndbox`` values (1-based, float64 ``[N, 4]``), ``labels`` 1-based
    int64, ``difficult`` bool. Unlike :func:`parse_voc_xml` no ``<size>`` is needed and boxes are
    not checked against the image; ``xmin == xmax`` is allowed (the devkit counts it one pixel
    wide), ``xmax < xmin`` or ``ymax < ymin`` is a :class:`DataError`, as are the problems
    :func:`parse_voc_xml` reports for names, numbers and flags.
    """
    root = read_xml_root(xml_path)
    boxes, labels, diff = [], [], []
    for k, obj in enumerate(root.findall("object")):
        name, what, vals = _object_box(obj, k, xml_path, class_to_idx)
        if vals[2] < vals[0] or vals[3] < vals[1]:
            raise DataError(f"{xml_path}: {what}: xmax < xmin or ymax < ymin ({list(vals)})")
        boxes.append(vals)
        labels.append(class_to_idx[name])
        diff.append(_flag(obj, "difficult", xml_path, what))
    return (np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(labels, np.int64),
            np.asarray(diff, bool))


def read_xml_root(xml_path: str) -> ET.Element:
    """Parse an annotation XML file -> its root element; :class:`DataError` naming the file for
    unreadable files and anything the XML parser refuses (syntax, an unknown or multi-byte
    declared encoding, undefined or external entities: expat resolves none, and its billion-laughs
    protection refuses amplifying entity expansions)."""
    try:
        return ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{xml_path}: malformed XML ({e})") from None
    except OSError as e:
        raise DataError(f"{xml_path}: cannot read annotation ({e.strerror or e})") from None
    except (ValueError, LookupError) as e:  # "multi-byte encodings are not supported", "unknown encoding"
        raise DataError(f"{xml_path}: malformed XML ({e})") from None
    except RecursionError:
        raise DataError(f"{xml_path}: malformed XML (nested too deeply)") from None


def parse_voc_xml(xml_path: str, class_to_idx: Dict[str, int], image_path: Optional[str] = None) -> dict:
    """Parse and validate one VOC annotation file.

    Returns a dict with ``boxes`` (float32 ``[N, 4]`` 0-based xyxy), ``labels`` (int64,
    1-based), ``difficult``, ``truncated`` (bool) and ``size`` ``(H, W)``. Raises
    :class:`DataError` naming the file for malformed XML, missing fields, unknown class
    names and invalid boxes. When ``<size>`` is absent or zero, the size is read from
    the header of ``image_path``.
    """
    root = read_xml_root(xml_path)
    if root.tag != "annotation":
        raise DataError(f"{xml_path}: root element is <{short_repr(root.tag)}>, expected <annotation>")

    size = root.find("size")
    h = w = 0
    if size is not None and size.find("width") is not None and size.find("height") is not None:
        w_f = _number(size, "width", xml_path, "<size>")
        h_f = _number(size, "height", xml_path, "<size>")
        if w_f != int(w_f) or h_f != int(h_f) or w_f < 0 or h_f < 0:
            raise DataError(f"{xml_path}: <size> width/height must be non-negative integers, got {w_f} x {h_f}")
        w, h = int(w_f), int(h_f)
    if w == 0 or h == 0:
        if image_path is None:
            raise DataError(f"{xml_path}: missing or zero <size><width>/<height>")
        h, w = image_size(image_path)

    boxes, labels, difficult, truncated = [], [], [], []
    for k, obj in enumerate(root.findall("object")):
        name, what, (x1, y1, x2, y2) = _object_box(obj, k, xml_path, class_to_idx)
        if x2 <= x1 or y2 <= y1:
            raise DataError(
                f"{xml_path}: {what}: zero or negative box size (xmin={x1:g}, ymin={y1:g}, "
                f"xmax={x2:g}, ymax={y2:g}); need xmin < xmax and ymin < ymax"
            )
        if x1 < 1 or y1 < 1 or x2 > w or y2 > h:
            raise DataError(
                f"{xml_path}: {what}: box (xmin={x1:g}, ymin={y1:g}, xmax={x2:g}, ymax={y2:g}) lies "
                f"outside the {w}x{h} image (VOC coordinates are 1-based: 1 <= xmin, xmax <= width)"
            )
        boxes.append((x1 - 1, y1 - 1, x2 - 1, y2 - 1))
        labels.append(class_to_idx[name])
        difficult.append(_flag(obj, "difficult", xml_path, what))
        truncated.append(_flag(obj, "truncated", xml_path, what))

    return {
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int64),
        "difficult": np.asarray(difficult, dtype=bool),
        "truncated": np.asarray(truncated, dtype=bool),
        "size": (h, w),
    }


class VOCDetection(Dataset):
    """VOC-layout detection (+ optional semantic segmentation) dataset of :class:`Sample`.

    Args:
        root: the ``VOC20xx`` folder (containing ``Annotations``, ``ImageSets``, ``JPEGImages``).
        split: name of a list in ``ImageSets/<image_set_dir>/`` (``"trainval"``, ``"test"``...)
            or an explicit list of ids.
        image_set_dir: ``"Main"`` (detection) or ``"Segmentation"``.
        classes: class names (label k = ``classes[k-1]``). ``None``: ``<root>/classes.txt``
            when it exists, else :data:`VOC_CLASSES`.
        use_difficult: keep objects flagged ``difficult`` (with ``difficult=True``); when
            False they are dropped from the samples.
        keep_masks: load ``SegmentationClass/<id>.png`` when present (``mask=None`` otherwise).
        on_error: ``"raise"`` -> :class:`DataError` for the first bad annotation / missing
            file; ``"skip"`` -> log a warning per bad id, leave it out, count it in ``skipped``.
        check_images: also decode every image at construction (catches unreadable/16-bit
            images up front, so ``on_error="skip"`` can leave them out). Otherwise such
            images raise :class:`DataError` from ``__getitem__``.

    All annotations are parsed and validated once at construction (cached);
    ``annotation(i)`` returns the sample with ``image=None`` and ``mask=None`` without
    opening the image. ``__getitem__`` decodes the image (and the mask), checking that
    their sizes match the XML ``<size>``.
    """

    def __init__(
        self,
        root: Union[str, os.PathLike],
        split: Union[str, Sequence[str]] = "trainval",
        image_set_dir: str = "Main",
        classes: Optional[Sequence[str]] = None,
        use_difficult: bool = True,
        keep_masks: bool = True,
        on_error: str = "raise",
        check_images: bool = False,
    ):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise DataError(f"{self.root}: VOC root directory does not exist")
        if classes is None:
            cfile = os.path.join(self.root, "classes.txt")
            classes = read_classes_file(cfile) if os.path.isfile(cfile) else list(VOC_CLASSES)
        classes = list(classes)
        if len(set(classes)) != len(classes):
            raise DataError(f"{self.root}: duplicate names in class list {classes}")
        self.classes: List[str] = classes
        self.class_to_idx = {c: i + 1 for i, c in enumerate(classes)}
        self.use_difficult = use_difficult
        self.keep_masks = keep_masks
        self.on_error = on_error

        if isinstance(split, str):
            self.split = split
            all_ids = read_image_set(os.path.join(self.root, "ImageSets", image_set_dir, f"{split}.txt"))
        else:
            self.split = None
            all_ids = [str(s) for s in split]

        self.ids, self._records, self.skipped_files = load_records(
            all_ids, lambda i: self._load_record(i, check_images), on_error, self.root)
        self.skipped = len(self.skipped_files)

    # -- paths ---------------------------------------------------------------------
    def xml_path(self, img_id: str) -> str:
        return os.path.join(self.root, "Annotations", f"{img_id}.xml")

    def image_path(self, img_id: str) -> str:
        return os.path.join(self.root, "JPEGImages", f"{img_id}.jpg")

    def mask_path(self, img_id: str) -> str:
        return os.path.join(self.root, "SegmentationClass", f"{img_id}.png")

    # -- construction ------------------------------------------------------------------
    def _load_record(self, img_id: str, check_images: bool) -> dict:
        xml_path = self.xml_path(img_id)
        img_path = self.image_path(img_id)
        if not os.path.isfile(xml_path):
            raise DataError(f"{xml_path}: annotation file for listed id {img_id!r} does not exist")
        if not os.path.isfile(img_path):
            raise DataError(f"{img_path}: image file for listed id {img_id!r} does not exist")
        rec = parse_voc_xml(xml_path, self.class_to_idx, image_path=img_path)
        if not self.use_difficult:
            keep = ~rec["difficult"]
            for k in ("boxes", "labels", "difficult", "truncated"):
                rec[k] = rec[k][keep]
        mpath = self.mask_path(img_id)
        rec["mask_path"] = mpath if (self.keep_masks and os.path.isfile(mpath)) else None
        if check_images:
            self._load_image(img_id, rec)
            if rec["mask_path"] is not None:
                self._load_mask(rec["mask_path"], rec["size"])
        return rec

    # -- loading -----------------------------------------------------------------------
    def _load_image(self, img_id: str, rec: dict) -> torch.Tensor:
        path = self.image_path(img_id)
        img = load_rgb(path)
        hw = (int(img.shape[1]), int(img.shape[2]))
        if hw != rec["size"]:
            raise DataError(
                f"{path}: image is {hw[1]}x{hw[0]} (WxH) but {self.xml_path(img_id)} says "
                f"{rec['size'][1]}x{rec['size'][0]}"
            )
        return img

    def _load_mask(self, path: str, size: Tuple[int, int]) -> torch.Tensor:
        m = load_index_mask(path)
        if m.shape != tuple(size):
            raise DataError(
                f"{path}: mask is {m.shape[1]}x{m.shape[0]} (WxH) but the image is {size[1]}x{size[0]}"
            )
        bad = np.setdiff1d(np.unique(m), np.r_[np.arange(len(self.classes) + 1), 255])
        if bad.size:
            raise DataError(
                f"{path}: mask values {bad.tolist()} are not class indices "
                f"(expected 0..{len(self.classes)} or 255 = void)"
            )
        return torch.from_numpy(m)

    def __len__(self) -> int:
        return len(self.ids)

    def _sample(self, i: int, image, mask) -> Sample:
        rec = self._records[i]
        return Sample(
            image=image,
            boxes=torch.from_numpy(rec["boxes"].copy()),
            labels=torch.from_numpy(rec["labels"].copy()),
            difficult=torch.from_numpy(rec["difficult"].copy()),
            ignore=torch.zeros(len(rec["labels"]), dtype=torch.bool),
            mask=mask,
            image_id=self.ids[i],
            orig_size=rec["size"],
        )

    def annotation(self, i: int) -> Sample:
        """The sample without pixels (``image=None``, ``mask=None``); no file is opened."""
        return self._sample(i, None, None)

    def truncated(self, i: int) -> torch.Tensor:
        """VOC ``truncated`` flags (bool ``[N]``) of item ``i``, aligned with its boxes."""
        return torch.from_numpy(self._records[i]["truncated"].copy())

    def has_mask(self, i: int) -> bool:
        return self._records[i]["mask_path"] is not None

    def __getitem__(self, i: int) -> Sample:
        i = check_index(i, len(self))
        rec = self._records[i]
        image = self._load_image(self.ids[i], rec)
        mask = self._load_mask(rec["mask_path"], rec["size"]) if rec["mask_path"] else None
        return self._sample(i, image, mask)

    def __repr__(self) -> str:
        return (f"VOCDetection(root={self.root!r}, split={self.split!r}, images={len(self)}, "
                f"classes={len(self.classes)}, skipped={self.skipped})")
