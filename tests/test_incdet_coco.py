"""configs/incdet/coco_40+40.yaml end to end on ``../shared/data/coco-tiny`` (a smoke run: tiny
network, one iteration per task) and the pycocotools metrics it writes into results.json."""
from __future__ import annotations

import json
import math

import pytest

from conftest import REPO

CFG = REPO / "configs" / "incdet" / "coco_40+40.yaml"

#: coco_40+40 shrunk to a CPU smoke run (the schedule, network and proposals; not the protocol)
SMOKE = [
    "learner.model.weights=null", "learner.model.depth=18", "learner.model.width=16",
    "learner.model.min_size=64", "learner.model.max_size=96", "learner.model.res5_stride=2",
    "learner.model.roi_size=5", "learner.model.rois_per_image=16", "learner.model.score_thresh=0.0",
    "learner.proposals=sliding_window", "learner.max_proposals=100", "learner.eval_batch_size=8",
    "train.iterations=1", "train.first_task.iterations=1", "train.lr_steps=[]", "train.first_task.lr_steps=[]",
    "train.warmup_iters=0", "train.num_workers=0", "train.checkpoint_every=0", "train.amp=none",
    "tasks.max_train_images=6", "tasks.max_eval_images=12",
]


def test_coco_40_40_smoke_writes_coco_metrics(tmp_path, coco_tiny_root):
    from incdet.engine.trainer import run_training

    overrides = [f"tasks.root={coco_tiny_root}", *SMOKE]
    res = run_training(CFG, overrides, run_dir=tmp_path / "run", device="cpu", quiet=True)
    assert res.tasks == ["1-40", "41-80"]
    out = json.loads((tmp_path / "run" / "results.json").read_text())
    cell = out["all_metrics"][1][0]  # task 1-40 after the second task
    # pycocotools ran: AP@[.5:.95] (mAP, the matrix) and AP at IoU 0.5 beside it, per class too
    for k in ("mAP", "mAP_all", "AP50", "AP50_all", "AP50_new", "AP50/person", "AP/person"):
        assert k in cell, k
    assert "AP50_old" in out["all_metrics"][1][1] and "AP50_old" not in cell
    assert out["matrix"][1][0] == cell["mAP"] and out["matrix"][0][0] is not None
    for row in out["all_metrics"]:
        for c in row:
            if c:
                for k, v in c.items():
                    assert v is None or (0.0 <= v <= 100.0), (k, v)
    # AP@[.5:.95] averages AP over IoU .5 .. .95, so it cannot exceed AP at .5 class by class
    for k, v in cell.items():
        if k.startswith("AP/") and v is not None and not math.isnan(v):
            assert v <= cell["AP50/" + k[3:]] + 1e-9
