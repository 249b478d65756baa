"""``shapes-voc``: a small synthetic detection + segmentation benchmark in the VOC layout.

Twenty classes, each a *pattern* (solid, striped, checkered, dotted) on a *shape* (circle,
square, triangle, star, cross). Every shape occurs in four classes and every pattern in five,
so neither cue alone names the class; colours are drawn at random per object and carry no
class information. Images hold 1-6 objects of varied scale drawn over a cluttered background
(gradient, smooth colour noise, random lines and irregular blobs that belong to no class);
later objects occlude earlier ones. See ``docs/shapes-voc.md`` for the full description.

Output (a VOC2012-style root that :class:`incdet.data.voc.VOCDetection` reads)::

    OUT/JPEGImages/<id>.jpg            RGB, quality 90
    OUT/Annotations/<id>.xml           VOC XML, 1-based inclusive integer bndbox
    OUT/SegmentationClass/<id>.png     palette PNG: 0 background, k = class k, 255 void band
    OUT/SegmentationObject/<id>.png    palette PNG: j = j-th <object> of the XML, 255 void band
    OUT/ImageSets/Main/{train,val,trainval,test}.txt
    OUT/ImageSets/Segmentation/{train,val,trainval,test}.txt
    OUT/classes.txt                    the 20 class names, one per line, in label order
    OUT/shapes.json                    manifest: generator version, parameters, statistics

Image ids are ``<split>_<index:06d>`` and image ``i`` of a split is drawn from its own random
stream ``SeedSequence(seed, spawn_key=(split, i))``: the same arguments give byte-identical
files (on the same numpy/Pillow build), images can be drawn in parallel, and the test images
do not change when ``n_train`` changes.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

from incdet.data.safeload import load_json
from incdet.data.vocwriter import annotation_xml, save_palette_png, voc_palette  # noqa: F401 - voc_palette re-exported
from incdet.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Bumped whenever the drawing changes, so that cached datasets are rebuilt.
GENERATOR_VERSION = 1
MANIFEST = "shapes.json"

SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
PATTERNS: Tuple[str, ...] = ("solid", "striped", "checkered", "dotted")


def _class_table() -> List[Tuple[str, str]]:
    # A Latin-square order: class 5q + r is shape r with pattern (q + r) mod 4. Every run of
    # five consecutive classes holds every shape once, so the new classes of a 15+5 or 10+10
    # split share their shape and their pattern with old classes.
    return [(PATTERNS[(q + r) % len(PATTERNS)], SHAPES[r]) for q in range(4) for r in range(len(SHAPES))]


#: The 20 class names in label order (label = position + 1; 0 is background).
SHAPES_CLASSES: Tuple[str, ...] = tuple(f"{p}_{s}" for p, s in _class_table())

SPLITS: Tuple[str, ...] = ("train", "val", "test")
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class ShapesParams:
    """Everything that determines the files (the cache key, with ``GENERATOR_VERSION``)."""

    seed: int = 0
    n_train: int = 800
    n_val: int = 100
    n_test: int = 250
    size: int = 160
    min_objects: int = 1
    max_objects: int = 6

    def validate(self) -> None:
        for name in ("seed", "n_train", "n_val", "n_test", "size", "min_objects", "max_objects"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ConfigError(f"shapes-voc: {name} must be an integer, got {v!r}")
        if self.seed < 0:
            raise ConfigError(f"shapes-voc: seed must be >= 0, got {self.seed}")
        if self.n_train < 1 or self.n_test < 1 or self.n_val < 0:
            raise ConfigError(
                f"shapes-voc: need n_train >= 1, n_test >= 1, n_val >= 0 "
                f"(got {self.n_train}, {self.n_test}, {self.n_val})"
            )
        if not 48 <= self.size <= 4096:
            raise ConfigError(f"shapes-voc: size must be in [48, 4096] pixels, got {self.size}")
        if not 1 <= self.min_objects <= self.max_objects <= 20:
            raise ConfigError(
                f"shapes-voc: need 1 <= min_objects <= max_objects <= 20 "
                f"(got {self.min_objects}, {self.max_objects})"
            )

    def counts(self) -> Dict[str, int]:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}


# --------------------------------------------------------------------------- drawing

# Geometry of the unit shapes (they fit in the disc of radius ~1.15 around the origin).
_SQUARE_HALF = 0.82
_CROSS_LONG, _CROSS_SHORT = 1.0, 0.32
_TRI_R = 1.12
_STAR_OUT, _STAR_IN = 1.1, 0.47

# Occlusion / annotation rules (documented in docs/shapes-voc.md).
MIN_VISIBLE_ON_PLACE = 0.30   # a new object may not leave an earlier one less visible than this
MIN_IN_IMAGE = 0.55           # at least this fraction of an object lies inside the image
DIFFICULT_VISIBLE = 0.40      # visible fraction below this -> difficult = 1
P_TRUNCATE = 0.15             # probability that an object is placed across the image border
VOID_RADIUS = 1               # void band: pixels within this Chebyshev distance of a boundary


def regular_polygon(n: int, radius: float, phase: float) -> np.ndarray:
    a = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(a), radius * np.sin(a)], 1)


_TRIANGLE = regular_polygon(3, _TRI_R, -np.pi / 2) + np.array([0.0, _TRI_R / 4])
_STAR_OUTER = regular_polygon(5, _STAR_OUT, -np.pi / 2)
_STAR_INNER = regular_polygon(5, _STAR_IN, -np.pi / 2 + np.pi / 5)
# The star is the union of a (slightly enlarged, so no seam shows) inner pentagon and 5 spikes.
_STAR_PARTS = [regular_polygon(5, _STAR_IN * 1.06, -np.pi / 2 + np.pi / 5)] + [
    np.stack([_STAR_OUTER[k], _STAR_INNER[k], _STAR_INNER[(k - 1) % 5]]) for k in range(5)
]


def convex_sdf(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Signed distance to a convex polygon (exact inside, a close lower bound outside)."""
    # Orientation-independent: use the centroid to orient the edge normals outwards.
    c = poly.mean(0)
    d = None
    for i in range(len(poly)):
        p, q = poly[i], poly[(i + 1) % len(poly)]
        nx, ny = q[1] - p[1], p[0] - q[0]
        norm = np.hypot(nx, ny)
        nx, ny = nx / norm, ny / norm
        if (c[0] - p[0]) * nx + (c[1] - p[1]) * ny > 0:
            nx, ny = -nx, -ny
        e = (u - p[0]) * nx + (v - p[1]) * ny
        d = e if d is None else np.maximum(d, e)
    return d


