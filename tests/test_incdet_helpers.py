"""Tiny synthetic detection data for the incdet model tests (no tests here)."""
from __future__ import annotations

from conftest import load_tool
from incdet.engine.task import Task
from incdet.models.fastrcnn import DetectorConfig

# one definition of the synthetic boxes data, shared with the step-cost benchmark
SynthBoxes = load_tool("bench_incdet").SynthBoxes


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
