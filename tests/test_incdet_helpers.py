"""Tiny synthetic detection data for the incdet model tests (no tests here)."""
from __future__ import annotations

from typing import List, Sequence

import torch

from incdet.data.sample import Sample
from incdet.engine.task import Task
from incdet.models.fastrcnn import DetectorConfig

COLOURS = [(230, 30, 30), (30, 200, 30), (40, 60, 230), (230, 220, 30), (200, 40, 220), (30, 210, 220)]


class SynthBoxes:
    """Images of ``size`` px with 1-2 solid rectangles; class k has colour ``COLOURS[k-1]``.

    ``classes`` restricts which labels are drawn and annotated (labels are re-numbered to
    positions in ``label_map`` when given, as a task split would)."""

    def __init__(self, n: int, size: int = 64, classes: Sequence[int] = (1, 2), seed: int = 0, prefix: str = "im",
                 label_map: Sequence[int] = None):
        g = torch.Generator().manual_seed(seed)
        self.items: List[Sample] = []
        self.classes = [f"c{k}" for k in (label_map or classes)]
        for i in range(n):
            img = (torch.rand((3, size, size), generator=g) * 40).to(torch.uint8)
            boxes, labels = [], []
            for _ in range(1 + int(torch.randint(0, 2, (1,), generator=g))):
                k = classes[int(torch.randint(0, len(classes), (1,), generator=g))]
                w = int(torch.randint(size // 4, size // 2, (1,), generator=g))
                h = int(torch.randint(size // 4, size // 2, (1,), generator=g))
                x = int(torch.randint(0, size - w, (1,), generator=g))
                y = int(torch.randint(0, size - h, (1,), generator=g))
                img[:, y: y + h, x: x + w] = torch.tensor(COLOURS[k - 1], dtype=torch.uint8)[:, None, None]
                boxes.append([x, y, x + w - 1, y + h - 1])
                labels.append((list(label_map).index(k) + 1) if label_map else k)
            self.items.append(Sample(image=img, boxes=torch.tensor(boxes, dtype=torch.float32),
                                     labels=torch.tensor(labels), image_id=f"{prefix}{i:03d}"))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def annotation(self, i):
        s = self.items[i]
        return Sample(image=None, boxes=s.boxes, labels=s.labels, difficult=s.difficult, ignore=s.ignore,
                      image_id=s.image_id, orig_size=s.orig_size)


def tiny_model_config(**kw) -> DetectorConfig:
    base = dict(depth=18, width=16, min_size=64, max_size=96, res5_stride=2, rois_per_image=16, roi_size=5)
    base.update(kw)
    return DetectorConfig(**base)


def make_tasks(n_train: int = 8, n_eval: int = 6):
    """Two tasks: classes c1,c2 then c3 (labels are positions in the class order)."""
    t0 = Task(0, "1-2", ["c1", "c2"], ["c1", "c2"], train_set=SynthBoxes(n_train, classes=(1, 2), seed=1, prefix="a"),
              eval_set=SynthBoxes(n_eval, classes=(1, 2), seed=2, prefix="e"))
    t1 = Task(1, "+3", ["c3"], ["c1", "c2", "c3"], train_set=SynthBoxes(n_train, classes=(3,), seed=3, prefix="b"),
              eval_set=SynthBoxes(n_eval, classes=(1, 2, 3), seed=4, prefix="f"))
    return t0, t1
