"""Mean AP (or IoU) over a group of classes, in percent: the one definition the learners use.

A task-incremental run reports metrics over class groups: the task's own classes, the classes
seen before it, all seen classes. :func:`group_map` is that mean for every learner (and the
codec harness), so that "mAP over a task's classes" means the same thing everywhere.
"""
from __future__ import annotations

import math
from typing import Hashable, Iterable, Mapping

import numpy as np

__all__ = ["group_map", "to_percent"]


def to_percent(x: float) -> float:
    """A fraction (0-1) as a percentage (0-100); NaN stays NaN."""
    return 100.0 * float(x)


def group_map(values: Mapping[Hashable, float], keys: Iterable[Hashable]) -> float:
    """Mean of ``values[k]`` over ``keys``, as a percentage (0-100).

    ``values`` are fractions (0-1), e.g. the per-class AP of :func:`incdet.eval.voc.voc_evaluate`
    (``VOCResult.ap``) or per-class IoUs. Keys whose value is NaN (for AP: a class without
    ground truth in the evaluation set) are left out of the mean; the result is NaN when no key
    remains (an empty group, or only NaN values). A key missing from ``values`` raises
    ``KeyError`` (a group naming a class that was not evaluated is a bug, not a NaN).
    The mean is taken over the fractions and then scaled (``100 * mean``).
    """
    vals = [float(values[k]) for k in keys]
    vals = [v for v in vals if not math.isnan(v)]
    if not vals:
        return float("nan")
    return to_percent(np.mean(np.asarray(vals, dtype=np.float64)))
