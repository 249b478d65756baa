"""SSD data augmentation (Liu et al. 2016, as used by BlitzNet) with albumentations.

Train pipeline, applied consistently to image, boxes and mask:
1. photometric distortions (brightness, contrast, saturation, hue; ``A.ColorJitter``);
2. zoom-out with probability ``expand_p``: the image is placed at a random position on a canvas
   ``r`` times larger (``r ~ U[1, max_expand]``) filled with the ImageNet mean colour; the new
   mask area is void (255) (``A.PadIfNeeded(position="random")``);
3. random crop with a minimum IoU overlap (SSD's sampler: min IoU drawn from
   {none, 0.1, 0.3, 0.5, 0.7, 0.9} or the whole image; crop side in [0.3, 1], aspect ratio in
   [1/2, 2]; boxes whose centre falls outside the crop are dropped, the others clipped;
   ``A.Crop`` with the sampled window);
4. horizontal flip (p = 0.5) and resize to ``size x size`` (``A.HorizontalFlip``, ``A.Resize``;
   the mask is resized with nearest neighbour).

Input: an ``incdet.data.Sample`` (or anything with the same attributes). Output: ``(image
uint8 [3, S, S], target)`` with ``target = {boxes [G, 4] float32 (0-based inclusive xyxy in
network pixels), labels, difficult, ignore, mask [S, S] uint8 or None, has_det, image_id,
orig_size}``.

Boxes are taken in the devkit's inclusive convention (``[x1, x2]`` covers ``x2 - x1 + 1``
pixels, as VOC Samples); COCO Samples (continuous ``x2 = x + w``) come out 1 pixel larger.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

# albumentations asks PyPI for a newer version at import time (a network call, and a warning on
# machines without internet): this package never goes online at run time.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from incdet.errors import DataError

MEAN_RGB = (124, 116, 104)
_MIN_IOUS = (None, 0.1, 0.3, 0.5, 0.7, 0.9, -1.0)  # -1: keep the whole image


def _get(sample, name, default=None):
    return getattr(sample, name, default) if not isinstance(sample, dict) else sample.get(name, default)


def _to_numpy(sample):
    img = _get(sample, "image")
    if img is None:
        raise DataError(f"sample {_get(sample, 'image_id')!r} has no image")
    if not (isinstance(img, torch.Tensor) and img.dtype == torch.uint8 and img.dim() == 3 and img.shape[0] == 3):
        raise DataError(f"sample {_get(sample, 'image_id')!r}: image must be uint8 [3, H, W], got "
                        f"{getattr(img, 'dtype', type(img))} {tuple(getattr(img, 'shape', ()))}")
    img = np.ascontiguousarray(img.permute(1, 2, 0).numpy())
    H, W = img.shape[:2]
    boxes = _get(sample, "boxes")
    boxes = torch.zeros((0, 4)) if boxes is None else boxes.float()
    n = len(boxes)
    labels = _get(sample, "labels")
    labels = torch.zeros(0, dtype=torch.long) if labels is None else labels.long()
    diff = _get(sample, "difficult")
    diff = torch.zeros(n, dtype=torch.bool) if diff is None else diff.bool()
    ign = _get(sample, "ignore")
    ign = torch.zeros(n, dtype=torch.bool) if ign is None else ign.bool()
    mask = _get(sample, "mask")
    if mask is not None:
        if tuple(mask.shape) != (H, W):
            raise DataError(f"sample {_get(sample, 'image_id')!r}: mask {tuple(mask.shape)} does not match image {(H, W)}")
        mask = np.ascontiguousarray(mask.numpy().astype(np.uint8))
    # devkit-inclusive [x1, x2] -> continuous [x1, x2 + 1), clipped to the image
    cont = boxes.clone()
    if n:
        cont[:, 2:] += 1
        cont[:, 0::2] = cont[:, 0::2].clamp(0, W)
        cont[:, 1::2] = cont[:, 1::2].clamp(0, H)
    ok = (cont[:, 2] > cont[:, 0]) & (cont[:, 3] > cont[:, 1]) if n else torch.zeros(0, dtype=torch.bool)
    return img, cont[ok].numpy(), labels[ok], diff[ok], ign[ok], mask


def _target(sample, boxes_cont: np.ndarray, labels, diff, ign, mask, keep_idx) -> dict:
    b = torch.as_tensor(np.asarray(boxes_cont, dtype=np.float32).reshape(-1, 4))
    if len(b):
        b[:, 2:] -= 1  # back to inclusive
    keep = torch.as_tensor(np.asarray(keep_idx, dtype=np.int64))
    has_det = _get(sample, "has_det")
    if has_det is None:  # a sample with a mask and no boxes is a segmentation-only image
        has_det = not (_get(sample, "mask") is not None and len(labels) == 0)
    return {
        "boxes": b, "labels": labels[keep], "difficult": diff[keep], "ignore": ign[keep],
        "mask": None if mask is None else torch.as_tensor(np.ascontiguousarray(mask)),
        "has_det": bool(has_det), "image_id": _get(sample, "image_id"), "orig_size": _get(sample, "orig_size"),
    }


def _iou_np(boxes: np.ndarray, win: np.ndarray) -> np.ndarray:
    lt = np.maximum(boxes[:, :2], win[:2])
    rb = np.minimum(boxes[:, 2:], win[2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[:, 0] * wh[:, 1]
    a = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    aw = (win[2] - win[0]) * (win[3] - win[1])
    return inter / np.maximum(a + aw - inter, 1e-9)


def sample_ssd_crop(rng: np.random.Generator, H: int, W: int, boxes: np.ndarray, trials: int = 50):
    """SSD's min-IoU crop sampler. Returns ``(x0, y0, x1, y1)`` or ``None`` (keep the image)."""
    while True:
        mode = _MIN_IOUS[rng.integers(len(_MIN_IOUS))]
        if mode == -1.0:
            return None
        min_iou = -np.inf if mode is None else mode
        for _ in range(trials):
            w = rng.uniform(0.3 * W, W)
            h = rng.uniform(0.3 * H, H)
            if h / w < 0.5 or h / w > 2:
                continue
            x0 = rng.uniform(0, W - w)
            y0 = rng.uniform(0, H - h)
            win = np.array([int(x0), int(y0), int(x0 + w), int(y0 + h)])
            if win[2] - win[0] < 2 or win[3] - win[1] < 2:
                continue
            if len(boxes) == 0:
                return tuple(win)
            if _iou_np(boxes, win).min() < min_iou:
                continue
            c = (boxes[:, :2] + boxes[:, 2:]) / 2
            inside = (c[:, 0] > win[0]) & (c[:, 0] < win[2]) & (c[:, 1] > win[1]) & (c[:, 1] < win[3])
            if not inside.any():
                continue
            return tuple(win)
        if len(boxes) == 0:
            return None


