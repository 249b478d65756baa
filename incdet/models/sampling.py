"""Training-batch construction for Fast R-CNN: box deltas and RoI sampling.

Box deltas follow Fast R-CNN (R-CNN parametrisation, continuous widths ``x2 - x1``):
``dx = (gx - px) / pw``, ``dy = (gy - py) / ph``, ``dw = log(gw / pw)``, ``dh = log(gh / ph)``,
each divided by its normalisation std (default ``(0.1, 0.1, 0.2, 0.2)``) so that targets have
roughly unit variance.

RoI sampling (thesis section 3.4.2, py-faster-rcnn ``minibatch.py``): per image, 64 RoIs, of
which up to 25% (16) are foreground (IoU >= 0.5 with a ground-truth box, label of that box) and
the rest background (``bg_iou_lo <= IoU < 0.5``, label 0). The thesis and its released code take
every proposal with IoU < 0.5 as a background candidate (``bg_iou_lo = 0``); py-faster-rcnn
uses ``[0.1, 0.5)``. Both are available (``bg_iou_lo``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

# exp() of a log-ratio above this is clamped (as torchvision's BoxCoder)
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


class BoxCoder:
    """Encode / decode class-specific box regression targets with a normalisation std."""

    def __init__(self, std: Sequence[float] = (0.1, 0.1, 0.2, 0.2)):
        if len(std) != 4 or any(s <= 0 for s in std):
            raise ValueError(f"box std must be 4 positive numbers, got {std}")
        self.std = tuple(float(s) for s in std)

    def encode(self, gt: Tensor, proposals: Tensor) -> Tensor:
        """Deltas ``[N, 4]`` that move ``proposals [N, 4]`` onto ``gt [N, 4]`` (both xyxy)."""
        pw = (proposals[:, 2] - proposals[:, 0]).clamp(min=1e-3)
        ph = (proposals[:, 3] - proposals[:, 1]).clamp(min=1e-3)
        px = proposals[:, 0] + 0.5 * pw
        py = proposals[:, 1] + 0.5 * ph
        gw = (gt[:, 2] - gt[:, 0]).clamp(min=1e-3)
        gh = (gt[:, 3] - gt[:, 1]).clamp(min=1e-3)
        gx = gt[:, 0] + 0.5 * gw
        gy = gt[:, 1] + 0.5 * gh
        sx, sy, sw, sh = self.std
        return torch.stack(
            [(gx - px) / pw / sx, (gy - py) / ph / sy, torch.log(gw / pw) / sw, torch.log(gh / ph) / sh], dim=1
        )

    def decode(self, deltas: Tensor, proposals: Tensor) -> Tensor:
        """Boxes from ``deltas [N, 4k]`` applied to ``proposals [N, 4]`` -> ``[N, k, 4]`` xyxy."""
        n = proposals.shape[0]
        d = deltas.reshape(n, -1, 4).float()
        proposals = proposals.float()
        pw = (proposals[:, 2] - proposals[:, 0]).clamp(min=1e-3)[:, None]
        ph = (proposals[:, 3] - proposals[:, 1]).clamp(min=1e-3)[:, None]
        px = proposals[:, 0][:, None] + 0.5 * pw
        py = proposals[:, 1][:, None] + 0.5 * ph
        sx, sy, sw, sh = self.std
        cx = d[..., 0] * sx * pw + px
        cy = d[..., 1] * sy * ph + py
        w = torch.exp((d[..., 2] * sw).clamp(max=BBOX_XFORM_CLIP)) * pw
        h = torch.exp((d[..., 3] * sh).clamp(max=BBOX_XFORM_CLIP)) * ph
        return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


@dataclass
class SamplerConfig:
    rois_per_image: int = 64
    fg_fraction: float = 0.25
    fg_iou: float = 0.5
    bg_iou_hi: float = 0.5
    bg_iou_lo: float = 0.0
    add_gt_as_proposals: bool = False
    gt_jitter: int = 0  # jittered copies of each ground-truth box added as candidate RoIs
    gt_jitter_scale: float = 0.15  # jitter std, relative to the box's width / height


def jitter_boxes(gt_boxes: Tensor, n: int, scale: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """``n`` random copies of every box of ``gt_boxes [N, 4]`` (xyxy) -> ``[N * n, 4]``: each
    coordinate moved by a normal offset of std ``scale`` x the box's width (x) or height (y).
    The copies are kept only as candidates: the sampler labels them by IoU like any proposal."""
    if n <= 0 or gt_boxes.numel() == 0:
        return gt_boxes.new_zeros((0, 4))
    g = gt_boxes.float().repeat_interleave(n, 0)
    wh = (g[:, 2:] - g[:, :2]).clamp(min=1.0).repeat(1, 2)
    noise = torch.randn(g.shape, generator=generator, device="cpu").to(g.device)
    b = g + noise * scale * wh
    x1 = torch.minimum(b[:, 0], b[:, 2] - 1)
    y1 = torch.minimum(b[:, 1], b[:, 3] - 1)
    return torch.stack([x1, y1, torch.maximum(b[:, 2], x1 + 1), torch.maximum(b[:, 3], y1 + 1)], 1).to(gt_boxes.dtype)


@dataclass
class SampledRoIs:
    """One image's training RoIs: ``rois [R, 4]``, ``labels [R]`` (0 = background),
    ``targets [R, 4]`` (encoded deltas; zeros for background)."""

    rois: Tensor
    labels: Tensor
    targets: Tensor

    @property
    def num_fg(self) -> int:
        return int((self.labels > 0).sum())


def _choice(idx: Tensor, k: int, generator: Optional[torch.Generator]) -> Tensor:
    if idx.numel() <= k:
        return idx
    perm = torch.randperm(idx.numel(), generator=generator, device="cpu")[:k].to(idx.device)
    return idx[perm]


def sample_rois(
    proposals: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    coder: BoxCoder,
    cfg: SamplerConfig,
    generator: Optional[torch.Generator] = None,
) -> SampledRoIs:
    """Sample one image's Fast R-CNN training RoIs.

    Args:
        proposals: ``[K, 4]`` xyxy candidate boxes.
        gt_boxes: ``[N, 4]`` xyxy ground truth (boxes to ignore must be removed beforehand).
        gt_labels: ``[N]`` 1-based labels.
    Returns:
        :class:`SampledRoIs` with at most ``cfg.rois_per_image`` rows: up to
        ``round(fg_fraction * rois_per_image)`` foreground RoIs (IoU >= ``fg_iou``), then
        background RoIs (``bg_iou_lo <= IoU < bg_iou_hi``) filling the rest. Fewer rows are
        returned when there are not enough candidates (nothing is repeated). An image without
        ground truth gives background RoIs only.
    """
    device = proposals.device
    if cfg.add_gt_as_proposals and gt_boxes.numel():
        proposals = torch.cat([proposals, gt_boxes.to(proposals.dtype)], 0)
    if cfg.gt_jitter > 0 and gt_boxes.numel():
        proposals = torch.cat([proposals, jitter_boxes(gt_boxes, cfg.gt_jitter, cfg.gt_jitter_scale,
                                                       generator).to(proposals.dtype)], 0)
    if gt_boxes.numel():
        iou = box_iou(proposals, gt_boxes.to(proposals.dtype))
        max_iou, argmax = iou.max(dim=1)
    else:
        max_iou = torch.zeros(proposals.shape[0], device=device)
        argmax = torch.zeros(proposals.shape[0], dtype=torch.long, device=device)
    n_fg_max = int(round(cfg.fg_fraction * cfg.rois_per_image))
    fg_idx = torch.nonzero(max_iou >= cfg.fg_iou).flatten()
    fg_idx = _choice(fg_idx, n_fg_max, generator)
    bg_mask = (max_iou < cfg.bg_iou_hi) & (max_iou >= cfg.bg_iou_lo)
    if not gt_boxes.numel():
        bg_mask = torch.ones_like(bg_mask)  # nothing to overlap: every proposal is background
    bg_idx = torch.nonzero(bg_mask).flatten()
    bg_idx = _choice(bg_idx, cfg.rois_per_image - fg_idx.numel(), generator)
    keep = torch.cat([fg_idx, bg_idx])
    rois = proposals[keep]
    labels = torch.zeros(keep.numel(), dtype=torch.long, device=device)
    targets = torch.zeros((keep.numel(), 4), dtype=torch.float32, device=device)
    if fg_idx.numel():
        matched = argmax[fg_idx]
        labels[: fg_idx.numel()] = gt_labels.to(device)[matched]
        targets[: fg_idx.numel()] = coder.encode(gt_boxes[matched].float(), proposals[fg_idx].float())
    return SampledRoIs(rois=rois, labels=labels, targets=targets)


def count_positives(proposals: Tensor, gt_boxes: Tensor, fg_iou: float = 0.5) -> int:
    """Number of proposals with IoU >= ``fg_iou`` to some ground-truth box."""
    if proposals.numel() == 0 or gt_boxes.numel() == 0:
        return 0
    return int((box_iou(proposals.float(), gt_boxes.float()).max(dim=1).values >= fg_iou).sum())


def flip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Mirror xyxy boxes horizontally in an image of ``width`` pixels (0-based, inclusive
    pixel convention of the sample record: column ``c`` maps to ``width - 1 - c``)."""
    out = boxes.clone()
    out[:, 0] = width - 1 - boxes[:, 2]
    out[:, 2] = width - 1 - boxes[:, 0]
    return out


__all__ = ["BoxCoder", "SamplerConfig", "jitter_boxes", "SampledRoIs", "sample_rois", "count_positives", "flip_boxes"]