def box_sdf(u: np.ndarray, v: np.ndarray, hx: float, hy: float) -> np.ndarray:
    qx, qy = np.abs(u) - hx, np.abs(v) - hy
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _shape_sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape == "circle":
        return np.hypot(u, v) - 1.0
    if shape == "square":
        return box_sdf(u, v, _SQUARE_HALF, _SQUARE_HALF)
    if shape == "cross":
        return np.minimum(box_sdf(u, v, _CROSS_LONG, _CROSS_SHORT), box_sdf(u, v, _CROSS_SHORT, _CROSS_LONG))
    if shape == "triangle":
        return convex_sdf(u, v, _TRIANGLE)
    if shape == "star":
        d = convex_sdf(u, v, _STAR_PARTS[0])
        for part in _STAR_PARTS[1:]:
            d = np.minimum(d, convex_sdf(u, v, part))
        return d
    raise ValueError(shape)  # pragma: no cover


def tri_wave(t: np.ndarray) -> np.ndarray:
    """Distance of ``t`` to the nearest integer, in [0, 0.5]."""
    return np.abs(t - np.round(t))


def _pattern_weight(pattern: str, pu: np.ndarray, pv: np.ndarray, period: float) -> Optional[np.ndarray]:
    """Weight in [0, 1] of the second colour (anti-aliased); None for a solid fill."""
    if pattern == "solid":
        return None
    if pattern == "striped":
        # Stripes of width period/2: signed pixel distance to a stripe edge.
        return np.clip(0.5 + (tri_wave(pu / period) - 0.25) * period, 0.0, 1.0)
    if pattern == "checkered":
        cell = 2.0 * period * 0.6  # squares of side 0.6 * period
        sx = np.clip(0.5 + (tri_wave(pu / cell) - 0.25) * cell, 0.0, 1.0) * 2 - 1
        sy = np.clip(0.5 + (tri_wave(pv / cell) - 0.25) * cell, 0.0, 1.0) * 2 - 1
        return (1 + sx * sy) / 2
    if pattern == "dotted":
        sp = period * 1.1
        dist = np.hypot(tri_wave(pu / sp), tri_wave(pv / sp)) * sp
        return np.clip(0.5 + (0.3 * sp - dist), 0.0, 1.0)
    raise ValueError(pattern)  # pragma: no cover


