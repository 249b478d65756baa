"""Write VOC-layout items (annotation XML, JPEG, palette mask, image-set lists).

The project's one VOC writer: ``shapes-voc`` (:mod:`incdet.data.shapes`) and the test fixtures
write their XML and palette PNGs with it.
Boxes are given in the devkit's 1-based inclusive pixel coordinates, exactly as they
appear in the XML.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image


def voc_palette() -> list:
    """The standard VOC colour map (256 RGB entries, flattened) used by SegmentationClass PNGs."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal.extend((r, g, b))
    return pal


_PALETTE = voc_palette()


def annotation_xml(
    filename: str,
    size: Tuple[int, int],
    objects: Iterable[dict],
    folder: str = "VOC",
    source: Optional[Dict[str, str]] = None,
    segmented: Optional[int] = None,
    indent: str = "  ",
) -> str:
    """XML text for one image. ``size`` is ``(H, W)``; each object is a dict with ``name``,
    ``bbox`` ``(xmin, ymin, xmax, ymax)`` (1-based), optional ``pose``, ``truncated``,
    ``occluded`` (written only when given), ``difficult``. ``source`` (tag -> text, in order)
    adds a ``<source>`` block after ``<filename>``; ``segmented`` a ``<segmented>`` flag after
    ``<size>``; ``indent`` is one indentation level."""
    h, w = size
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = filename
    if source is not None:
        src = ET.SubElement(root, "source")
        for tag, text in source.items():
            ET.SubElement(src, tag).text = text
    s = ET.SubElement(root, "size")
    ET.SubElement(s, "width").text = str(int(w))
    ET.SubElement(s, "height").text = str(int(h))
    ET.SubElement(s, "depth").text = "3"
    if segmented is not None:
        ET.SubElement(root, "segmented").text = str(int(segmented))
    for o in objects:
        e = ET.SubElement(root, "object")
        ET.SubElement(e, "name").text = o["name"]
        ET.SubElement(e, "pose").text = o.get("pose", "Unspecified")
        ET.SubElement(e, "truncated").text = str(int(o.get("truncated", 0)))
        if "occluded" in o:
            ET.SubElement(e, "occluded").text = str(int(o["occluded"]))
        ET.SubElement(e, "difficult").text = str(int(o.get("difficult", 0)))
        bb = ET.SubElement(e, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), o["bbox"]):
            ET.SubElement(bb, tag).text = f"{v:g}" if isinstance(v, float) else str(v)
    ET.indent(root, space=indent)
    return ET.tostring(root, encoding="unicode")


def save_palette_png(index: np.ndarray, path: Union[str, os.PathLike]) -> None:
    """Write ``uint8 [H, W]`` indices (class / object ids, 255 void) as a VOC palette PNG."""
    im = Image.fromarray(np.asarray(index, dtype=np.uint8), "P")
    im.putpalette(_PALETTE)
    im.save(path, format="PNG", optimize=False, compress_level=6)


def write_voc_item(
    root: str,
    img_id: str,
    image: np.ndarray,
    objects: Sequence[dict],
    mask: Optional[np.ndarray] = None,
    quality: int = 95,
) -> None:
    """Write ``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml`` and, when ``mask`` is given
    (``uint8 [H, W]`` class indices, 255 void), ``SegmentationClass/<id>.png`` as a palette PNG."""
    for d in ("JPEGImages", "Annotations", "SegmentationClass"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    image = np.asarray(image, dtype=np.uint8)
    Image.fromarray(image).save(os.path.join(root, "JPEGImages", f"{img_id}.jpg"), quality=quality)
    with open(os.path.join(root, "Annotations", f"{img_id}.xml"), "w", encoding="utf-8") as f:
        f.write(annotation_xml(f"{img_id}.jpg", image.shape[:2], objects))
    if mask is not None:
        save_palette_png(mask, os.path.join(root, "SegmentationClass", f"{img_id}.png"))


def write_image_set(root: str, name: str, ids: Sequence[str], image_set_dir: str = "Main") -> None:
    d = os.path.join(root, "ImageSets", image_set_dir)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"{name}.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{i}\n" for i in ids)
