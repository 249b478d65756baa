#!/usr/bin/env python3
"""Cost of an incremental training step of incdet.fastrcnn relative to a plain step.

Three step kinds on the same network (after ``add_classes``), the same batches (2 images,
``--rois`` training RoIs per image) and the same optimizer:

* ``plain``: Fast R-CNN loss only (what training A, or naive fine-tuning, costs);
* ``live``: + distillation with a live frozen teacher that scores all proposals of each image
  and picks 64 of the 128 least-background ones (the student then also runs its head on those
  64 RoIs per image);
* ``cached``: + distillation from cached teacher responses (the cache is warmed first).

With ``--compare-old`` two more kinds run in the same interleaved loop: ``live_noreuse`` and
``cached_noreuse``, the same steps with ``model.reuse_rois: false`` (every distillation RoI
through the head even when it equals a training RoI: the path before issue 18).

Targets (issues 4, 18): live <= 1.5x plain (GPU), cached <= 1.1x plain (GPU) and <= 1.5x (CPU).
The step time is the median wall time of forward + backward + SGD step over ``--iters`` steps
after ``--warmup``; the kinds are interleaved step by step, and the load average of the machine
is recorded before and after (other jobs share a CPU).

    python tools/bench_incdet.py --size 160 --depth 18 --width 32 --json bench_incdet.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from incdet.data.sample import Sample  # noqa: E402
from incdet.engine.distributed import resolve_device  # noqa: E402
from incdet.engine.task import Task  # noqa: E402
from incdet.models.fastrcnn import DetectorConfig  # noqa: E402
from incdet.errors import IncdetError  # noqa: E402
from incdet.models.learner import FastRCNNLearner, FastRCNNLearnerConfig  # noqa: E402


#: the three step kinds, "plain" first (the reference of the ratios)
KINDS = ("plain", "live", "cached")
#: the old path of the distillation kinds (``--compare-old``)
OLD_KINDS = ("live_noreuse", "cached_noreuse")
COLOURS = [(230, 30, 30), (30, 200, 30), (40, 60, 230), (230, 220, 30), (200, 40, 220), (30, 210, 220)]


def colour(k: int):
    """The fill colour of class ``k`` (1-based): :data:`COLOURS`, then a formula beyond 6 classes."""
    return COLOURS[k - 1] if k <= len(COLOURS) else ((37 * k) % 255, (91 * k) % 255, (53 * k) % 255)


class SynthBoxes:
    """Images of ``size`` px with 1 to ``max_boxes`` solid rectangles; class k has colour
    :func:`colour` ``(k)``, sides from ``size // min_side_div`` to ``size // 2``, on uniform noise
    below ``noise``. The synthetic detection data of this benchmark and of the incdet model tests.

    ``classes`` restricts which labels are drawn and annotated (labels are re-numbered to
    positions in ``label_map`` when given, as a task split would). Image ids: ``prefix`` + index."""

    def __init__(self, n: int, size: int = 64, classes: Sequence[int] = (1, 2), seed: int = 0, prefix: str = "im",
                 label_map: Optional[Sequence[int]] = None, max_boxes: int = 2, noise: int = 40, min_side_div: int = 4):
        g = torch.Generator().manual_seed(seed)
        self.items: List[Sample] = []
        self.classes = [f"c{k}" for k in (label_map or classes)]
        for i in range(n):
            img = (torch.rand((3, size, size), generator=g) * noise).to(torch.uint8)
            boxes, labels = [], []
            for _ in range(1 + int(torch.randint(0, max_boxes, (1,), generator=g))):
                k = classes[int(torch.randint(0, len(classes), (1,), generator=g))]
                w = int(torch.randint(size // min_side_div, size // 2, (1,), generator=g))
                h = int(torch.randint(size // min_side_div, size // 2, (1,), generator=g))
                x = int(torch.randint(0, size - w, (1,), generator=g))
                y = int(torch.randint(0, size - h, (1,), generator=g))
                img[:, y: y + h, x: x + w] = torch.tensor(colour(k), dtype=torch.uint8)[:, None, None]
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


def _step(learner, opt, batch, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = learner.training_step(batch)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def _loadavg() -> Optional[List[float]]:
    """The 1, 5 and 15 min load averages (``None`` where the platform has none)."""
    try:
        return list(os.getloadavg())
    except (AttributeError, OSError):
        return None


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=160, help="image side (the model's min_size/max_size too)")
    ap.add_argument("--depth", type=int, default=18)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--res5-stride", type=int, default=2)
    ap.add_argument("--roi-size", type=int, default=7)
    ap.add_argument("--rois", type=int, default=64, help="training RoIs per image")
    ap.add_argument("--proposals", type=int, default=500, help="proposals per image (sliding windows)")
    ap.add_argument("--teacher-max-proposals", type=int, default=0, help="live teacher scores only the first N (0: all)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--images", type=int, default=8, help="distinct training images (cycled)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    ap.add_argument("--teacher-precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                    help="live teacher's precision (bf16/fp16: CUDA only)")
    ap.add_argument("--compare-old", action="store_true",
                    help="also time live/cached with model.reuse_rois false (the path before issue 18)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default="bench_incdet.json")
    return ap.parse_args(argv)


def make_tasks(args) -> Tuple[Task, Task]:
    """Task 0: classes 1-4; task 1 adds class 5 (``args.images`` synthetic training images each)."""
    old, new = [1, 2, 3, 4], [5]
    data = dict(size=args.size, max_boxes=3, noise=60, min_side_div=6)
    t0 = Task(0, "1-4", [f"c{k}" for k in old], [f"c{k}" for k in old],
              train_set=SynthBoxes(args.images, classes=old, seed=1, prefix="r1_", **data), eval_set=None)
    t1 = Task(1, "+5", ["c5"], [f"c{k}" for k in old + new],
              train_set=SynthBoxes(args.images, classes=new, seed=2, prefix="r2_", **data), eval_set=None)
    return t0, t1


def build_setups(args, device, t0: Task, t1: Task) -> Tuple[dict, dict]:
    """A learner after ``add_classes`` (in task 1), its optimizer and batches for each step kind;
    the cached kind's teacher cache is warmed. Returns ``(setups, results)``."""
    mcfg = DetectorConfig(depth=args.depth, width=args.width, min_size=args.size, max_size=args.size,
                          res5_stride=args.res5_stride, roi_size=args.roi_size, rois_per_image=args.rois)
    setups, results = {}, {}
    for kind in KINDS + (OLD_KINDS if args.compare_old else ()):
        cfg = FastRCNNLearnerConfig(model=dataclasses.replace(mcfg, reuse_rois=not kind.endswith("_noreuse")),
                                    proposals="sliding_window", max_proposals=args.proposals,
                                    proposal_nms=None, flip_prob=0.0, distill="none" if kind == "plain" else "l2",
                                    teacher_cache=kind.startswith("cached"),
                                    teacher_max_proposals=args.teacher_max_proposals or None,
                                    teacher_precision=args.teacher_precision)
        torch.manual_seed(0)
        L = FastRCNNLearner(cfg, device)
        L.begin_task(t0)
        L.begin_task(t1)
        ds = L.train_dataset(t1)
        batches = [L.collate([ds[2 * i % len(ds)], ds[(2 * i + 1) % len(ds)]]) for i in range(max(1, len(ds) // 2))]
        if kind.startswith("cached"):  # warm the cache: one pass over the batches
            for b in batches:
                L.teacher_targets([im.to(device) for im in b["image"]], [p.to(device) for p in b["proposals"]],
                                  [(str(i), bool(f)) for i, f in zip(b["image_id"], b["flipped"])])
        opt = torch.optim.SGD(L.parameter_groups(), lr=1e-4, momentum=0.9)
        n_props = float(sum(len(p) for b in batches for p in b["proposals"])) / sum(len(b["proposals"]) for b in batches)
        setups[kind] = (L, opt, batches)
        results[kind] = {"times_s": [], "mean_proposals": n_props, "reused_rois": []}
    return setups, results


def time_steps(args, device, setups: dict, results: dict) -> None:
    """Median step time of each kind into ``results[kind]``; the kinds are interleaved step by
    step, so that machine load affects them alike."""
    for k in range(args.warmup + args.iters):
        for kind, (L, opt, batches) in setups.items():
            dt = _step(L, opt, batches[k % len(batches)], device)
            if k >= args.warmup:
                results[kind]["times_s"].append(dt)
                results[kind]["reused_rois"].append(int(L.net.last_stats.get("num_reused", 0)))
    for kind in setups:
        r = results[kind]
        r["median_s"] = statistics.median(r["times_s"])
        r["mean_reused_rois"] = statistics.mean(r["reused_rois"]) if r["reused_rois"] else 0.0


def time_parts(args, device, setups: dict) -> dict:
    """Where the time goes: trunk (stem..res4) vs RoI head (res5 + linear layers), fwd + bwd, for
    one plain batch, and the live teacher's scoring of all proposals of that batch (forward under
    inference mode). With cached responses the incremental step runs the head on twice as many
    RoIs (64 training + 64 distillation per image), so its cost is about (T + 2 H) / (T + H) of a
    plain step whatever the implementation (``cached_floor_ratio``; less the distillation RoIs
    that coincide with training RoIs, which ``model.reuse_rois`` computes once)."""
    net = setups["plain"][0].net
    b = setups["plain"][2][0]
    batch, scales, _ = net.transform([im.to(device) for im in b["image"]])
    rois = net.batch_rois([p[: args.rois] for p in b["proposals"]], scales, device)
    rois = torch.cat([rois] * max(1, (2 * args.rois) // max(1, rois.shape[0])))[: 2 * args.rois]

    def trunk():
        net.features(batch).float().sum().backward()

    feats = net.features(batch).detach().requires_grad_()

    def head():
        lg, dl = net.head(feats, rois)
        (lg.float().sum() + dl.float().sum()).backward()

    L_live = setups["live"][0]
    b_images = [im.to(device) for im in b["image"]]
    b_props = [p.to(device) for p in b["proposals"]]

    def teacher():
        with torch.inference_mode(), L_live._teacher_autocast():
            L_live.teacher.score_proposals(b_images, b_props)

    parts = {}
    for name, fn in (("trunk", trunk), ("head", head), ("teacher", teacher)):
        ts = []
        for _ in range(args.warmup + args.iters):
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
        parts[name] = statistics.median(ts[args.warmup:])
    net.zero_grad(set_to_none=True)
    floor = (parts["trunk"] + 2 * parts["head"]) / (parts["trunk"] + parts["head"])
    return {"trunk_s": parts["trunk"], "head_s": parts["head"], "teacher_s": parts["teacher"],
            "cached_floor_ratio": floor}


def report(args, device, results: dict) -> None:
    """Add each kind's ratio to plain into ``results`` and print the table."""
    rows = []
    kinds = [k for k in KINDS + OLD_KINDS if k in results]
    for kind in kinds:
        r = results[kind]
        r["ratio"] = r["median_s"] / results["plain"]["median_s"]
        rows.append((kind, r["median_s"] * 1000, r["ratio"], r["mean_reused_rois"]))
    parts = results["parts"]
    cpu = device.type == "cpu"
    target = {"plain": "", "live": "-" if cpu else "<= 1.5", "cached": "<= 1.5" if cpu else "<= 1.1"}
    print(f"incdet step cost: ResNet-{args.depth} width {args.width}, {args.size}px, res5 stride {args.res5_stride}, "
          f"RoI {args.roi_size}x{args.roi_size}, {args.rois} RoIs/img, {results['plain']['mean_proposals']:.0f} proposals/img, "
          f"batch 2, device {device}, threads {torch.get_num_threads()}")
    print(f"{'step':<16}{'median ms':>12}{'x plain':>10}{'target':>10}{'reused RoIs':>13}")
    for kind, ms, ratio, reused in rows:
        print(f"{kind:<16}{ms:>12.1f}{ratio:>10.2f}{target.get(kind, ''):>10}{reused:>13.1f}")
    print(f"trunk fwd+bwd {parts['trunk_s'] * 1000:.1f} ms, head fwd+bwd on {2 * args.rois} RoIs "
          f"{parts['head_s'] * 1000:.1f} ms -> a cached-teacher step cannot cost less than about "
          f"{parts['cached_floor_ratio']:.2f}x a plain one (less the reused RoIs); live teacher's scoring "
          f"of {2 * results['plain']['mean_proposals']:.0f} proposals {parts['teacher_s'] * 1000:.1f} ms")
    la = results.get("loadavg") or {}
    if la.get("before") and la.get("after"):
        print(f"load average (1 min) before {la['before'][0]:.2f}, after {la['after'][0]:.2f} on {os.cpu_count()} CPUs")


def write_json(args, results: dict) -> None:
    cpu = results.get("device") == "cpu"
    targets = {"cached": 1.5} if cpu else {"live": 1.5, "cached": 1.1}
    out = {"args": vars(args), "results": results, "torch": torch.__version__, "machine": platform.platform(),
           "processor": platform.processor(), "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "targets": targets, "met": {k: results[k]["ratio"] <= v for k, v in targets.items()}}
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
    except IncdetError as e:
        print(f"bench_incdet: error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0, t1 = make_tasks(args)
    setups, results = build_setups(args, device, t0, t1)
    before = _loadavg()
    time_steps(args, device, setups, results)
    results["parts"] = time_parts(args, device, setups)
    results["loadavg"] = {"before": before, "after": _loadavg()}
    results["device"] = device.type
    report(args, device, results)
    write_json(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