def _luma(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def two_colours(rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    c1 = rng.uniform(15, 240, 3)
    for _ in range(20):
        c2 = rng.uniform(15, 240, 3)
        if abs(_luma(c1) - _luma(c2)) >= 70:
            break
    else:  # force contrast
        c2 = np.full(3, 235.0) if _luma(c1) < 128 else np.full(3, 20.0)
    return c1, c2


def _bilinear(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    gh, gw = grid.shape[:2]
    ys = np.linspace(0, gh - 1, h)
    xs = np.linspace(0, gw - 1, w)
    y0 = np.clip(np.floor(ys).astype(np.int64), 0, gh - 2)
    x0 = np.clip(np.floor(xs).astype(np.int64), 0, gw - 2)
    wy = (ys - y0)[:, None, None]
    wx = (xs - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - wx) + grid[y0][:, x0 + 1] * wx
    bot = grid[y0 + 1][:, x0] * (1 - wx) + grid[y0 + 1][:, x0 + 1] * wx
    return top * (1 - wy) + bot * wy


def draw_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Cluttered background, float32 [h, w, 3] in 0..255: gradient, smooth noise, lines, blobs."""
    grey = rng.uniform(60, 200)
    ca = rng.uniform(0, 255, 3) * 0.5 + grey * 0.5
    cb = rng.uniform(0, 255, 3) * 0.5 + grey * 0.5
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = ((xx - w / 2) * np.cos(ang) + (yy - h / 2) * np.sin(ang)) / max(h, w) + 0.5
    t = np.clip(t, 0, 1)[..., None]
    img = ca * (1 - t) + cb * t
    g = int(rng.integers(3, 8))
    img = img + _bilinear(rng.normal(0, rng.uniform(8, 30), (g, g, 3)), h, w)
    img = np.clip(img, 0, 255)

    pil = Image.fromarray(img.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(pil)
    s = max(h, w)
    # Irregular blobs: radius with random low harmonics, strongly non-circular.
    for _ in range(int(rng.integers(0, 4))):
        r0 = rng.uniform(0.06, 0.22) * s
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        th = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        r = np.ones_like(th)
        for k in (2, 3, 4):
            r += rng.uniform(0.12, 0.3) * np.cos(k * th + rng.uniform(0, 2 * np.pi))
        r = r0 * np.clip(r, 0.25, None)
        pts = [(float(cx + ri * np.cos(a)), float(cy + ri * np.sin(a))) for ri, a in zip(r, th)]
        draw.polygon(pts, fill=tuple(int(c) for c in rng.uniform(0, 255, 3)))
    # Random lines and polylines.
    for _ in range(int(rng.integers(2, 7))):
        n = int(rng.integers(2, 5))
        pts = [(float(rng.uniform(-0.1, 1.1) * w), float(rng.uniform(-0.1, 1.1) * h)) for _ in range(n)]
        draw.line(pts, fill=tuple(int(c) for c in rng.uniform(0, 255, 3)), width=int(rng.integers(1, 4)))
    return np.asarray(pil, dtype=np.float32)


@dataclass
class _Object:
    label: int            # 1-based
    x0: int               # top-left of the local window (may be outside the image)
    y0: int
    alpha: np.ndarray     # [h, w] float32 coverage
    mask: np.ndarray      # [h, w] bool, alpha >= 0.5
    weight: Optional[np.ndarray]  # [h, w] weight of the second colour (None: solid)
    shade: np.ndarray     # [h, w] multiplicative shading
    full_area: int        # pixels of the whole object (inside and outside the image)
    in_area: int = 0
    visible: int = 0
    colour: Optional[np.ndarray] = None  # [h, w, 3] float32, set by paint()

    def paint(self, c1: np.ndarray, c2: np.ndarray) -> None:
        if self.weight is None:
            col = np.broadcast_to(c1.astype(np.float32), self.shade.shape + (3,))
        else:
            w = self.weight[..., None]
            col = c1 * (1 - w) + c2 * w
        self.colour = (col * self.shade[..., None]).astype(np.float32)


def _window(x0: int, y0: int, hh: int, ww: int, H: int, W: int):
    """Slices (image, local) of the overlap of a local window with the image, or None."""
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + ww, W), min(y0 + hh, H)
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    return (slice(iy0, iy1), slice(ix0, ix1)), (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))


def _draw_object(rng: np.random.Generator, label: int, diam: float, H: int, W: int) -> _Object:
    pattern, shape = _class_table()[label - 1]
    aspect = float(np.exp(rng.uniform(-0.2, 0.2)))
    sx, sy = diam / 2 * np.sqrt(aspect), diam / 2 / np.sqrt(aspect)
    theta = rng.uniform(0, 2 * np.pi)
    R = 1.2 * max(sx, sy) + 2
    if rng.random() < P_TRUNCATE or 2 * R >= min(H, W):
        cx, cy = rng.uniform(0, W), rng.uniform(0, H)
    else:
        cx, cy = rng.uniform(R, W - R), rng.uniform(R, H - R)
    x0, y0 = int(np.floor(cx - R)), int(np.floor(cy - R))
    x1, y1 = int(np.ceil(cx + R)), int(np.ceil(cy + R))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    ct, st = np.cos(theta), np.sin(theta)
    ru, rv = ct * dx + st * dy, -st * dx + ct * dy
    sdf = _shape_sdf(shape, ru / sx, rv / sy) * (sx + sy) / 2  # ~pixels
    alpha = np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32)
    mask = sdf <= 0

    # Pattern in pixel units, rotated independently of the outline.
    period = max(4.5, diam / rng.uniform(3.5, 5.0))
    phi = rng.uniform(0, np.pi)
    pu = np.cos(phi) * dx + np.sin(phi) * dy + rng.uniform(0, period)
    pv = -np.sin(phi) * dx + np.cos(phi) * dy + rng.uniform(0, period)
    wgt = _pattern_weight(pattern, pu, pv, period)
    # Soft directional shading.
    psi = rng.uniform(0, 2 * np.pi)
    shade = (1 + rng.uniform(0, 0.18) * (np.cos(psi) * dx + np.sin(psi) * dy) / max(R, 1)).astype(np.float32)
    o = _Object(label, x0, y0, alpha, mask, wgt, shade, int(mask.sum()))
    o.paint(*two_colours(rng))
    return o


def _dilate(m: np.ndarray, r: int) -> np.ndarray:
    out = m.copy()
    H, W = m.shape
    p = np.pad(m, r)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= p[r + dy:r + dy + H, r + dx:r + dx + W]
    return out


def render_image(rng: np.random.Generator, size: int, min_objects: int = 1, max_objects: int = 6):
    """Draw one image.

    Returns ``(image uint8 [H, W, 3], seg_class uint8 [H, W], seg_object uint8 [H, W], objects)``
    where ``objects`` is a list of dicts with ``label`` (1-based), ``box`` (0-based inclusive
    integer x1, y1, x2, y2: the tight box of the whole object inside the image), ``truncated``,
    ``occluded``, ``difficult`` and ``visible`` (visible fraction of the whole object).
    """
    H = W = int(size)
    img = draw_background(rng, H, W)
    bg = img
    n_obj = int(rng.integers(min_objects, max_objects + 1))
    smin = 0.15 * size
    smax = max(0.75 * n_obj ** -0.35, 0.2) * size
    min_px = max(20, int(0.004 * H * W))
    owner = np.full((H, W), -1, np.int16)
    objs: List[_Object] = []
    for _ in range(n_obj):
        label = int(rng.integers(1, len(SHAPES_CLASSES) + 1))
        for _attempt in range(12):
            diam = float(np.exp(rng.uniform(np.log(smin), np.log(smax))))
            o = _draw_object(rng, label, diam, H, W)
            win = _window(o.x0, o.y0, o.mask.shape[0], o.mask.shape[1], H, W)
            if win is None:
                continue
            isl, lsl = win
            m_in = o.mask[lsl]
            in_area = int(m_in.sum())
            if in_area < MIN_IN_IMAGE * o.full_area or in_area < min_px:
                continue
            under = owner[isl][m_in]
            lost = np.bincount(under[under >= 0], minlength=len(objs))
            if any(p.visible - int(lost[j]) < MIN_VISIBLE_ON_PLACE * p.full_area for j, p in enumerate(objs)):
                continue
            # Keep the object distinguishable from the background under it.
            for _c in range(5):
                if np.linalg.norm(o.colour[lsl][m_in].mean(0) - bg[isl][m_in].mean(0)) >= 50:
                    break
                o.paint(*two_colours(rng))
            for j, p in enumerate(objs):
                p.visible -= int(lost[j])
            o.in_area = o.visible = in_area
            owner[isl][m_in] = len(objs)
            objs.append(o)
            break

    img = img.copy()
    for o in objs:
        isl, lsl = _window(o.x0, o.y0, o.mask.shape[0], o.mask.shape[1], H, W)
        a = o.alpha[lsl][..., None]
        img[isl] = img[isl] * (1 - a) + o.colour[lsl] * a
    img += rng.normal(0, rng.uniform(2, 7), img.shape).astype(np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    seg_cls = np.zeros((H, W), np.uint8)
    seg_obj = np.zeros((H, W), np.uint8)
    band = np.zeros((H, W), bool)
    objects = []
    for j, o in enumerate(objs):
        vis = owner == j
        seg_cls[vis] = o.label
        seg_obj[vis] = j + 1
        band |= _dilate(vis, VOID_RADIUS) & _dilate(~vis, VOID_RADIUS)
        isl, lsl = _window(o.x0, o.y0, o.mask.shape[0], o.mask.shape[1], H, W)
        ys, xs = np.nonzero(o.mask[lsl])
        box = (int(xs.min() + isl[1].start), int(ys.min() + isl[0].start),
               int(xs.max() + isl[1].start), int(ys.max() + isl[0].start))
        frac = o.visible / o.full_area
        objects.append({
            "label": o.label,
            "box": box,
            "truncated": int(o.in_area < o.full_area),
            "occluded": int(o.visible < o.in_area),
            "difficult": 0,
            "visible": frac,
        })
    seg_cls[band] = 255
    seg_obj[band] = 255
    for j, ob in enumerate(objects):
        # Difficult: mostly hidden (by occluders or the border), or nothing left of it in the
        # mask once the void band is drawn.
        left = int(np.count_nonzero(seg_obj == j + 1))
        ob["difficult"] = int(ob["visible"] < DIFFICULT_VISIBLE or left < 10)
    return image, seg_cls, seg_obj, objects


# --------------------------------------------------------------------------- files

def shapes_xml(image_id: str, size: int, objects: Sequence[dict], seed: int) -> str:
    """The annotation XML text of one generated image (written by :mod:`incdet.data.vocwriter`)."""
    source = {"database": "shapes-voc (synthetic)",
              "annotation": f"incdet make-shapes v{GENERATOR_VERSION} seed {seed}", "image": "synthetic"}
    objs = [{"name": SHAPES_CLASSES[ob["label"] - 1], "truncated": ob["truncated"], "occluded": ob["occluded"],
             "difficult": ob["difficult"], "bbox": [v + 1 for v in ob["box"]]}  # VOC: 1-based inclusive
            for ob in objects]
    return annotation_xml(f"{image_id}.jpg", (size, size), objs, folder="shapes-voc", source=source,
                          segmented=1, indent="\t") + "\n"


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(_SPLIT_CODE[split], int(index))))


def _make_one(job) -> Tuple[str, List[Tuple[int, int, int, int]]]:
    """Draw and write one image; returns (split, [(label, difficult, truncated, occluded), ...])."""
    root, split, index, params = job
    p = ShapesParams(**params)
    image_id = f"{split}_{index:06d}"
    rng = _image_rng(p.seed, split, index)
    image, seg_cls, seg_obj, objects = render_image(rng, p.size, p.min_objects, p.max_objects)
    root = Path(root)
    Image.fromarray(image, "RGB").save(root / "JPEGImages" / f"{image_id}.jpg", format="JPEG", quality=90)
    (root / "Annotations" / f"{image_id}.xml").write_text(shapes_xml(image_id, p.size, objects, p.seed))
    save_palette_png(seg_cls, root / "SegmentationClass" / f"{image_id}.png")
    save_palette_png(seg_obj, root / "SegmentationObject" / f"{image_id}.png")
    return split, [(o["label"], o["difficult"], o["truncated"], o["occluded"]) for o in objects]


def image_ids(params: ShapesParams) -> Dict[str, List[str]]:
    """The image ids of each split (``train``, ``val``, ``test``)."""
    return {s: [f"{s}_{i:06d}" for i in range(n)] for s, n in params.counts().items()}


def _build(tmp: Path, p: ShapesParams, workers: int, progress: bool) -> dict:
    for d in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject",
              "ImageSets/Main", "ImageSets/Segmentation"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    ids = image_ids(p)
    jobs = [(str(tmp), s, i, asdict(p)) for s in SPLITS for i in range(p.counts()[s])]
    stats = {s: {"images": 0, "objects": 0, "difficult": 0, "truncated": 0, "occluded": 0,
                 "per_class": [0] * len(SHAPES_CLASSES)} for s in SPLITS}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="shapes-voc", unit="img")

    def account(res):
        split, objs = res
        st = stats[split]
        st["images"] += 1
        for label, diff, trunc, occ in objs:
            st["objects"] += 1
            st["difficult"] += diff
            st["truncated"] += trunc
            st["occluded"] += occ
            st["per_class"][label - 1] += 1
        if bar is not None:
            bar.update(1)

    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn" if os.name == "nt" else "fork").Pool(workers) as pool:
            for res in pool.imap(_make_one, jobs, chunksize=16):
                account(res)
    else:
        for job in jobs:
            account(_make_one(job))
    if bar is not None:
        bar.close()

    lists = dict(ids)
    lists["trainval"] = ids["train"] + ids["val"]
    for sub in ("Main", "Segmentation"):
        for name in ("train", "val", "trainval", "test"):
            (tmp / "ImageSets" / sub / f"{name}.txt").write_text("".join(f"{i}\n" for i in lists[name]))
    (tmp / "classes.txt").write_text("".join(f"{c}\n" for c in SHAPES_CLASSES))
    for st in stats.values():
        st["per_class"] = dict(zip(SHAPES_CLASSES, st["per_class"]))
    manifest = {
        "generator": "shapes-voc",
        "version": GENERATOR_VERSION,
        "params": asdict(p),
        "classes": list(SHAPES_CLASSES),
        "stats": stats,
    }
    # Written last: a directory with a manifest is a complete dataset.
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def read_manifest(root: Union[str, Path]) -> Optional[dict]:
    """The manifest of a shapes-voc directory, or None if absent or unreadable."""
    path = Path(root) / MANIFEST
    try:
        m = load_json(path, "shapes manifest")
    except DataError:  # missing, unreadable, not JSON, nested too deeply
        return None
    return m if isinstance(m, dict) and m.get("generator") == "shapes-voc" else None


def _is_complete(root: Path, p: ShapesParams) -> bool:
    m = read_manifest(root)
    if m is None or m.get("version") != GENERATOR_VERSION or m.get("params") != asdict(p):
        return False
    n = p.n_train + p.n_val + p.n_test
    try:
        for d, ext in (("JPEGImages", ".jpg"), ("Annotations", ".xml"), ("SegmentationClass", ".png")):
            if sum(1 for f in os.scandir(root / d) if f.name.endswith(ext)) != n:
                return False
        return (root / "classes.txt").is_file() and all(
            (root / "ImageSets" / "Main" / f"{s}.txt").is_file() for s in ("train", "val", "trainval", "test")
        )
    except OSError:
        return False


def shapes_params(params: Optional[ShapesParams] = None, **fields) -> ShapesParams:
    """``params`` (default :class:`ShapesParams`) with ``fields`` (its field names: ``seed``,
    ``n_train``, ...) replaced, validated; an unknown name is a :class:`ConfigError`."""
    known = [f.name for f in dataclasses.fields(ShapesParams)]
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ConfigError(f"shapes-voc: unknown option(s) {unknown}; known: {', '.join(known)}, workers, progress")
    if params is not None and not isinstance(params, ShapesParams):
        raise ConfigError(f"shapes-voc: params must be a ShapesParams, got {type(params).__name__}")
    p = dataclasses.replace(params or ShapesParams(), **fields)
    p.validate()
    return p


def make_shapes(out: Union[str, Path], params: Optional[ShapesParams] = None, *, workers: int = 1,
                progress: bool = False, **fields) -> Path:
    """Build the shapes-voc dataset in ``out`` (always rebuilds) and return ``out``.

    The dataset is ``params`` (a :class:`ShapesParams`, default: its defaults) with ``fields``
    (``seed=...``, ``n_train=...``, any :class:`ShapesParams` field) replaced. The files are
    written into a temporary sibling directory that then replaces ``out``, so ``out`` is never
    left half-written. ``out`` must be absent, empty, or an earlier shapes-voc build (a directory
    with ``shapes.json``); any other directory raises ``DataError`` rather than being deleted.
    ``workers`` > 1 draws images in parallel processes (same files).
    """
    p = shapes_params(params, **fields)
    out = Path(out)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    log.info("building shapes-voc in %s (%d train, %d val, %d test, %dpx, seed %d)",
             out, p.n_train, p.n_val, p.n_test, p.size, p.seed)
    try:
        _build(tmp, p, max(1, int(workers)), progress)
        _replace(tmp, out, p)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("shapes-voc ready in %s (%.1f s)", out, time.perf_counter() - t0)
    return out


def ensure_shapes(out: Union[str, Path], params: Optional[ShapesParams] = None, *, workers: int = 1,
                  progress: bool = False, **fields) -> Path:
    """Return ``out`` holding the shapes-voc dataset for these options (as :func:`make_shapes`),
    building it if needed.

    Re-uses ``out`` when its manifest records the same parameters and generator version and all
    files are present; otherwise rebuilds it as :func:`make_shapes` does.
    """
    p = shapes_params(params, **fields)
    out = Path(out)
    if _is_complete(out, p):
        log.debug("shapes-voc cache hit: %s", out)
        return out
    return make_shapes(out, p, workers=workers, progress=progress)


def _check_replaceable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory; cannot write shapes-voc there")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise DataError(
            f"{out}: directory is not empty and is not a shapes-voc dataset (no {MANIFEST}); "
            "refusing to overwrite it. Choose another --out or remove it."
        )


def _replace(tmp: Path, out: Path, p: ShapesParams) -> None:
    """Move the finished build ``tmp`` to ``out``, replacing an earlier build."""
    old = None
    if out.exists():
        _check_replaceable(out)
        old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(out, old)
        except FileNotFoundError:  # removed concurrently
            old = None
    try:
        os.rename(tmp, out)
    except OSError:
        # Another process finished first; keep its build if it is the one we wanted.
        if not _is_complete(out, p):
            raise DataError(f"{out}: could not move the new shapes-voc build into place (concurrent writer?)")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
