"""Class-incremental task splits (docs/design.md, "Class-incremental tasks").

A :class:`ClassSplit` is an ordered list of class groups; task t learns group t.
``class_order`` is the concatenation of the groups, and inside a split a label is the
1-based position in ``class_order``: after task t the model has ``n_seen(t)`` foreground
outputs and the new ones are appended at the end. For shorthands over VOC/COCO order the
label equals the dataset's own label.

Subsets (thesis 3.4.2):

* ``train_subset(ds, t)``: the images containing at least one object of group t; every
  other class's annotations (old and future classes alike) are dropped and, in masks,
  their pixels become background (0). Difficult objects count as objects of their class
  (as in the reference implementation, which keeps them as ground truth); build the
  dataset with ``use_difficult=False`` to drop them first. COCO crowd objects
  (``ignore=True``) do not make an image eligible (they are not positives) but are kept
  as ignore regions when their class is in group t.
* ``eval_subset(ds, t)``: all images; objects of the classes seen up to task t kept, the
  others dropped; unseen classes' mask pixels become background (0).

Void (255) mask pixels stay void. Subsets are light: an index list over the base dataset
plus a label lookup table; filtering reads ``annotation(i)`` only (no image decoding).
"""
from __future__ import annotations

import re
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from incdet.data.sample import Sample
from incdet.errors import ConfigError, DataError

_TOKEN = re.compile(r"^\s*(\d+)\s*(?:[xX*]\s*(\d+))?\s*$")


