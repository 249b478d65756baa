"""A task in a task-incremental sequence."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional


@dataclass
class Task:
    """One step of a sequence: a class group (detection) or an image domain.

    Attributes:
        index: 0-based position in the sequence.
        name: short display name ("1-15", "+16", "cartoon").
        new_classes: class names this task adds (empty for a domain task).
        seen_classes: all classes seen up to and including this task, in model-output order
            (the model's foreground outputs after this task are 1..len(seen_classes)).
        train_set: dataset of this task's training items (``Sample`` for detection, images for
            a domain task); follows the class-incremental rules (only this task's annotations).
        eval_set: dataset on which this task is evaluated.
        domain: the domain name for a domain task, else None.
        meta: free-form extras (e.g. the ``ClassSplit`` it came from).
    """

    index: int
    name: str
    new_classes: List[str] = field(default_factory=list)
    seen_classes: List[str] = field(default_factory=list)
    train_set: Any = None
    eval_set: Any = None
    domain: Optional[str] = None
    meta: dict = field(default_factory=dict)

    @property
    def n_seen(self) -> int:
        return len(self.seen_classes)

    @property
    def n_old(self) -> int:
        return len(self.seen_classes) - len(self.new_classes)
