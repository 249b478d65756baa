"""Shared inference I/O for the detectors: image inputs, COCO-format results, overlays.

Used by ``incdet predict`` and ``blitznet predict`` (and the README showcase).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from incdet.data.images import load_rgb
from incdet.data.shapes import voc_palette
from incdet.errors import DataError


def to_chw_uint8(img: Any) -> torch.Tensor:
    """An image as a uint8 ``[3, H, W]`` tensor, from a path (read with
    :func:`incdet.data.images.load_rgb`: clear errors for missing, unreadable or 16-bit files), a
    PIL image, a uint8 ``[H, W, 3]`` array or a uint8 ``[3, H, W]`` tensor."""
    if isinstance(img, (str, Path)):
        return load_rgb(str(img))
    if isinstance(img, Image.Image):
        return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)
    if isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise DataError(f"numpy images must be uint8 [H, W, 3], got {img.dtype} {img.shape}")
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
    if isinstance(img, torch.Tensor):
        if img.dim() != 3 or img.shape[0] != 3 or img.dtype != torch.uint8:
            raise DataError(f"tensor images must be uint8 [3, H, W], got {img.dtype} {tuple(img.shape)}")
        return img
    raise DataError(f"unsupported image type {type(img).__name__}")


def palette() -> List[int]:
    """The VOC colour map (256 entries, 255 = void)."""
    return voc_palette()


def coco_results(pred: dict, image_id: Any, classes: Sequence[str]) -> List[dict]:
    """Detections in the COCO results format (``bbox`` = ``[x, y, w, h]``, labels 1-based)."""
    out = []
    for b, l, s in zip(pred["boxes"].tolist(), pred["labels"].tolist(), pred["scores"].tolist()):
        out.append({"image_id": image_id, "category_id": int(l), "category": classes[int(l) - 1],
                    "bbox": [round(b[0], 2), round(b[1], 2), round(b[2] - b[0], 2), round(b[3] - b[1], 2)],
                    "score": round(float(s), 5)})
    return out


def overlay(pred: dict, image: torch.Tensor, classes: Sequence[str], vis_thresh: float = 0.3,
            title: Optional[str] = None) -> Image.Image:
    """The image with the predicted mask (when ``pred["mask"]`` is given) blended in and the
    boxes scoring at least ``vis_thresh`` drawn with their class name and score."""
    from PIL import ImageDraw

    rgb = image.permute(1, 2, 0).numpy()
    base = Image.fromarray(rgb)
    pal = palette()
    if pred.get("mask") is not None:
        mimg = Image.fromarray(np.asarray(pred["mask"]).astype(np.uint8), mode="P")
        mimg.putpalette(pal)
        colour = np.asarray(mimg.convert("RGB"))
        fg = (np.asarray(pred["mask"]) > 0)[..., None]
        base = Image.fromarray(np.where(fg, (0.5 * rgb + 0.5 * colour), rgb).astype(np.uint8))
    draw = ImageDraw.Draw(base)
    for b, l, s in zip(pred["boxes"].tolist(), pred["labels"].tolist(), pred["scores"].tolist()):
        if s < vis_thresh:
            continue
        col = tuple(pal[3 * int(l):3 * int(l) + 3])
        draw.rectangle(b, outline=col, width=2)
        draw.text((b[0] + 2, b[1] + 1), f"{classes[int(l) - 1]} {s:.2f}", fill=col)
    if title:
        draw.rectangle([0, 0, base.width, 12], fill=(0, 0, 0))
        draw.text((2, 0), title, fill=(255, 255, 255))
    return base


def write_outputs(pred: dict, image: torch.Tensor, stem: str, out_dir: Union[str, Path], classes: Sequence[str],
                  vis_thresh: float = 0.3) -> Dict[str, str]:
    """Write ``STEM.json`` (COCO results), ``STEM_mask.png`` (palette; only when ``pred["mask"]``
    is given) and ``STEM_overlay.jpg``; returns their paths by kind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    jpath = out_dir / f"{stem}.json"
    jpath.write_text(json.dumps(coco_results(pred, stem, classes), indent=1))
    files["json"] = str(jpath)
    if pred.get("mask") is not None:
        mimg = Image.fromarray(np.asarray(pred["mask"]).astype(np.uint8), mode="P")
        mimg.putpalette(palette())
        mpath = out_dir / f"{stem}_mask.png"
        mimg.save(mpath)
        files["mask"] = str(mpath)
    opath = out_dir / f"{stem}_overlay.jpg"
    overlay(pred, image, classes, vis_thresh).save(opath, quality=90)
    files["overlay"] = str(opath)
    return files


__all__ = ["to_chw_uint8", "palette", "coco_results", "overlay", "write_outputs"]