def parse_sizes(spec: str) -> List[int]:
    """``"15+1x5"`` -> ``[15, 1, 1, 1, 1, 1]``; ``"10+10"`` -> ``[10, 10]``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"class split {spec!r}: expected group sizes like '15+5' or '15+1x5'")
    sizes: List[int] = []
    for tok in spec.split("+"):
        m = _TOKEN.match(tok)
        if not m:
            raise ConfigError(f"class split {spec!r}: cannot parse {tok!r} (expected N or NxK)")
        n, k = int(m.group(1)), int(m.group(2) or 1)
        if n <= 0 or k <= 0:
            raise ConfigError(f"class split {spec!r}: group sizes and repeat counts must be positive, got {tok.strip()!r}")
        sizes.extend([n] * k)
    return sizes


class ClassSplit:
    """Ordered class groups over a dataset's class list.

    Args:
        groups: list of lists of class names, one list per task. The groups may cover
            only part of ``classes``; classes outside every group are never seen.
        classes: the dataset's class names (label k = ``classes[k-1]``).

    Use :meth:`parse` for shorthands (``"19+1"``, ``"15+1+1+1+1+1"`` = ``"15+1x5"``,
    ``"40+40"``), which take the classes in dataset order and must cover all of them.
    """

    def __init__(self, groups: Sequence[Sequence[str]], classes: Sequence[str]):
        classes = list(classes)
        if len(set(classes)) != len(classes):
            raise ConfigError(f"class list has duplicate names: {classes}")
        if isinstance(groups, str) or not len(groups):
            raise ConfigError("a class split needs at least one group (a list of lists of class names)")
        known = set(classes)
        seen: List[str] = []
        out: List[List[str]] = []
        for t, g in enumerate(groups):
            if isinstance(g, str):
                raise ConfigError(f"class split group {t} must be a list of class names, got the string {g!r}")
            g = list(g)
            if not g:
                raise ConfigError(f"class split group {t} is empty")
            unknown = [c for c in g if c not in known]
            if unknown:
                raise ConfigError(f"class split group {t}: unknown class names {unknown}; known: {', '.join(classes)}")
            dup = [c for c in g if c in seen or g.count(c) > 1]
            if dup:
                raise ConfigError(f"class split group {t}: classes appear more than once in the split: {sorted(set(dup))}")
            seen.extend(g)
            out.append(g)
        self.classes: List[str] = classes
        self.groups: List[List[str]] = out
        self.class_order: List[str] = seen
        self.spec: Optional[str] = None

    @classmethod
    def parse(cls, spec: str, classes: Sequence[str]) -> "ClassSplit":
        """Group sizes over ``classes`` in their order: ``"15+5"`` -> classes[:15], classes[15:]."""
        classes = list(classes)
        sizes = parse_sizes(spec)
        if sum(sizes) != len(classes):
            raise ConfigError(
                f"class split {spec!r}: group sizes sum to {sum(sizes)} but the dataset has {len(classes)} classes"
            )
        groups, k = [], 0
        for n in sizes:
            groups.append(classes[k:k + n])
            k += n
        split = cls(groups, classes)
        split.spec = spec
        return split

    # -- queries -----------------------------------------------------------------------
    @property
    def n_tasks(self) -> int:
        return len(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def _check_t(self, t: int) -> int:
        if not isinstance(t, (int, np.integer)) or not 0 <= t < len(self.groups):
            raise IndexError(f"task index {t!r} out of range for a split with {len(self.groups)} tasks")
        return int(t)

    def n_seen(self, t: int) -> int:
        """Foreground outputs after task t: ``sum(len(g) for g in groups[:t+1])``."""
        t = self._check_t(t)
        return sum(len(g) for g in self.groups[: t + 1])

    def group_names(self, t: int) -> List[str]:
        """The classes task t adds."""
        return list(self.groups[self._check_t(t)])

    def seen_names(self, t: int) -> List[str]:
        """All classes seen up to and including task t, in output order."""
        return self.class_order[: self.n_seen(t)]

    def group_labels(self, t: int) -> List[int]:
        """Split labels (1-based positions in ``class_order``) of the classes task t adds."""
        lo = self.n_seen(t) - len(self.groups[t])
        return list(range(lo + 1, self.n_seen(t) + 1))

    def task_name(self, t: int) -> str:
        """``"1-15"`` for a first group of 15, ``"16"`` / ``"16-20"`` for later ones."""
        hi = self.n_seen(t)
        lo = hi - len(self.groups[t]) + 1
        return str(lo) if lo == hi else f"{lo}-{hi}"

    def __repr__(self) -> str:
        sizes = "+".join(str(len(g)) for g in self.groups)
        return f"ClassSplit({sizes} over {len(self.classes)} classes)"

    # -- subsets -----------------------------------------------------------------------
    def _lut(self, dataset_classes: Sequence[str], keep: Sequence[str]) -> np.ndarray:
        """Dataset label -> split label (0 = drop) for the classes in ``keep``."""
        dataset_classes = list(dataset_classes)
        missing = [c for c in self.class_order if c not in dataset_classes]
        if missing:
            raise DataError(
                f"class split uses classes the dataset does not have: {missing}; dataset classes: {dataset_classes}"
            )
        pos = {c: i + 1 for i, c in enumerate(self.class_order)}
        keep = set(keep)
        lut = np.zeros(max(256, len(dataset_classes) + 1), dtype=np.int64)
        for k, c in enumerate(dataset_classes, start=1):
            if c in keep:
                lut[k] = pos[c]
        return lut

    def train_subset(self, dataset, t: int) -> "TaskSubset":
        """Images with >= 1 (non-crowd) object of group t; other classes dropped (see module doc)."""
        t = self._check_t(t)
        lut = self._lut(dataset.classes, self.groups[t])
        lut_t = torch.from_numpy(lut)
        read = getattr(dataset, "annotation", None) or dataset.__getitem__  # annotation(): no decoding
        indices = []
        for i in range(len(dataset)):
            s = read(i)
            if s.num_objects and bool((lut_t[s.labels].gt(0) & ~s.ignore).any()):
                indices.append(i)
        return TaskSubset(dataset, indices, lut, self.seen_names(t), task=t, kind="train")

    def eval_subset(self, dataset, t: int) -> "TaskSubset":
        """All images; objects of classes seen up to t kept, the rest dropped."""
        t = self._check_t(t)
        lut = self._lut(dataset.classes, self.seen_names(t))
        return TaskSubset(dataset, list(range(len(dataset))), lut, self.seen_names(t), task=t, kind="eval")


class TaskSubset(Dataset):
    """A view of a dataset: selected indices, labels remapped through a lookup table.

    Labels (and mask values) ``k`` become ``lut[k]``; objects mapped to 0 are dropped,
    mask pixels mapped to 0 become background, 255 stays void. ``classes`` are the
    classes seen so far (label k = ``classes[k-1]``); ``new_classes`` the task's group.
    """

    def __init__(self, base, indices: Sequence[int], lut: np.ndarray, classes: Sequence[str],
                 task: int = 0, kind: str = "eval"):
        self.base = base
        self.indices = list(indices)
        self._lut = torch.from_numpy(lut)
        mask_lut = lut[:256].copy()
        mask_lut[255] = 255  # void stays void
        if mask_lut.max() > 255 or (mask_lut[:255] == 255).any():
            raise DataError("class split needs more than 254 classes in a uint8 mask")
        self._mask_lut = torch.from_numpy(mask_lut.astype(np.uint8))
        self.classes = list(classes)
        self.task = task
        self.kind = kind

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def ids(self) -> list:
        return [self.base.ids[i] for i in self.indices] if hasattr(self.base, "ids") else list(self.indices)

    def _remap(self, s: Sample) -> Sample:
        new = self._lut[s.labels] if s.num_objects else s.labels
        keep = new > 0
        out = s.select(keep)
        out.labels = new[keep]
        if s.mask is not None:
            out.mask = self._mask_lut[s.mask.long()]
        return out

    def annotation(self, i: int) -> Sample:
        read = getattr(self.base, "annotation", None) or self.base.__getitem__
        return self._remap(read(self.indices[i]))

    def __getitem__(self, i: int) -> Sample:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._remap(self.base[self.indices[i]])

    def __repr__(self) -> str:
        return f"TaskSubset({self.kind}, task={self.task}, images={len(self)}, classes={len(self.classes)})"
