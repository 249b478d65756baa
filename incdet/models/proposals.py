"""Class-agnostic object proposals: computing, storing, loading and validating them.

Storage format (``.npz``, one file per dataset split), written by ``incdet proposals``:
    * one array per image, key ``str(image_id)`` (VOC file stem, or COCO id as a string),
      ``float32 [K, 4]``, boxes ``x1, y1, x2, y2`` in 0-based pixel coordinates of the original
      image (the sample record's convention; selective search's ``(x, y, w, h)`` becomes
      ``(x, y, x + w - 1, y + h - 1)``), in the generator's ranking order, ``K <= 2000``;
    * an optional key ``__meta__``: a 0-d string array with a JSON dict (method, parameters).
    ``K = 0`` is allowed (the image is skipped in training, it gets no detections).

Detectron2's precomputed-proposal ``.pkl`` (``dict`` with ``ids``, ``boxes`` (list of ``[K, 4]``
arrays), ``objectness_logits``, ``bbox_mode`` (``BoxMode`` XYXY_ABS or XYWH_ABS)) loads too,
without detectron2 installed; boxes are sorted by decreasing objectness. A pickle is data, not
code: it is read by :func:`incdet.data.safeload.load_pickle`, an allow-list unpickler (numpy
arrays, lists, dicts, tuples, numbers, ``BoxMode``); any other global (``os.system``, ...) is
refused before it is called, with a :class:`~incdet.errors.DataError` naming the file and the
global. An ``.npz`` array header is checked before numpy allocates the array (``[K, 4]``,
``K <= MAX_STORED_PROPOSALS``, numeric); pickled ``.npz`` members are refused.

Bad input raises :class:`~incdet.errors.DataError` naming the image and the file: no entry for
an image, an array that is not ``[K, 4]``, NaN/inf values, inverted boxes (``x2 < x1`` or
``y2 < y1``). Boxes reaching outside the image are clipped.

Generators: :func:`selective_search` (OpenCV ``cv2.ximgproc.segmentation``, "fast" mode, on a
downscaled copy of the image; the default) and :func:`sliding_window_proposals`, a cheap,
deterministic, image-independent grid of multi-scale windows meant for tests and demos only.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import nms

from incdet.data.cocofile import read_coco_json
from incdet.data.safeload import load_pickle, short_repr
from incdet.engine.checkpoint import write_atomic, write_atomic_path
from incdet.errors import DataError

log = logging.getLogger(__name__)

META_KEY = "__meta__"
METHODS = ("selective_search", "sliding_window")


# --------------------------------------------------------------------------- generators
def _seed_c_rand(seed: int) -> None:
    """``srand(seed)`` of the C library (no-op where it cannot be reached)."""
    global _LIBC
    try:
        if _LIBC is None:
            import ctypes
            import ctypes.util

            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None)
        _LIBC.srand(int(seed))
    except (OSError, AttributeError):  # pragma: no cover - platforms without a reachable libc
        pass


_LIBC = None


def selective_search(
    image: np.ndarray, max_proposals: int = 2000, max_side: int = 500, mode: str = "fast", min_box: int = 4
) -> np.ndarray:
    """Selective search proposals of an RGB ``uint8 [H, W, 3]`` image -> ``float32 [K, 4]`` xyxy.

    The image is downscaled so that its long side is at most ``max_side`` (speed), boxes are
    mapped back to the original pixel grid, boxes smaller than ``min_box`` pixels (either side,
    original scale) and exact duplicates are dropped, the first ``max_proposals`` in OpenCV's
    ranking are kept. OpenCV's ranking has a random factor drawn with C ``rand()``; it is seeded
    (``srand(0)``) on every call, so the same image always gives the same proposals in the same
    order.
    """
    import cv2

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"selective_search needs an RGB uint8 [H, W, 3] array, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    s = min(1.0, max_side / max(h, w))
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    if s < 1.0:
        bgr = cv2.resize(bgr, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    cv2.setNumThreads(1)
    _seed_c_rand(0)  # OpenCV ranks the regions with C rand(): seeded, so a call is reproducible
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(bgr)
    if mode == "fast":
        ss.switchToSelectiveSearchFast()
    elif mode == "quality":
        ss.switchToSelectiveSearchQuality()
    else:
        raise ValueError(f"selective search mode must be 'fast' or 'quality', got {mode!r}")
    rects = ss.process()
    if rects is None or len(rects) == 0:
        return np.zeros((0, 4), np.float32)
    r = np.asarray(rects, dtype=np.float32).reshape(-1, 4)
    boxes = np.stack([r[:, 0], r[:, 1], r[:, 0] + r[:, 2], r[:, 1] + r[:, 3]], 1) / s
    boxes[:, 2:] -= 1.0  # inclusive last pixel
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h - 1)
    keep = ((boxes[:, 2] - boxes[:, 0] + 1) >= min_box) & ((boxes[:, 3] - boxes[:, 1] + 1) >= min_box)
    boxes = boxes[keep]
    _, first = np.unique(np.round(boxes).astype(np.int32), axis=0, return_index=True)
    boxes = boxes[np.sort(first)]
    return np.ascontiguousarray(boxes[:max_proposals], dtype=np.float32)


def sliding_window_proposals(
    height: int,
    width: int,
    max_proposals: int = 2000,
    scales: Sequence[float] = (0.08, 0.12, 0.18, 0.27, 0.4, 0.6, 0.85),
    ratios: Sequence[float] = (0.5, 0.75, 1.0, 1.5, 2.0),
    stride: float = 0.25,
) -> np.ndarray:
    """A deterministic grid of windows (fallback for tests and demos; not a real proposal method).

    Window sides are ``scale * min(H, W)`` stretched by ``sqrt(ratio)``; windows are placed
    every ``stride`` window sides. Large windows come first; at most ``max_proposals``
    (evenly thinned when there are more).
    """
    m = min(height, width)
    out = []
    for sc in sorted(scales, reverse=True):
        for r in ratios:
            bw = max(2.0, sc * m * np.sqrt(r))
            bh = max(2.0, sc * m / np.sqrt(r))
            if bw > width or bh > height:
                continue
            xs = np.arange(0, width - bw + 1e-6, max(1.0, stride * bw))
            ys = np.arange(0, height - bh + 1e-6, max(1.0, stride * bh))
            gx, gy = np.meshgrid(xs, ys)
            gx, gy = gx.ravel(), gy.ravel()
            out.append(np.stack([gx, gy, gx + bw - 1, gy + bh - 1], 1))
    boxes = np.concatenate(out, 0) if out else np.zeros((0, 4))
    if len(boxes) > max_proposals:
        boxes = boxes[np.linspace(0, len(boxes) - 1, max_proposals).round().astype(int)]
    return boxes.astype(np.float32)


def compute_proposals(image: np.ndarray, method: str = "selective_search", max_proposals: int = 2000, max_side: int = 500) -> np.ndarray:
    """Proposals for an RGB ``uint8 [H, W, 3]`` image with the named method."""
    if method == "selective_search":
        return selective_search(image, max_proposals=max_proposals, max_side=max_side)
    if method == "sliding_window":
        return sliding_window_proposals(image.shape[0], image.shape[1], max_proposals=max_proposals)
    raise DataError(f"unknown proposal method {method!r}; known: {', '.join(METHODS)}")


# --------------------------------------------------------------------------- validation
def validate_boxes(boxes, image_id, source: str, image_size: Optional[Tuple[int, int]] = None) -> Tensor:
    """Check one image's proposals and return them as ``float32 [K, 4]`` (clipped to the image).

    Raises :class:`DataError` naming ``image_id`` and ``source`` for a wrong shape, non-finite
    values or inverted boxes.
    """
    arr = np.asarray(boxes)
    if arr.size == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise DataError(f"{source}: proposals of image {image_id!r} have shape {arr.shape}, expected [K, 4]")
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{source}: proposals of image {image_id!r} are not numeric ({arr.dtype})")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(1).argmax())
        raise DataError(f"{source}: proposals of image {image_id!r} contain NaN/inf (row {bad}: {arr[bad].tolist()})")
    inv = (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
    if inv.any():
        bad = int(inv.argmax())
        raise DataError(
            f"{source}: proposals of image {image_id!r} hold {int(inv.sum())} inverted box(es) "
            f"(row {bad}: {arr[bad].tolist()}; expected x1 <= x2 and y1 <= y2, xyxy format)"
        )
    if image_size is not None:
        h, w = image_size
        arr[:, 0::2] = arr[:, 0::2].clip(0, w - 1)
        arr[:, 1::2] = arr[:, 1::2].clip(0, h - 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def filter_proposals(boxes: Tensor, max_proposals: int = 2000, nms_iou: Optional[float] = None, min_size: float = 1.0) -> Tensor:
    """Drop boxes smaller than ``min_size`` px, optionally suppress overlaps above ``nms_iou``
    keeping the earlier (higher-ranked) box, keep the first ``max_proposals``."""
    if boxes.numel() == 0:
        return boxes
    ok = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    boxes = boxes[ok]
    if nms_iou is not None and nms_iou < 1 and boxes.shape[0] > 1:
        rank_score = -torch.arange(boxes.shape[0], dtype=torch.float32)
        keep = nms(boxes, rank_score, nms_iou)
        boxes = boxes[keep.sort().values]
    return boxes[:max_proposals]


# --------------------------------------------------------------------------- files
def save_npz(path: Union[str, Path], proposals: Mapping, meta: Optional[dict] = None) -> None:
    """Write ``{image_id: [K, 4]}`` to ``path`` (compressed .npz, written atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {str(k): np.asarray(v, dtype=np.float32).reshape(-1, 4) for k, v in proposals.items()}
    if META_KEY in arrays:
        raise DataError(f"{path}: image id {META_KEY!r} is reserved")
    if meta is not None:
        arrays[META_KEY] = np.array(json.dumps(meta))
    # temp name ends with .npz whatever path's suffix: np.savez appends one to any other name
    write_atomic_path(path, lambda tmp: np.savez_compressed(tmp, **arrays), suffix=".npz")


MAX_STORED_PROPOSALS = 100_000  # rows one image's array may declare in a proposal .npz


def npz_array(z, key: str, source: Union[str, Path]) -> np.ndarray:
    """``z[key]`` of an open proposal ``.npz`` after checking the array header: the declared
    shape must be ``[K, 4]`` (or empty) with ``K <= MAX_STORED_PROPOSALS`` and a numeric dtype,
    so a crafted header cannot make numpy allocate more than that (it allocates the declared
    shape before decompressing). :class:`DataError` naming ``source`` and the image otherwise."""
    try:
        with z.zip.open(key + ".npy") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(f)
    except Exception as e:  # noqa: BLE001 - zipfile/numpy raise assorted types for a damaged member
        raise DataError(f"{source}: cannot read proposals of image {key!r} ({short_repr(str(e))})") from None
    n = int(np.prod(shape)) if shape else 1
    if n and (len(shape) != 2 or shape[1] != 4 or shape[0] > MAX_STORED_PROPOSALS):
        raise DataError(f"{source}: proposals of image {key!r} have shape {list(shape)}, expected [K, 4] "
                        f"with K <= {MAX_STORED_PROPOSALS}")
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise DataError(f"{source}: proposals of image {key!r} are not numeric ({dtype})")
    try:
        return z[key]
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{source}: cannot read proposals of image {key!r} ({short_repr(str(e))})") from None


def read_npz(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """All arrays of a proposal ``.npz`` (written by :func:`save_npz`) but ``__meta__``, by image
    id (each checked by :func:`npz_array`); :class:`DataError` naming the file when it cannot be
    read (pickled arrays are refused)."""
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - zipfile/numpy raise assorted types for a damaged file
        raise DataError(f"{path}: cannot read proposal .npz ({short_repr(str(e))})") from None
    if not hasattr(z, "files"):
        raise DataError(f"{path}: not a proposal .npz (a single .npy array)")
    with z:
        return {k: npz_array(z, k, path) for k in z.files if k != META_KEY}


class BoxModeStub(int):
    """Stands in for ``detectron2.structures.BoxMode`` when unpickling without detectron2."""

    def __new__(cls, value):
        return int.__new__(cls, value)


def _detectron2_global(module: str, name: str):
    # detectron2 pickles bbox_mode as detectron2.structures.boxes.BoxMode(value); nothing else
    return BoxModeStub if name == "BoxMode" else None


def load_detectron2_pkl(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """Read detectron2's proposal file -> ``{str(id): float32 [K, 4]}`` xyxy, by objectness.

    The pickle is read with :func:`incdet.data.safeload.load_pickle` (an allow-list: numpy
    arrays, lists, dicts, tuples, numbers and detectron2's ``BoxMode``); any other global is
    refused before it runs, with a :class:`DataError` naming the file and the global.
    """
    path = Path(path)
    data = load_pickle(path, "detectron2 proposal pickle", extra={("detectron2", "*"): _detectron2_global})
    if not isinstance(data, dict) or "ids" not in data or "boxes" not in data:
        raise DataError(f"{path}: expected a dict with 'ids' and 'boxes' (detectron2 proposal format)")
    seqs = {}
    for key in ("ids", "boxes", "objectness_logits"):
        v = data.get(key)
        if v is None and key == "objectness_logits":
            continue
        if not isinstance(v, (list, tuple, np.ndarray)) or (isinstance(v, np.ndarray) and v.ndim == 0):
            raise DataError(f"{path}: {key!r} must be a list, got {type(v).__name__}")
        seqs[key] = list(v)
    ids, boxes, logits = seqs["ids"], seqs["boxes"], seqs.get("objectness_logits")
    if len(ids) != len(boxes):
        raise DataError(f"{path}: {len(ids)} ids but {len(boxes)} box arrays")
    mode = data.get("bbox_mode", 0)
    if isinstance(mode, bool) or not isinstance(mode, (int, np.integer)) or int(mode) not in (0, 1):
        raise DataError(f"{path}: bbox_mode {short_repr(mode)} not supported (only XYXY_ABS=0 and XYWH_ABS=1)")
    mode = int(mode)
    out: Dict[str, np.ndarray] = {}
    for i, (iid, b) in enumerate(zip(ids, boxes)):
        if isinstance(iid, np.generic):
            iid = iid.item()
        if isinstance(iid, bool) or not isinstance(iid, (int, str)):
            raise DataError(f"{path}: ids[{i}] is {short_repr(iid)}, expected an int or a string")
        try:
            b = np.asarray(b, dtype=np.float32)
        except (TypeError, ValueError):
            raise DataError(f"{path}: proposals of image {iid!r} are not a numeric array") from None
        if b.size and (b.ndim != 2 or b.shape[1] != 4):
            raise DataError(f"{path}: proposals of image {iid!r} have shape {b.shape}, expected [K, 4]")
        b = b.reshape(-1, 4).copy()
        if mode == 1:
            b[:, 2:] += b[:, :2]
        if logits is not None and len(logits) > i:
            try:
                lg = np.asarray(logits[i], dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise DataError(f"{path}: objectness_logits of image {iid!r} are not numeric") from None
            if len(lg) == len(b):
                b = b[np.argsort(-lg, kind="stable")]
        if str(iid) in out:
            raise DataError(f"{path}: image id {iid!r} appears twice in 'ids'")
        out[str(iid)] = b
    return out


class ProposalSource:
    """Proposals by image id from ``.npz`` / detectron2 ``.pkl`` files, or computed on demand.

    ``spec`` is a method name (``selective_search``, ``sliding_window``: computed from the image,
    memoised in memory and in ``cache`` (an .npz) when given), or a path to an ``.npz`` /
    ``.pkl`` file or a directory of them (all are merged; later files do not override earlier
    ones). ``get`` returns validated, filtered ``float32 [K, 4]`` boxes.
    """

    def __init__(
        self,
        spec: Union[str, Sequence[str]],
        max_proposals: int = 2000,
        nms_iou: Optional[float] = None,
        min_size: float = 1.0,
        max_side: int = 500,
        cache: Optional[str] = None,
    ):
        self.max_proposals = max_proposals
        self.nms_iou = nms_iou
        self.min_size = min_size
        self.max_side = max_side
        self.cache = cache
        self.method: Optional[str] = None
        self.files: List[Path] = []
        self._memo: Dict[str, np.ndarray] = {}
        self._npz: Optional[list] = None
        self._pid = None
        specs = [spec] if isinstance(spec, str) else list(spec)
        if len(specs) == 1 and specs[0] in METHODS:
            self.method = specs[0]
            if cache and os.path.isfile(cache):
                self._memo.update(read_npz(cache))
            return
        for s in specs:
            p = Path(s)
            if p.is_dir():
                found = sorted(list(p.glob("*.npz")) + list(p.glob("*.pkl")))
                if not found:
                    raise DataError(f"{p}: directory holds no .npz/.pkl proposal files")
                self.files.extend(found)
            elif p.is_file():
                if p.suffix not in (".npz", ".pkl"):
                    raise DataError(f"{p}: proposal files must be .npz or detectron2 .pkl")
                self.files.append(p)
            else:
                raise DataError(
                    f"proposals {s!r}: no such file or directory (and not a method: {', '.join(METHODS)})"
                )
        for f in self.files:
            if f.suffix == ".pkl":
                for k, v in load_detectron2_pkl(f).items():
                    self._memo.setdefault(k, v)

    def _open(self) -> list:
        # NpzFile handles are opened lazily per process (DataLoader workers fork)
        if self._npz is None or self._pid != os.getpid():
            self._npz = []
            for f in self.files:
                if f.suffix == ".npz":
                    try:
                        z = np.load(f, allow_pickle=False)
                    except Exception as e:  # noqa: BLE001
                        raise DataError(f"{f}: cannot read proposal .npz ({short_repr(str(e))})") from None
                    if not hasattr(z, "files"):
                        raise DataError(f"{f}: not a proposal .npz (a single .npy array)")
                    self._npz.append((f, z, set(z.files)))
            self._pid = os.getpid()
        return self._npz

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_npz"] = None
        return d

    def describe(self) -> str:
        return self.method if self.method else ", ".join(str(f) for f in self.files)

    def raw(self, image_id, image: Optional[Tensor] = None) -> Tuple[np.ndarray, str]:
        """Unfiltered proposals of one image and the name of the file they came from."""
        key = str(image_id)
        if key in self._memo:
            return self._memo[key], self.cache or self.describe()
        if self.method is not None:
            if image is None:
                raise DataError(f"proposals of image {key!r} must be computed ({self.method}) but no image was given")
            arr = image.permute(1, 2, 0).contiguous().numpy() if isinstance(image, Tensor) else np.asarray(image)
            boxes = compute_proposals(arr, self.method, self.max_proposals, self.max_side)
            self._memo[key] = boxes
            return boxes, self.method
        for f, z, keys in self._open():
            if key in keys:
                return npz_array(z, key, f), str(f)
        raise DataError(f"{self.describe()}: no proposals for image {key!r}")

    def get(self, image_id, image_size: Optional[Tuple[int, int]] = None, image: Optional[Tensor] = None) -> Tensor:
        """Validated, filtered proposals ``float32 [K, 4]`` of one image (xyxy, original pixels)."""
        boxes, src = self.raw(image_id, image)
        if image_size is None and image is not None:
            image_size = (int(image.shape[-2]), int(image.shape[-1]))
        t = validate_boxes(boxes, image_id, src, image_size)
        return filter_proposals(t, self.max_proposals, self.nms_iou, self.min_size)

    def computed(self) -> Dict[str, np.ndarray]:
        """The proposals held in memory (computed, loaded from the cache or a .pkl), by image id."""
        return dict(self._memo)

    def add_computed(self, image_id, boxes: np.ndarray) -> None:
        """Record proposals computed elsewhere (e.g. in a worker process) for ``image_id``."""
        self._memo[str(image_id)] = boxes

    def clear_computed(self) -> None:
        """Forget the proposals held in memory (a method source recomputes them on demand)."""
        self._memo.clear()

    def save_cache(self) -> None:
        if self.method is not None and self.cache and self._memo:
            save_npz(self.cache, self._memo, {"method": self.method, "max_proposals": self.max_proposals,
                                              "max_side": self.max_side})


# --------------------------------------------------------------------------- datasets
def voc_image_list(root: Union[str, Path], split: str) -> List[Tuple[str, Path]]:
    """``(image_id, path)`` for a VOC-layout root (``ImageSets/Main/<split>.txt``, ``JPEGImages``)
    or a COCO-layout root (``annotations/instances_<split>.json``, ``<split>/``).

    The COCO json is read by :func:`incdet.data.cocofile.read_coco_json` (``images`` must be a
    list of objects with unique int/str ``id`` and a string ``file_name``); any problem is a
    :class:`DataError` naming the file."""
    root = Path(root)
    lst = root / "ImageSets" / "Main" / f"{split}.txt"
    if lst.is_file():
        try:
            ids = [l.split()[0] for l in lst.read_text(encoding="utf-8").splitlines() if l.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{lst}: cannot read image set list ({e})") from None
        out = []
        for i in ids:
            p = root / "JPEGImages" / f"{i}.jpg"
            if not p.is_file():
                cands = list((root / "JPEGImages").glob(f"{i}.*"))
                if not cands:
                    raise DataError(f"{lst}: image {i!r} has no file in {root / 'JPEGImages'}")
                p = cands[0]
            out.append((i, p))
        return out
    ann = root / "annotations" / f"instances_{split}.json"
    if ann.is_file():
        data = read_coco_json(ann, "COCO annotation", images_only=True, image_fields=("id", "file_name"))
        return [(str(im["id"]), root / split / im["file_name"]) for im in data["images"]]
    raise DataError(f"{root}: neither {lst} (VOC layout) nor {ann} (COCO layout) exists")


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    im = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if im is None:
        raise DataError(f"{path}: cannot read image")
    return im[:, :, ::-1]


def _job(args):
    image_id, path, method, max_proposals, max_side = args
    try:
        return image_id, compute_proposals(_read_rgb(Path(path)), method, max_proposals, max_side), None
    except DataError as e:
        return image_id, None, str(e)


def worker_init() -> None:
    """Initializer of a proposal worker process: one thread for torch and OpenCV (as DataLoader
    workers do: a forked child must not use the parent's OpenMP thread pools)."""
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def run_pool(fn, jobs: Sequence, workers: int = 0, desc: str = "proposals", progress: bool = True,
             min_jobs: int = 2, chunksize: int = 4, fork_only: bool = False) -> Iterable:
    """Yield ``fn(job)`` for every job, in completion order: the project's one proposal process pool.

    ``workers`` processes (0: all CPUs), started with ``fork`` (``spawn`` where fork does not
    exist, unless ``fork_only``: then the jobs run here), initialised by :func:`worker_init`;
    with one worker or fewer than ``min_jobs`` jobs they run in this process. A tqdm bar counts
    the results (``progress``). The pool is terminated when the caller stops iterating.
    """
    import multiprocessing as mp

    from tqdm import tqdm

    workers = workers or (os.cpu_count() or 1)
    methods = mp.get_all_start_methods()
    pool = None
    if workers > 1 and len(jobs) >= min_jobs and ("fork" in methods or not fork_only):
        ctx = mp.get_context("fork" if "fork" in methods else "spawn")
        pool = ctx.Pool(workers, initializer=worker_init)
        it: Iterable = pool.imap_unordered(fn, jobs, chunksize=chunksize)
    else:
        it = map(fn, jobs)
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, unit="img")
    try:
        for r in it:
            yield r
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()


class ShardCache:
    """A resumable cache of computed proposals: one small ``.npz`` per image in ``directory``.

    Each shard (``<image id>.npz``, or ``id-<sha1>.npz`` for an id that is not a plain file
    name) holds one array ``boxes`` (``float32 [K, 4]``), is written atomically (temporary file +
    ``os.replace``) as soon as the image is done, so a killed run keeps every finished image. The
    zip container checks a CRC-32 of the array on reading; a shard is also checked like any
    proposal file (header bounded before allocation, ``[K, 4]`` with ``K <= max_proposals``,
    finite, not inverted, inside the image's possible range). A shard that fails any check is
    reported, deleted and recomputed, never used. ``params.json`` records the method and its
    parameters; a cache made with other parameters is refused (:class:`DataError` naming it).
    Nothing is unpickled (``allow_pickle=False``).
    """

    PARAMS = "params.json"

    def __init__(self, directory: Union[str, Path], params: dict):
        self.dir = Path(directory)
        self.params = dict(params)
        self.damaged: List[str] = []
        self.dir.mkdir(parents=True, exist_ok=True)
        pf = self.dir / self.PARAMS
        if pf.is_file():
            try:
                have = json.loads(pf.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError):
                have = None  # unreadable: treated as damaged, rewritten below when the cache is empty
            if have != self.params:
                if have is None and not any(self.dir.glob("*.npz")):
                    pass
                else:
                    raise DataError(f"{pf}: this proposal cache was made with other parameters "
                                    f"({short_repr(have)}, now {short_repr(self.params)}); delete {self.dir} "
                                    f"or use another cache directory")
        self._write(pf, json.dumps(self.params, sort_keys=True).encode())

    @staticmethod
    def _name(image_id: str) -> str:
        import hashlib
        import re

        if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}", image_id) and not image_id.startswith("id-"):
            return image_id + ".npz"
        return "id-" + hashlib.sha1(image_id.encode("utf-8")).hexdigest() + ".npz"

    def path(self, image_id: str) -> Path:
        return self.dir / self._name(str(image_id))

    def _write(self, path: Path, data: bytes) -> None:
        write_atomic(path, lambda f: f.write(data), binary=True)

    def put(self, image_id: str, boxes: np.ndarray) -> None:
        """Store one image's boxes (atomically)."""
        import io

        buf = io.BytesIO()
        np.savez(buf, boxes=np.ascontiguousarray(boxes, dtype=np.float32).reshape(-1, 4))
        self._write(self.path(image_id), buf.getvalue())

    def get(self, image_id: str) -> Optional[np.ndarray]:
        """The stored boxes of ``image_id``, or None when there is no shard or it is damaged
        (then it is deleted and listed in ``self.damaged``)."""
        p = self.path(image_id)
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                if not hasattr(z, "files") or z.files != ["boxes"]:
                    raise DataError(f"{p}: expected one array 'boxes'")
                arr = npz_array(z, "boxes", p)
            mp = int(self.params.get("max_proposals", MAX_STORED_PROPOSALS))
            if arr.dtype != np.float32 or len(arr) > mp:
                raise DataError(f"{p}: {arr.dtype} [{len(arr)}, 4], expected float32 with at most {mp} rows")
            validate_boxes(arr, image_id, str(p))
            if arr.size and arr.min() < 0:
                raise DataError(f"{p}: negative coordinates")
            return arr.reshape(-1, 4)
        except Exception as e:  # noqa: BLE001 - zipfile (bad CRC), numpy, DataError: all mean "damaged"
            log.warning("proposal cache: damaged shard %s (%s): recomputed", p, short_repr(str(e)))
            self.damaged.append(str(image_id))
            with contextlib.suppress(OSError):
                p.unlink()
            return None

    def clear(self) -> None:
        """Delete the cache directory's shards, its parameter file and the directory (if empty)."""
        for f in [*self.dir.glob("*.npz"), *self.dir.glob(".*.tmp"), *self.dir.glob(".*.tmp-*"),
                  self.dir / self.PARAMS]:  # .*.tmp-*: write_atomic's temp files of a killed run
            with contextlib.suppress(OSError):
                f.unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()


def compute_for_images(
    items: Sequence[Tuple[str, Union[str, Path]]],
    method: str = "selective_search",
    max_proposals: int = 2000,
    max_side: int = 500,
    workers: int = 0,
    progress: bool = True,
    cache_dir: Optional[Union[str, Path]] = None,
    chunksize: int = 1,
) -> Dict[str, np.ndarray]:
    """Proposals for ``(image_id, path)`` pairs, in :func:`run_pool` with ``workers`` (0: all CPUs).

    With ``cache_dir`` (a :class:`ShardCache`), every image is stored as soon as it is done,
    images already stored (and intact) are not recomputed, so a killed run resumes where it
    stopped. The result does not depend on ``workers`` (each image is computed alone, with a
    seeded generator) nor on the cache. ``chunksize``: images per task sent to a worker (1
    balances best: images differ in cost by several times)."""
    cache = ShardCache(cache_dir, {"method": method, "max_proposals": max_proposals, "max_side": max_side}) \
        if cache_dir is not None else None
    out: Dict[str, np.ndarray] = {}
    if cache is not None:
        for i, _ in items:
            got = cache.get(str(i))
            if got is not None:
                out[str(i)] = got
        if out:
            log.info("proposal cache %s: %d of %d images already done", cache.dir, len(out), len(items))
    jobs = [(str(i), str(p), method, max_proposals, max_side) for i, p in items if str(i) not in out]
    for image_id, boxes, err in run_pool(_job, jobs, workers, f"proposals ({method})", progress, chunksize=chunksize):
        if err is not None:
            raise DataError(err)
        if cache is not None:
            cache.put(image_id, boxes)
        out[image_id] = boxes
    return {str(i): out[str(i)] for i, _ in items}


__all__ = [
    "selective_search",
    "sliding_window_proposals",
    "compute_proposals",
    "validate_boxes",
    "filter_proposals",
    "save_npz",
    "load_detectron2_pkl",
    "ProposalSource",
    "voc_image_list",
    "compute_for_images",
    "ShardCache",
    "read_npz",
    "run_pool",
    "worker_init",
]
