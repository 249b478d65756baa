"""How the old classes' scores drift over the incremental steps of an incdet run.

    python tools/incdet_logit_drift.py RUN_DIR [--images 40] [--iou 0.7] [--ap] [--json OUT.json]

For the checkpoint after every task of ``RUN_DIR`` (``checkpoints/taskK.pt``; the first task's
checkpoint of ``tasks.init_from`` too, when the run started from one), the test-split proposals
that cover an object of the first task's classes (IoU >= ``--iou`` with its ground-truth box, on
the first ``--images`` images) are scored and the mean over them printed: the softmax probability
of background, of the object's own class and of all classes added after the first task together,
and the logits of background, of the own class and the largest added-class logit
(:func:`drift_stats`). With ``--ap`` the mAP over the first task's classes is also measured with
every detection kept (score threshold 0) beside the configured threshold: a model whose old
classes keep their ranking but whose scores fall under the threshold loses AP at the threshold
only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_learner, load_run, run_checkpoints, save_json  # noqa: E402

KEYS = ("p_bg", "p_own", "p_added", "logit_bg", "logit_own", "logit_added_max")


def drift_stats(logits: Tensor, labels: Tensor, n_old: int) -> Dict[str, float]:
    """Means over RoIs of ``logits`` ``[R, 1 + C]`` (column 0 = background, column ``c`` = class
    ``c``), each covering an object of class ``labels[r]`` (``1 <= label <= n_old``): softmax
    probability of background (``p_bg``), of the own class (``p_own``), of the classes after
    ``n_old`` summed (``p_added``); logits of background, of the own class, and the largest logit
    of an added class (``logit_added_max``; NaN when no class was added). Empty: NaN everywhere."""
    if logits.shape[0] == 0:
        return {k: float("nan") for k in KEYS}
    lg = logits.float()
    p = lg.softmax(1)
    own = labels.long()[:, None]
    added = lg.shape[1] > n_old + 1
    return {"p_bg": float(p[:, 0].mean()), "p_own": float(p.gather(1, own).mean()),
            "p_added": float(p[:, n_old + 1:].sum(1).mean()) if added else 0.0,
            "logit_bg": float(lg[:, 0].mean()), "logit_own": float(lg.gather(1, own).mean()),
            "logit_added_max": float(lg[:, n_old + 1:].max(1).values.mean()) if added else float("nan")}


def measure(run: Path, images: int = 40, iou: float = 0.7, ap: bool = False, device: str = "cpu") -> List[dict]:
    from torchvision.ops import box_iou

    from incdet.engine.config import config_from_dict

    raw, cfg, tasks = load_run(run)
    n_old = len(tasks[0].seen_classes)
    rows = []
    for k, ck in run_checkpoints(run, cfg).items():
        learner, _ = load_learner(cfg, ck, tasks[k], device)
        net, src, ds = learner.net.eval(), learner.eval_source, tasks[k].eval_set
        lg_all, lab_all = [], []
        for i in range(min(images, len(ds))):
            s = ds[i]
            props = src.get(s.image_id, None, s.image)
            keep = (s.labels >= 1) & (s.labels <= n_old)
            gt, lab = s.boxes[keep], s.labels[keep]
            if gt.shape[0] == 0 or props.shape[0] == 0:
                continue
            best, j = box_iou(props.float(), gt.float()).max(1)
            m = best >= iou
            if not m.any():
                continue
            with torch.no_grad():
                (lg, _), = net.score_proposals([s.image.to(device)], [props[m].to(device)])
            lg_all.append(lg.cpu())
            lab_all.append(lab[j[m]])
        st = drift_stats(torch.cat(lg_all) if lg_all else torch.zeros(0, 1 + n_old),
                         torch.cat(lab_all) if lab_all else torch.zeros(0, dtype=torch.long), n_old)
        row = {"checkpoint": str(ck), "after": tasks[k].name, "rois": int(sum(len(x) for x in lab_all)), **st}
        if ap:  # the configured threshold with this learner; threshold 0 with one built for it
            c0 = config_from_dict({**raw, "learner": {**raw["learner"], "eval_score_thresh": 0.0}},
                                  source=str(run / "config.yaml"))
            all_kept, _ = load_learner(c0, ck, tasks[k], device)
            for label, lr in (("map_old", learner), ("map_old_thr0", all_kept)):
                with torch.no_grad():
                    m = lr.evaluate(tasks[k])
                aps = [m.get(f"AP/{c}") for c in tasks[0].seen_classes]
                aps = [float(a) for a in aps if a is not None and a == a]
                row[label] = sum(aps) / len(aps) if aps else float("nan")
        rows.append(row)
    return rows


def table(rows: List[dict]) -> str:
    ap = any("map_old" in r for r in rows)
    head = "| after | RoIs | p(bg) | p(own class) | p(added classes) | logit bg | logit own | max logit added |"
    head += " mAP old | mAP old, threshold 0 |" if ap else ""
    lines = [head, "|---" + "|---:" * (head.count("|") - 2) + "|"]
    for r in rows:
        cells = [r["after"], str(r["rois"])] + [f"{r[k]:.3f}" for k in KEYS[:3]] + [f"{r[k]:.2f}" for k in KEYS[3:]]
        if ap:
            cells += [f"{r['map_old']:.1f}", f"{r['map_old_thr0']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="incdet_logit_drift", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--images", type=int, default=40, help="test images looked at (the first N)")
    p.add_argument("--iou", type=float, default=0.7, help="a proposal covers an object at this IoU or more")
    p.add_argument("--ap", action="store_true", help="also the first task's mAP at the configured threshold and at 0")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write the rows here")
    a = p.parse_args(argv)
    if a.images < 1 or not 0.0 < a.iou <= 1.0:
        p.error("--images must be >= 1 and --iou in (0, 1]")
    rows = measure(Path(a.run_dir), a.images, a.iou, a.ap, a.device)
    print(table(rows))
    if a.json:
        save_json(Path(a.json), {"run": a.run_dir, "images": a.images, "iou": a.iou, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
