"""``shapes-pretrain``: a generated classification set that shares no class with shapes-voc.

It plays the role ImageNet plays in the papers: the ResNet trunks of incdet and BlitzNet are
pretrained on it (``incdet pretrain``) before they learn shapes-voc. Each image shows one object
over the same kind of cluttered background as shapes-voc (gradient, smooth colour noise, lines,
blobs: :func:`incdet.data.shapes.draw_background`), and its class is a *pattern* on a *shape*
drawn from sets disjoint from shapes-voc's:

====================  =================================================  ==============================
                      shapes-pretrain                                    shapes-voc (never drawn here)
====================  =================================================  ==============================
shapes                hexagon, ellipse, diamond, ring, pentagon, arrow   circle, square, triangle, star, cross
patterns              grid, zigzag, rings, waves, halves                 solid, striped, checkered, dotted
classes               30 (every pattern on every shape)                  20
====================  =================================================  ==============================

So no pretraining class is a shapes-voc class, and no shapes-voc outline or fill pattern is
drawn as an object (what is shared is the generic visual vocabulary: edges, corners, colours,
periodic textures, the clutter of the background; an arrow's head is a triangle piece, as
ImageNet shares parts with VOC). Colours are random per object and carry no class.

Image ``i`` of a split is drawn from ``SeedSequence(seed, spawn_key=(split_code, i))``: the same
arguments give the same pixels, images can be drawn in any order and in worker processes, and
the validation images never overlap the training stream (different spawn key).
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch

from incdet.data import shapes as _shapes

PRETRAIN_SHAPES: Tuple[str, ...] = ("hexagon", "ellipse", "diamond", "ring", "pentagon", "arrow")
PRETRAIN_PATTERNS: Tuple[str, ...] = ("grid", "zigzag", "rings", "waves", "halves")
#: class index -> (pattern, shape); index = pattern_index * len(shapes) + shape_index
PRETRAIN_CLASSES: Tuple[str, ...] = tuple(f"{p}_{s}" for p in PRETRAIN_PATTERNS for s in PRETRAIN_SHAPES)

assert not set(PRETRAIN_SHAPES) & set(_shapes.SHAPES) and not set(PRETRAIN_PATTERNS) & set(_shapes.PATTERNS)

_HEX = _shapes.regular_polygon(6, 1.05, 0.0)
_PENT = _shapes.regular_polygon(5, 1.08, -np.pi / 2)
_DIAMOND = np.array([[0.0, -1.1], [0.62, 0.0], [0.0, 1.1], [-0.62, 0.0]])
_ARROW_HEAD = np.array([[0.2, -0.85], [1.1, 0.0], [0.2, 0.85]])


def _shape_sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape == "hexagon":
        return _shapes.convex_sdf(u, v, _HEX)
    if shape == "pentagon":
        return _shapes.convex_sdf(u, v, _PENT)
    if shape == "diamond":
        return _shapes.convex_sdf(u, v, _DIAMOND)
    if shape == "ellipse":  # a close approximation of the signed distance (exact on the axes)
        a, b = 1.1, 0.6
        k = np.hypot(u / a, v / b)
        return (k - 1.0) * np.minimum(a, b)
    if shape == "ring":
        r = np.hypot(u, v)
        return np.abs(r - 0.75) - 0.3
    if shape == "arrow":
        shaft = _shapes.box_sdf(u + 0.45, v, 0.65, 0.28)
        return np.minimum(shaft, _shapes.convex_sdf(u, v, _ARROW_HEAD))
    raise ValueError(shape)


def _pattern_weight(pattern: str, pu: np.ndarray, pv: np.ndarray, period: float) -> np.ndarray:
    """Weight in [0, 1] of the second colour, anti-aliased over about one pixel."""
    tw = _shapes.tri_wave
    if pattern == "grid":  # thin lines in both directions
        d = np.minimum(tw(pu / period), tw(pv / period)) * period
        return np.clip(0.5 + (0.12 * period - d), 0.0, 1.0)
    if pattern == "zigzag":
        shifted = pv + 0.5 * period * (2 * tw(pu / period))
        return np.clip(0.5 + (tw(shifted / period) - 0.25) * period, 0.0, 1.0)
    if pattern == "rings":
        r = np.hypot(pu - pu.mean(), pv - pv.mean())
        return np.clip(0.5 + (tw(r / period) - 0.25) * period, 0.0, 1.0)
    if pattern == "waves":
        shifted = pv + 0.35 * period * np.sin(2 * np.pi * pu / (1.7 * period))
        return np.clip(0.5 + (tw(shifted / period) - 0.25) * period, 0.0, 1.0)
    if pattern == "halves":  # two colours split along a line through the object
        return np.clip(0.5 + (pv - pv.mean()), 0.0, 1.0)
    raise ValueError(pattern)


def render_pretrain_image(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    """One image ``uint8 [size, size, 3]`` of class ``label`` (0-based into PRETRAIN_CLASSES)."""
    pattern = PRETRAIN_PATTERNS[label // len(PRETRAIN_SHAPES)]
    shape = PRETRAIN_SHAPES[label % len(PRETRAIN_SHAPES)]
    H = W = int(size)
    img = _shapes.draw_background(rng, H, W)
    diam = float(np.exp(rng.uniform(np.log(0.35 * size), np.log(0.85 * size))))
    aspect = float(np.exp(rng.uniform(-0.2, 0.2)))
    sx, sy = diam / 2 * np.sqrt(aspect), diam / 2 / np.sqrt(aspect)
    R = 1.2 * max(sx, sy)
    cx = rng.uniform(min(R, W / 2), max(W - R, W / 2))
    cy = rng.uniform(min(R, H / 2), max(H - R, H / 2))
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    ct, st = np.cos(theta), np.sin(theta)
    ru, rv = ct * dx + st * dy, -st * dx + ct * dy
    sdf = _shape_sdf(shape, ru / sx, rv / sy) * (sx + sy) / 2
    alpha = np.clip(0.5 - sdf, 0.0, 1.0)[..., None]
    period = max(4.5, diam / rng.uniform(3.0, 4.5))
    phi = rng.uniform(0, np.pi)
    pu = np.cos(phi) * dx + np.sin(phi) * dy + rng.uniform(0, period)
    pv = -np.sin(phi) * dx + np.cos(phi) * dy + rng.uniform(0, period)
    w = _pattern_weight(pattern, pu, pv, period)[..., None]
    c1, c2 = _shapes.two_colours(rng)
    obj = c1 * (1 - w) + c2 * w
    img = img * (1 - alpha) + obj * alpha
    img += rng.normal(0, rng.uniform(2, 7), img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


class ShapesPretrain(torch.utils.data.Dataset):
    """``n`` generated images; item ``i`` -> ``(image float32 [3, S, S] in 0..1, label int64)``.

    Labels cycle through the 30 classes (``i mod 30``), so every class is equally frequent.
    ``split`` is ``"train"`` or ``"val"`` (disjoint random streams).
    """

    def __init__(self, n: int, size: int = 64, seed: int = 0, split: str = "train"):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.n, self.size, self.seed, self.code = int(n), int(size), int(seed), {"train": 0, "val": 1}[split]
        self.classes: List[str] = list(PRETRAIN_CLASSES)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(7, self.code, int(i))))
        label = int(i) % len(PRETRAIN_CLASSES)
        img = render_pretrain_image(rng, self.size, label)
        return torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0), label
