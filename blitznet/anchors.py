"""SSD anchor boxes for BlitzNet, generated from the actual feature-map sizes.

Per level k (finest first) the anchors at every cell are, in this order: one box per aspect
ratio in ``{1, r1, 1/r1, r2, 1/r2, ...}`` (default ``{1, 2, 1/2, 3, 1/3}``) at scale ``s_k``,
plus an extra square of scale ``sqrt(s_k * s_{k+1})`` -- 6 anchors per cell by default.
Scales follow the SSD recipe: the finest level has ``first_scale`` (0.1), the other ``m - 1``
levels are spaced linearly from ``min_scale`` (0.2) to ``max_scale`` (0.9), and ``s_{m+1}`` is
one more linear step (SSD300: 30/60/111/162/213/264 px with extra squares up to 315 px).

Anchors are ordered level by level, then row (y), column (x), then anchor -- the order in
which the detection head flattens its outputs.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch


def anchors_per_location(aspect_ratios: Sequence[float]) -> int:
    """1 (ratio 1) + 2 per extra ratio (r and 1/r) + 1 extra square."""
    return 2 + 2 * len(aspect_ratios)


def ssd_scales(n_levels: int, min_scale: float = 0.2, max_scale: float = 0.9,
               first_scale: Optional[float] = 0.1) -> List[float]:
    """SSD scales for ``n_levels`` levels plus one extra entry (``s_{m+1}``) for the extra squares."""
    if n_levels < 1:
        raise ValueError("need at least one level")
    if first_scale is not None and n_levels >= 2:
        rest = n_levels - 1
        step = (max_scale - min_scale) / max(rest - 1, 1)
        scales = [first_scale] + [min_scale + step * i for i in range(rest)]
        return scales + [scales[-1] + step]
    step = (max_scale - min_scale) / max(n_levels - 1, 1)
    scales = [min_scale + step * i for i in range(n_levels)]
    return scales + [scales[-1] + step]


def anchor_count(feature_sizes: Sequence[Tuple[int, int]], aspect_ratios: Sequence[float] = (2.0, 3.0)) -> int:
    """Number of anchors: ``sum_k h_k * w_k * anchors_per_location``."""
    return sum(h * w for h, w in feature_sizes) * anchors_per_location(aspect_ratios)


def generate_anchors(feature_sizes: Sequence[Tuple[int, int]], image_size: Tuple[int, int],
                     aspect_ratios: Sequence[float] = (2.0, 3.0), scales: Optional[Sequence[float]] = None,
                     clip: bool = True, device=None, dtype=torch.float32) -> torch.Tensor:
    """Anchors ``[N, 4]`` in xyxy pixel coordinates of the network input ``image_size = (H, W)``.

    ``scales`` has ``len(feature_sizes) + 1`` entries (see :func:`ssd_scales`), relative to the
    input side. With ``clip`` the boxes are clipped to the image (as SSD does).
    """
    H, W = image_size
    if scales is None:
        scales = ssd_scales(len(feature_sizes))
    if len(scales) != len(feature_sizes) + 1:
        raise ValueError(f"need {len(feature_sizes) + 1} scales for {len(feature_sizes)} levels, got {len(scales)}")
    out = []
    for k, (h, w) in enumerate(feature_sizes):
        s, s_next = scales[k], scales[k + 1]
        wh = [(s, s)]
        for r in aspect_ratios:
            q = math.sqrt(r)
            wh += [(s * q, s / q), (s / q, s * q)]
        e = math.sqrt(s * s_next)
        wh.append((e, e))
        wh_t = torch.tensor(wh, dtype=dtype, device=device)  # [A, 2] relative (w, h)
        ys = (torch.arange(h, dtype=dtype, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=dtype, device=device) + 0.5) / w
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx, cy], -1).reshape(-1, 1, 2).expand(-1, wh_t.shape[0], 2)
        half = wh_t.unsqueeze(0) / 2
        boxes = torch.cat([centres - half, centres + half], -1).reshape(-1, 4)
        out.append(boxes)
    boxes = torch.cat(out)
    if clip:
        boxes = boxes.clamp(0.0, 1.0)
    scale = torch.tensor([W, H, W, H], dtype=dtype, device=device)
    return boxes * scale


def conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1
