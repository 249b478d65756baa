"""Shared inference I/O for the detectors: image inputs, COCO-format results, overlays.

Used by ``incdet predict`` and ``blitznet predict`` (and the README showcase).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

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


# libjpeg refuses images with a side above this (JPEG_MAX_DIMENSION)
JPEG_MAX_SIDE = 65500


def output_names(stem: str, with_mask: bool) -> Dict[str, str]:
    """The file names :func:`write_outputs` writes for ``stem``, by kind."""
    names = {"json": f"{stem}.json"}
    if with_mask:
        names["mask"] = f"{stem}_mask.png"
    names["overlay"] = f"{stem}_overlay.jpg"
    return names


def output_stems(paths: Sequence[Union[str, Path]], with_mask: bool, reserved: Sequence[str] = ()) -> List[str]:
    """The output stem of each input image: its file stem (``a/x.jpg`` -> ``x``).

    Raises :class:`DataError` naming both inputs when two of them would write a file of the
    same name (compared case-insensitively, as on macOS and Windows file systems; e.g.
    ``a/same.jpg`` and ``b/same.png``), or when an output name equals one of ``reserved``
    (e.g. ``predictions.json``). Outputs are never silently overwritten by a later image.
    """
    owner: Dict[str, str] = {r.casefold(): "(the summary file)" for r in reserved}
    stems = []
    for path in paths:
        stem = Path(path).stem
        for name in output_names(stem, with_mask).values():
            prev = owner.get(name.casefold())
            if prev is not None:
                raise DataError(f"{path}: its output {name} would overwrite that of {prev}; "
                                "give input images distinct file names")
            owner[name.casefold()] = str(path)
        stems.append(stem)
    return stems


def check_writable_size(image: Any, size: Sequence[int]) -> None:
    """Raise :class:`DataError` when an ``(H, W)`` image is too large for its JPEG overlay."""
    h, w = int(size[0]), int(size[1])
    if max(h, w) > JPEG_MAX_SIDE:
        raise DataError(f"{image}: image is {w}x{h} pixels; the overlay JPEG allows at most "
                        f"{JPEG_MAX_SIDE} pixels a side")


def encode_outputs(pred: dict, image: torch.Tensor, stem: str, classes: Sequence[str],
                   vis_thresh: float = 0.3) -> Dict[str, Tuple[str, bytes]]:
    """The outputs of one image, encoded in memory: ``{kind: (file name, bytes)}`` with
    ``json`` (COCO results), ``mask`` (palette PNG; only when ``pred["mask"]`` is given) and
    ``overlay`` (JPEG). Raises :class:`DataError` when the image is too large for a JPEG."""
    import io

    check_writable_size(stem, image.shape[-2:])
    names = output_names(stem, pred.get("mask") is not None)
    out = {"json": (names["json"], json.dumps(coco_results(pred, stem, classes), indent=1).encode())}
    if pred.get("mask") is not None:
        mimg = Image.fromarray(np.asarray(pred["mask"]).astype(np.uint8), mode="P")
        mimg.putpalette(palette())
        buf = io.BytesIO()
        mimg.save(buf, format="PNG")
        out["mask"] = (names["mask"], buf.getvalue())
    buf = io.BytesIO()
    try:
        overlay(pred, image, classes, vis_thresh).save(buf, format="JPEG", quality=90)
    except OSError as e:  # pragma: no cover - sizes are checked above
        raise DataError(f"{stem}: cannot encode the overlay JPEG ({e})") from None
    out["overlay"] = (names["overlay"], buf.getvalue())
    return out


class StagedOutputs:
    """All-or-nothing writes into an output folder.

    ``with StagedOutputs(out_dir) as st: st.add(name, data); ...`` writes every file into a
    hidden staging folder inside ``out_dir`` and, when the block ends without an error, moves
    them into ``out_dir`` (``os.replace``, each file atomic). When the block raises, the staging
    folder is removed (and ``out_dir`` too when this created it): no partial output is left.
    An ``out_dir`` that is an existing file, a target name that is an existing folder, or a
    name added twice raises :class:`DataError`; OS errors while writing become
    :class:`DataError` naming the path.
    """

    def __init__(self, out_dir: Union[str, Path]):
        self.out_dir = Path(out_dir)
        self.names: List[str] = []
        self._stage: Optional[Path] = None
        self._created = False

    def __enter__(self) -> "StagedOutputs":
        import tempfile

        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise DataError(f"{self.out_dir}: output folder is an existing file")
        try:
            if not self.out_dir.exists():
                self.out_dir.mkdir(parents=True)
                self._created = True
            self._stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.out_dir))
        except OSError as e:
            raise DataError(f"{self.out_dir}: cannot create the output folder ({e.strerror or e})") from None
        return self

    def add(self, name: str, data: bytes) -> str:
        """Stage ``data`` as ``out_dir/name``; returns that final path. A name already added in
        this block (compared case-insensitively) raises :class:`DataError`: two outputs of one
        call never overwrite each other."""
        target = self.out_dir / name
        if name.casefold() in (n.casefold() for n in self.names):
            raise DataError(f"{target}: two outputs of this call have the same file name")
        if target.is_dir():
            raise DataError(f"{target}: an output file name is an existing folder")
        try:
            (self._stage / name).write_bytes(data)
        except OSError as e:
            raise DataError(f"{target}: cannot write ({e.strerror or e})") from None
        self.names.append(name)
        return str(target)

    def __exit__(self, exc_type, exc, tb) -> None:
        import shutil

        try:
            if exc_type is None:
                for name in self.names:
                    try:
                        os.replace(self._stage / name, self.out_dir / name)
                    except OSError as e:
                        raise DataError(f"{self.out_dir / name}: cannot write ({e.strerror or e})") from None
        finally:
            shutil.rmtree(self._stage, ignore_errors=True)
            if exc_type is not None and self._created:
                shutil.rmtree(self.out_dir, ignore_errors=True)


def write_outputs(pred: dict, image: torch.Tensor, stem: str, out_dir: Union[str, Path], classes: Sequence[str],
                  vis_thresh: float = 0.3) -> Dict[str, str]:
    """Write ``STEM.json`` (COCO results), ``STEM_mask.png`` (palette; only when ``pred["mask"]``
    is given) and ``STEM_overlay.jpg``; returns their paths by kind. Everything is encoded
    before anything is written, and the files appear together or not at all
    (:class:`StagedOutputs`); an image too large for its overlay raises :class:`DataError`."""
    enc = encode_outputs(pred, image, stem, classes, vis_thresh)
    with StagedOutputs(out_dir) as st:
        return {kind: st.add(name, data) for kind, (name, data) in enc.items()}


__all__ = ["to_chw_uint8", "palette", "coco_results", "overlay", "write_outputs", "encode_outputs", "output_names",
           "output_stems", "check_writable_size", "StagedOutputs", "JPEG_MAX_SIDE"]
