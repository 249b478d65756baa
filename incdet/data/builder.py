"""The ``classes`` task builder: class-incremental splits over VOC / COCO / shapes-voc data.

Registered as task builder ``classes`` when imported (entry point ``incdet.task_builders``);
its options are :class:`ClassTasksConfig`. Task ``t`` trains on
``split.train_subset(train, t)`` and is evaluated on ``split.eval_subset(eval, t)``
(:class:`incdet.data.ClassSplit`, docs/design.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Union

from incdet.engine.builders import task_builder
from incdet.engine.task import Task
from incdet.errors import ConfigError


@dataclass
class ClassTasksConfig:
    """Options of the ``classes`` builder.

    ``data``: ``voc`` (``root`` = the VOC20xx folder, splits are ImageSets/Main lists),
    ``coco`` (``root`` holds ``annotations/instances_{split}.json`` and ``{split}/`` images),
    ``shapes`` (``root`` = where the shapes-voc data set is generated, or re-used when it is
    already there with the same ``shapes`` parameters; read as VOC).
    ``split``: group sizes over the dataset's class order (``"15+5"``, ``"10+10"``,
    ``"15+1x5"``, ``"40+40"``) or explicit groups (a list of lists of class names).
    ``max_train_images`` / ``max_eval_images``: keep only the first N images of each task
    subset (for quick runs).
    """

    data: Literal["voc", "coco", "shapes"] = "voc"
    root: str = ""
    train_split: str = "trainval"
    eval_split: str = "test"
    split: Union[str, List[List[str]]] = "15+5"
    use_difficult: bool = True
    keep_masks: bool = True
    max_train_images: Optional[int] = None
    max_eval_images: Optional[int] = None
    shapes: Dict[str, Any] = field(default_factory=dict)


class First:
    """The first ``n`` items of a dataset (``len`` is ``min(n, len(base))``); ``annotation(i)`` and
    every other attribute (``classes`` ...) are the base dataset's."""

    def __init__(self, base, n: int):
        self.base, self.n = base, min(n, len(base))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.base[i]

    def annotation(self, i):
        return self.base.annotation(i)

    def __getattr__(self, name):
        if name == "base":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.base, name)


def _open_dataset(o: ClassTasksConfig, split: str):
    from incdet.data import COCODetection, VOCDetection

    root = Path(o.root)
    if o.data == "coco":
        ann = root / "annotations" / f"instances_{split}.json"
        return COCODetection(ann, root / split, keep_masks=o.keep_masks)
    return VOCDetection(root, split, use_difficult=o.use_difficult, keep_masks=o.keep_masks)


@task_builder("classes", ClassTasksConfig)
def build_class_tasks(o: ClassTasksConfig) -> List[Task]:
    """Class-incremental tasks: task t trains on ``split.train_subset(train, t)`` and is
    evaluated on ``split.eval_subset(eval, t)`` (docs/design.md)."""
    from incdet.data import ClassSplit

    if not o.root:
        raise ConfigError("tasks.root must be set (the dataset folder)")
    if o.data == "shapes":
        from incdet.data.shapes import ensure_shapes

        try:
            ensure_shapes(o.root, **o.shapes)
        except TypeError as e:
            raise ConfigError(f"tasks.shapes: {e}") from None
    elif not Path(o.root).is_dir():
        raise ConfigError(f"tasks.root: {o.root}: no such directory")
    train = _open_dataset(o, o.train_split)
    evals = train if o.eval_split == o.train_split else _open_dataset(o, o.eval_split)
    split = ClassSplit.parse(o.split, train.classes) if isinstance(o.split, str) else ClassSplit(o.split, train.classes)
    tasks = []
    for t in range(split.n_tasks):
        tr, ev = split.train_subset(train, t), split.eval_subset(evals, t)
        if o.max_train_images is not None:
            tr = First(tr, o.max_train_images)
        if o.max_eval_images is not None:
            ev = First(ev, o.max_eval_images)
        tasks.append(Task(index=t, name=split.task_name(t), new_classes=split.group_names(t),
                          seen_classes=split.seen_names(t), train_set=tr, eval_set=ev,
                          meta={"split": split, "data": o.data}))
    return tasks
