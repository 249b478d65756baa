"""Where a BlitzNet segmentation goes wrong: finding the objects, or naming them.

    python tools/blitznet_seg_confusion.py RUN_DIR [--json OUT.json] [--device cpu]

Loads the last checkpoint of a finished BlitzNet run (``RUN_DIR/checkpoint.pt`` with its
``config.yaml``), predicts masks on the last task's evaluation split exactly as the learner's
``evaluate`` does, and splits the pixel confusion matrix into two questions
(:func:`fg_summary`): does the network separate the objects from the background (foreground
recall and precision, any class), and among the object pixels it does find, does it give the
right class (class accuracy)? mIoU over background and every class (the learner's ``mIoU_seen``
after the last task) and the per-class IoU come with it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_run, save_json  # noqa: E402


def fg_summary(matrix) -> Dict[str, float]:
    """Foreground/background and class-identity figures of a confusion matrix ``M[g, p]``
    (pixels of ground-truth class ``g`` predicted as ``p``; class 0 is background).

    * ``fg_recall`` = object pixels predicted as any object class / object pixels
      = ``sum(M[1:, 1:]) / sum(M[1:, :])``;
    * ``fg_precision`` = object pixels predicted as any object class / pixels predicted as an
      object class = ``sum(M[1:, 1:]) / sum(M[:, 1:])``;
    * ``class_acc`` = right class among object pixels predicted as an object
      = ``trace(M[1:, 1:]) / sum(M[1:, 1:])``;
    * ``bg_iou`` = IoU of the background class.

    A ratio with a zero denominator is NaN.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(f"expected a square confusion matrix with background and >= 1 class, got shape {m.shape}")

    def ratio(a, b):
        return float(a / b) if b > 0 else float("nan")

    ff = m[1:, 1:].sum()
    return {"fg_recall": ratio(ff, m[1:, :].sum()), "fg_precision": ratio(ff, m[:, 1:].sum()),
            "class_acc": ratio(np.trace(m[1:, 1:]), ff),
            "bg_iou": ratio(m[0, 0], m[0, :].sum() + m[:, 0].sum() - m[0, 0])}


def measure(run: Path, device: str = "cpu") -> dict:
    from incdet.engine import LEARNERS
    from incdet.engine.checkpoint import load_checkpoint

    ck = run / "checkpoint.pt"
    _, cfg, tasks = load_run(run)
    if not ck.is_file():
        raise SystemExit(f"{run}: not a run directory (needs config.yaml and checkpoint.pt)")
    if cfg.learner.name != "blitznet":
        raise SystemExit(f"{run}: a {cfg.learner.name!r} run; this tool reads BlitzNet runs")
    task = tasks[-1]
    learner = LEARNERS.get("blitznet")(cfg.learner.options, device)
    learner.load_state_dict(load_checkpoint(ck)["learner"])
    net = learner.unwrapped
    if not net.config.segmentation:
        raise SystemExit(f"{run}: the network has no segmentation head")
    cm = learner.segmentation_confusion(task)
    res = cm.compute()
    names = ["background"] + list(learner.classes)
    return {"run": str(run), "images": len(task.eval_set), "mIoU": 100.0 * res.miou,
            **{k: 100.0 * v for k, v in fg_summary(cm.matrix).items()},
            "iou": {n: (None if v != v else 100.0 * float(v)) for n, v in zip(names, res.iou)}}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="blitznet_seg_confusion", description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    r = measure(a.run, a.device)
    print(f"{r['run']}: {r['images']} images, mIoU {r['mIoU']:.1f} %, background IoU {r['bg_iou']:.1f} %; "
          f"objects found: recall {r['fg_recall']:.1f} %, precision {r['fg_precision']:.1f} %; "
          f"right class among the object pixels found: {r['class_acc']:.1f} %")
    print("per-class IoU: " + ", ".join(f"{n} {'-' if v is None else f'{v:.1f}'}" for n, v in r["iou"].items()))
    if a.json:
        save_json(a.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
