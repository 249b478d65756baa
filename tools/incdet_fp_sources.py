"""Where an incdet model's confident detections go, and what the objects of classes it has not
learned yet cost its mAP.

    python tools/incdet_fp_sources.py RUN_DIR [--task 0] [--score 0.5] [--json OUT.json]

For the checkpoint after task ``--task`` of ``RUN_DIR`` (``checkpoints/taskK.pt``, or the
``tasks.init_from`` checkpoint for the first task of a run that started from one), on the task's
test split with every ground-truth box (all classes, also those not seen yet):

1. the detections of the seen classes with score >= ``--score``, highest first, each put in one
   category (:func:`categorize`): ``correct``, ``duplicate``, ``other seen class`` (on an object
   of another class the model knows), ``unseen class`` (on an object of a class not learned yet,
   i.e. background in every image the model was trained on), ``localisation`` (IoU 0.1-0.5 with
   an object) or ``background``;
2. the seen classes' mAP as evaluated, and again with the detections that lie on objects of unseen
   classes removed (:func:`on_unseen`; an oracle: no deployable model knows where those objects
   are). The difference is the mAP the unlabelled objects of future classes cost the model.

In class-incremental training the first task's images contain objects of the later classes with
no boxes, so they are trained as background; on shapes-voc, whose classes are shape x pattern
pairs, such an object looks like a known class with one attribute changed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import torch
from torch import Tensor
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_learner, load_run, run_checkpoints, save_json  # noqa: E402

CATEGORIES = ("correct", "duplicate", "other seen class", "unseen class", "localisation", "background")


def categorize(boxes: Tensor, labels: Tensor, scores: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
               n_seen: int, iou: float = 0.5, loc_iou: float = 0.1) -> List[str]:
    """One category of :data:`CATEGORIES` per detection (in the given order), matching greedily by
    score as VOC does: ``correct`` = IoU >= ``iou`` with a not yet matched object of its class
    (which becomes matched), ``duplicate`` = with one already matched; otherwise the object it
    overlaps most at IoU >= ``iou`` decides: ``unseen class`` when that object's label is above
    ``n_seen``, else ``other seen class``; otherwise ``localisation`` if its best IoU with any
    object is >= ``loc_iou``, else ``background``. Labels are 1-based."""
    out = [""] * len(scores)
    if len(scores) == 0:
        return out
    ious = box_iou(boxes.float(), gt_boxes.float()) if len(gt_boxes) else torch.zeros(len(boxes), 0)
    matched = torch.zeros(len(gt_boxes), dtype=torch.bool)
    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        row = ious[i]
        same = (gt_labels == labels[i]) & (row >= iou)
        if same.any():
            j = int(torch.where(same, row, torch.full_like(row, -1.0)).argmax())
            if not matched[j]:
                matched[j] = True
                out[i] = "correct"
            else:
                out[i] = "duplicate"
            continue
        if len(row) and float(row.max()) >= iou:
            out[i] = "unseen class" if int(gt_labels[int(row.argmax())]) > n_seen else "other seen class"
        elif len(row) and float(row.max()) >= loc_iou:
            out[i] = "localisation"
        else:
            out[i] = "background"
    return out


def on_unseen(boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, n_seen: int, iou: float = 0.5) -> Tensor:
    """Mask of the detections with IoU >= ``iou`` with an object of an unseen class (label >
    ``n_seen``) and less with every object of a seen class."""
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool)
    ious = box_iou(boxes.float(), gt_boxes.float())
    unseen = gt_labels > n_seen
    hit_unseen = (ious[:, unseen] >= iou).any(1) if unseen.any() else torch.zeros(len(boxes), dtype=torch.bool)
    hit_seen = (ious[:, ~unseen] >= iou).any(1) if (~unseen).any() else torch.zeros(len(boxes), dtype=torch.bool)
    return hit_unseen & ~hit_seen


def measure(run: Path, task: int = 0, score: float = 0.5, device: str = "cpu") -> dict:
    from incdet.eval.groups import group_map
    from incdet.eval.voc import voc_evaluate

    _, cfg, tasks = load_run(run)
    if not 0 <= task < len(tasks):
        raise SystemExit(f"{run}: --task {task}: the run has tasks 0..{len(tasks) - 1}")
    ck = run_checkpoints(run, cfg).get(task)
    if ck is None:
        raise SystemExit(f"{run}: no checkpoint after task {task} ({run / 'checkpoints' / f'task{task}.pt'})")
    t = tasks[task]
    learner, _ = load_learner(cfg, ck, t, device)
    ds = t.eval_set
    dets = learner.detections(ds)
    n_seen = t.n_seen
    counts = {c: 0 for c in CATEGORIES}
    gts, preds, preds_oracle = [], {}, {}
    n_unseen_objects = 0
    # the evaluation set drops the objects of unseen classes: read them from the dataset under it
    base = ds.base
    seen_index = {name: k + 1 for k, name in enumerate(ds.classes)}
    to_seen = torch.tensor([0] + [seen_index.get(name, n_seen + 1) for name in base.classes])
    for i in range(len(ds)):
        s = ds.annotation(i)
        full = base.annotation(ds.indices[i])
        d = dets[str(s.image_id)]
        keep = d["labels"] <= n_seen
        d = {k: v[keep] for k, v in d.items()}
        gl = to_seen[full.labels.long()] if full.num_objects else full.labels.long()
        n_unseen_objects += int((gl > n_seen).sum())
        conf = d["scores"] >= score
        for c in categorize(d["boxes"][conf], d["labels"][conf], d["scores"][conf], full.boxes, gl, n_seen):
            counts[c] += 1
        drop = on_unseen(d["boxes"], full.boxes, gl, n_seen)
        preds[s.image_id] = d
        preds_oracle[s.image_id] = {k: v[~drop] for k, v in d.items()}
        gts.append(s)
    names = list(t.seen_classes)
    use07 = learner.config.use_07_metric
    ap = voc_evaluate(preds, gts, names, use_07_metric=use07).ap
    ap_o = voc_evaluate(preds_oracle, gts, names, use_07_metric=use07).ap
    total = sum(counts.values())
    return {"run": str(run), "checkpoint": str(ck), "task": t.name, "n_seen": n_seen, "score": score,
            "images": len(ds), "unseen_objects": n_unseen_objects, "detections": total, "counts": counts,
            "shares": {c: (100.0 * v / total if total else float("nan")) for c, v in counts.items()},
            "map": group_map(ap, names), "map_without_unseen_hits": group_map(ap_o, names),
            "ap": {n: 100.0 * float(ap[n]) for n in names},
            "ap_without_unseen_hits": {n: 100.0 * float(ap_o[n]) for n in names}}


def table(rows: List[dict]) -> str:
    head = ("| run (after task) | detections >= score | " + " | ".join(CATEGORIES)
            + " | mAP | mAP without detections on unseen-class objects |")
    lines = [head, "|---" + "|---:" * (head.count("|") - 2) + "|"]
    for r in rows:
        cells = [f"{Path(r['run']).name} ({r['task']})", str(r["detections"])]
        cells += [f"{r['counts'][c]} ({r['shares'][c]:.1f} %)" for c in CATEGORIES]
        cells += [f"{r['map']:.1f}", f"{r['map_without_unseen_hits']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="incdet_fp_sources", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--task", type=int, default=0, help="the checkpoint after this task (0-based)")
    p.add_argument("--score", type=float, default=0.5, help="detections counted from this score")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write the rows here")
    a = p.parse_args(argv)
    if not 0.0 <= a.score <= 1.0:
        p.error("--score must be in [0, 1]")
    rows = [measure(Path(r), a.task, a.score, a.device) for r in a.run_dirs]
    print(table(rows))
    if a.json:
        save_json(Path(a.json), {"task": a.task, "score": a.score, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