class SSDAugment:
    """Callable: ``Sample -> (image uint8 [3, S, S], target)`` (see module docstring)."""

    def __init__(self, size: int, max_expand: float = 4.0, expand_p: float = 0.5, crop: bool = True,
                 flip_p: float = 0.5, photometric: bool = True, seed: Optional[int] = None):
        self.size = size
        self.max_expand = max_expand
        self.expand_p = expand_p
        self.crop = crop
        self.rng = np.random.default_rng(seed)
        bbox = A.BboxParams(format="pascal_voc", label_fields=["idx"], clip=True, filter_invalid_bboxes=True)
        self.photometric = A.Compose([A.ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05, p=0.5)],
                                     seed=seed) if photometric else None
        self.final = A.Compose([A.HorizontalFlip(p=flip_p), A.Resize(size, size, interpolation=cv2.INTER_LINEAR,
                                                                     mask_interpolation=cv2.INTER_NEAREST)],
                               bbox_params=bbox, seed=seed)
        self._bbox = bbox

    def reseed(self, seed: int) -> None:
        """Make the next samples a function of ``seed``."""
        self.rng = np.random.default_rng(seed)
        if self.photometric is not None:
            self.photometric.set_random_seed(seed)
        self.final.set_random_seed(seed + 1)

    def _apply(self, transform, img, boxes, idx, mask):
        kw = dict(image=img, bboxes=boxes, idx=idx)
        if mask is not None:
            kw["mask"] = mask
        r = transform(**kw)
        return r["image"], np.asarray(r["bboxes"], dtype=np.float32).reshape(-1, 4), list(r["idx"]), r.get("mask")

    def __call__(self, sample) -> Tuple[torch.Tensor, dict]:
        img, boxes, labels, diff, ign, mask = _to_numpy(sample)
        idx = list(range(len(boxes)))
        if self.photometric is not None:
            img = self.photometric(image=img)["image"]
        H, W = img.shape[:2]
        if self.max_expand > 1 and self.rng.random() < self.expand_p:
            r = self.rng.uniform(1, self.max_expand)
            pad = A.Compose([A.PadIfNeeded(min_height=int(H * r), min_width=int(W * r), position="random",
                                           border_mode=cv2.BORDER_CONSTANT, fill=MEAN_RGB, fill_mask=255)],
                            bbox_params=self._bbox, seed=int(self.rng.integers(2**31)))
            img, boxes, idx, mask = self._apply(pad, img, boxes, idx, mask)
            H, W = img.shape[:2]
        if self.crop:
            win = sample_ssd_crop(self.rng, H, W, boxes)
            if win is not None:
                x0, y0, x1, y1 = win
                if len(boxes):
                    c = (boxes[:, :2] + boxes[:, 2:]) / 2
                    inside = (c[:, 0] > x0) & (c[:, 0] < x1) & (c[:, 1] > y0) & (c[:, 1] < y1)
                    boxes, idx = boxes[inside], [i for i, k in zip(idx, inside) if k]
                crop = A.Compose([A.Crop(x_min=x0, y_min=y0, x_max=x1, y_max=y1)], bbox_params=self._bbox)
                img, boxes, idx, mask = self._apply(crop, img, boxes, idx, mask)
        img, boxes, idx, mask = self._apply(self.final, img, boxes, idx, mask)
        t = _target(sample, boxes, labels, diff, ign, mask, idx)
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous(), t


class ResizeOnly:
    """Eval transform: resize image (and mask, nearest) to ``size x size``; boxes scaled."""

    def __init__(self, size: int):
        self.size = size
        self.t = A.Compose([A.Resize(size, size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)],
                           bbox_params=A.BboxParams(format="pascal_voc", label_fields=["idx"], clip=True,
                                                    filter_invalid_bboxes=True))

    def __call__(self, sample) -> Tuple[torch.Tensor, dict]:
        img, boxes, labels, diff, ign, mask = _to_numpy(sample)
        kw = dict(image=img, bboxes=boxes, idx=list(range(len(boxes))))
        if mask is not None:
            kw["mask"] = mask
        r = self.t(**kw)
        t = _target(sample, r["bboxes"], labels, diff, ign, r.get("mask"), list(r["idx"]))
        return torch.from_numpy(np.ascontiguousarray(r["image"])).permute(2, 0, 1).contiguous(), t
