"""How many of an incremental step's background RoIs cover an old object left unlabelled.

    python tools/incdet_bg_share.py CONFIG [--set KEY=VALUE ...] [--draws 5] [--json OUT.json]

In a class-incremental step the new images keep only the new classes' boxes: an object of an
old class in them is background for the step's cross-entropy (thesis 3.3; the distillation term
is what keeps its old score). This tool samples the step's training RoIs exactly as the learner
does (``incdet.models.sampling.sample_rois`` with the run's sampler settings, the step's boxes
only, no flip) from the run's proposals, ``--draws`` times per image, and counts among the
background RoIs those with IoU >= 0.5 with an old-class object of the full annotation
(:func:`old_object_share`). It prints, per incremental task: images, proposals and old objects
per image, background RoIs per image and the share of them on an old object. Nothing is trained;
proposals are computed (and cached) as the run would.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save_json  # noqa: E402


def old_object_share(bg_rois: Tensor, old_boxes: Tensor, iou: float = 0.5) -> int:
    """Number of ``bg_rois`` ``[R, 4]`` (xyxy) with IoU >= ``iou`` with some box of ``old_boxes``
    ``[M, 4]``; 0 when either is empty."""
    from torchvision.ops import box_iou

    if bg_rois.shape[0] == 0 or old_boxes.shape[0] == 0:
        return 0
    return int((box_iou(bg_rois.float(), old_boxes.float()).max(1).values >= iou).sum())


def measure(config: str, sets: List[str], draws: int = 5, device: str = "cpu",
            max_images: Optional[int] = None) -> List[Dict[str, float]]:
    from incdet.engine import LEARNERS
    from incdet.engine.builders import build_tasks
    from incdet.engine.config import load_config
    from incdet.models.sampling import sample_rois

    cfg = load_config(config, list(sets) + ["learner.flip_prob=0"])
    tasks = build_tasks(cfg)
    learner = LEARNERS.get(cfg.learner.name)(cfg.learner.options, device)
    net = learner.net
    sampler = net.cfg.sampler()
    rows = []
    gen = torch.Generator().manual_seed(0)
    for task in tasks[1:]:
        sub = task.train_set
        base, n_old = sub.base, len(task.seen_classes) - len(task.new_classes)
        old_names = set(task.seen_classes[:n_old])
        old_ids = torch.tensor([k + 1 for k, c in enumerate(base.classes) if c in old_names])
        full = {}
        for i in sub.indices:
            a = base.annotation(i)
            keep = torch.isin(a.labels, old_ids) & ~a.ignore
            full[str(a.image_id)] = a.boxes[keep].float()
        ds = learner.train_dataset(task)
        n = len(ds) if max_images is None else min(len(ds), max_images)
        tot = {"images": 0, "proposals": 0, "old_objects": 0, "bg_rois": 0, "bg_on_old": 0, "fg_rois": 0}
        for j in range(n):
            it = ds[j]
            old = full[str(it["image_id"])]
            boxes, labels = it["boxes"].float(), it["labels"]
            tot["images"] += 1
            tot["proposals"] += int(it["proposals"].shape[0])
            tot["old_objects"] += int(old.shape[0])
            for _ in range(draws):
                s = sample_rois(it["proposals"].float(), boxes, labels, net.coder, sampler, generator=gen)
                bg = s.rois[s.labels == 0]
                tot["bg_rois"] += int(bg.shape[0])
                tot["fg_rois"] += int((s.labels > 0).sum())
                tot["bg_on_old"] += old_object_share(bg, old)
        im = max(tot["images"], 1)
        rows.append({"task": task.name, "images": tot["images"],
                     "proposals_per_image": tot["proposals"] / im,
                     "old_objects_per_image": tot["old_objects"] / im,
                     "fg_rois_per_image": tot["fg_rois"] / (im * draws),
                     "bg_rois_per_image": tot["bg_rois"] / (im * draws),
                     "bg_on_old_per_image": tot["bg_on_old"] / (im * draws),
                     "share_bg_on_old": tot["bg_on_old"] / max(tot["bg_rois"], 1)})
    return rows


def table(rows: List[Dict[str, float]]) -> str:
    out = ["| task | images | proposals / image | old objects / image | fg RoIs / image | bg RoIs / image "
           "| bg RoIs on an old object / image | share of bg RoIs on an old object |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['task']} | {r['images']} | {r['proposals_per_image']:.0f} | {r['old_objects_per_image']:.2f} "
                   f"| {r['fg_rois_per_image']:.1f} | {r['bg_rois_per_image']:.1f} | {r['bg_on_old_per_image']:.1f} "
                   f"| {100 * r['share_bg_on_old']:.1f} % |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--draws", type=int, default=5, help="RoI samplings per image (default 5)")
    ap.add_argument("--max-images", type=int, default=None, help="first N training images of each step")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="also write the rows here")
    a = ap.parse_args(argv)
    if a.draws < 1:
        ap.error("--draws must be >= 1")
    rows = measure(a.config, a.sets, a.draws, a.device, a.max_images)
    print(table(rows))
    if a.json:
        save_json(a.json, {"config": a.config, "sets": a.sets, "draws": a.draws, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
