"""``incdet demo``: class-incremental detection on shapes-voc, end to end, on a CPU.

    incdet demo [--data ./data/shapes-voc] [--out runs/demo] [--quick]

What it does (thesis table 3.3, first rows, on the synthetic shapes-voc data):
    1. builds shapes-voc in ``--data`` on first use (re-used afterwards; no download) and
       computes selective-search proposals once (cached next to the data);
    2. trains A(1-15) on the first 15 classes, starting from the zoo's pretrained trunk
       (``--backbone``, default ``zoo:resnet18w16_shapes-pretrain``; ``none``: random init)
       (run ``OUT/A``, ``tasks.stop_after: 1``; A's checkpoint ``OUT/A/checkpoints/task0.pt``);
    3. adds classes 16-20 to A *with distillation* (run ``OUT/distill``) and *without* (naive
       fine-tuning, run ``OUT/naive``), both started from A's checkpoint (``tasks.init_from``);
       with 2 or more CPUs the naive run trains in a second process beside the distillation run
       (each at ``--threads`` threads);
    4. prints the old (1-15) / new (16-20) / all mAP table and writes it to ``OUT/table.md``
       and ``OUT/table.json`` (with the wall time of each stage).

The schedule is sized to finish in about 15 minutes on a 2-core CPU (``--quick``: a small data
set and a few iterations, for smoke tests; its numbers mean nothing). Everything runs through
the shared driver (:func:`incdet.engine.trainer.run_training`), so each run directory also
holds the usual ``config.yaml``, ``metrics.jsonl``, ``results.*`` and checkpoints.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional

from incdet.errors import ConfigError

log = logging.getLogger(__name__)

#: The demo's run config (the settings of configs/incdet/shapes_15+5.yaml, except A's schedule:
#: 2000 iterations, not the config's 6000, so that the demo stays under 15 minutes on 2 CPU cores;
#: one thread ran 4.5 iterations/s on the 2-core machine of 2026-12-07, i.e. ~22 min for 6000;
#: ``root``, ``proposal_cache`` and ``out`` are filled in by :func:`run_demo`).
BASE_CONFIG: dict = {
    "experiment": {"name": "demo", "seed": 0, "device": "auto"},
    "tasks": {
        "builder": "classes", "data": "shapes", "root": "", "train_split": "train", "eval_split": "test",
        "split": "15+5", "use_difficult": True, "keep_masks": False,
    },
    "learner": {
        "name": "incdet.fastrcnn",
        "model": {
            "depth": 18, "width": 16, "norm": "bn", "res5_stride": 2, "roi_op": "pool", "roi_size": 7,
            "min_size": 320, "max_size": 320, "rois_per_image": 64, "fg_fraction": 0.5,
            "bg_iou_lo": 0.0, "add_gt_as_proposals": True, "gt_jitter": 8, "score_thresh": 0.05, "nms_iou": 0.3,
            "detections_per_img": 100,
        },
        "proposals": "selective_search", "max_proposals": 2000, "proposal_nms": 0.7,
        "proposal_max_side": 500, "flip_prob": 0.5,
        "distill": "l2", "distill_weight": 1.0, "distill_box": True, "distill_norm": "released_code", "distill_sampling": "biased",
        "distill_rois": 64, "distill_pool": 128, "teacher_cache": True, "freeze": "none", "ewc_weight": 0.0,
    },
    "train": {
        "iterations": 500, "batch_size": 2, "num_workers": 0, "optimizer": "adam", "lr": 0.0002,
        "weight_decay": 0.0001, "lr_steps": [400], "lr_gamma": 0.1, "warmup_iters": 50, "grad_clip": 10.0,
        "amp": "none", "checkpoint_every": 0, "log_every": 50,
        "first_task": {"iterations": 2000, "lr": 0.002, "lr_steps": [1600], "warmup_iters": 100},
    },
    "eval": {"every_task": True},
}

#: ``--quick``: a small data set and a few iterations (a smoke test of the whole path).
QUICK_SHAPES = {"n_train": 60, "n_val": 4, "n_test": 40}  # every class in the test split
QUICK_TRAIN = {"iterations": 10, "lr_steps": [], "warmup_iters": 2, "log_every": 5,
               "first_task": {"iterations": 20, "lr": 0.002, "lr_steps": [], "warmup_iters": 2}}


#: the trunk the demo starts from (``--backbone``): the zoo's shapes-pretrain ResNet-18 (width 16)
DEMO_BACKBONE = "zoo:resnet18w16_shapes-pretrain"


def demo_config(data: Path, run_dir: Path, quick: bool, device: str = "auto",
                iters_a: Optional[int] = None, iters_b: Optional[int] = None,
                backbone: Optional[str] = DEMO_BACKBONE) -> dict:
    """The distillation run's config as a plain dict (the naive run differs in ``learner.distill``
    and ``tasks.init_from``). ``backbone``: initial trunk weights (a path or ``zoo:NAME``; None or
    ``"none"``: random initialisation), fine-tuned in every layer."""
    cfg = copy.deepcopy(BASE_CONFIG)
    if backbone and backbone != "none":
        cfg["learner"]["model"].update({"weights": backbone, "freeze_at": 0})
    cfg["experiment"]["out"] = str(run_dir)
    cfg["experiment"]["device"] = device
    cfg["tasks"]["root"] = str(data)
    cfg["learner"]["proposal_cache"] = str(data / "proposals_selective_search.npz")
    if quick:
        cfg["tasks"]["shapes"] = dict(QUICK_SHAPES)
        cfg["train"].update(copy.deepcopy(QUICK_TRAIN))
        cfg["learner"]["proposal_max_side"] = 160
    if iters_a is not None:
        cfg["train"]["first_task"]["iterations"] = int(iters_a)
        cfg["train"]["first_task"]["lr_steps"] = [int(0.8 * iters_a)] if iters_a >= 10 else []
    if iters_b is not None:
        cfg["train"]["iterations"] = int(iters_b)
        cfg["train"]["lr_steps"] = [int(0.8 * iters_b)] if iters_b >= 10 else []
    return cfg


def _train_child(cfg: dict, run_dir: str, threads: Optional[int]) -> None:
    """A run of the demo in a second process (spawned: nothing of the parent's state is shared)."""
    import torch

    from incdet.engine.config import config_from_dict
    from incdet.engine.trainer import run_training

    if threads:
        torch.set_num_threads(int(threads))
    run_training(config_from_dict(cfg, source="incdet demo (naive)"), run_dir=run_dir, quiet=True)


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None or x != x else f"{x:.1f}"


def make_table(rows: List[dict]) -> str:
    """Markdown table of ``rows`` (dicts with ``method``, ``old``, ``new``, ``all``)."""
    lines = ["| method | old (1-15) | new (16-20) | all (1-20) |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {_fmt(r.get('old'))} | {_fmt(r.get('new'))} | {_fmt(r.get('all'))} |")
    return "\n".join(lines)


def run_demo(data: str = "data/shapes-voc", out: str = "runs/demo", quick: bool = False, device: str = "auto",
             threads: Optional[int] = 1, iters_a: Optional[int] = None, iters_b: Optional[int] = None,
             overwrite: bool = True, proposals: Optional[str] = None, max_proposals: Optional[int] = None,
             echo=print, backbone: Optional[str] = DEMO_BACKBONE) -> dict:
    """Run the demo; returns the ``table.json`` content (also written to ``out``).

    ``proposals``: another proposal method (``sliding_window``: instant, for tests) instead of
    selective search; ``max_proposals``: fewer proposals per image (faster, for tests)."""
    import torch

    from incdet.engine.config import config_from_dict
    from incdet.engine.trainer import run_training

    from incdet.engine.distributed import resolve_device

    t_start = time.perf_counter()
    dev = str(resolve_device(device))  # a bad --device is refused before anything is built
    if threads is not None and threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {threads}")
    if threads:
        torch.set_num_threads(int(threads))
    data_p = Path(data)
    if quick:
        data_p = data_p.with_name(data_p.name + "-quick")
    out_p = Path(out)
    if out_p.exists() and not out_p.is_dir():
        raise ConfigError(f"--out {out_p}: exists and is not a directory")
    cfg = demo_config(data_p, out_p, quick, device, iters_a, iters_b, backbone)
    if proposals:
        cfg["learner"]["proposals"] = proposals
        cfg["learner"]["proposal_cache"] = None
    if max_proposals:
        cfg["learner"]["max_proposals"] = int(max_proposals)
    acfg = copy.deepcopy(cfg)  # A(1-15) alone; both +B runs start from its checkpoint
    acfg["tasks"]["stop_after"] = 1
    a_ckpt = out_p / "A" / "checkpoints" / "task0.pt"
    dcfg = copy.deepcopy(cfg)
    dcfg["tasks"]["init_from"] = str(a_ckpt)
    ncfg = copy.deepcopy(dcfg)  # +B without distillation
    ncfg["learner"]["distill"] = "none"
    # the configs are validated (e.g. --iters-a -1) before anything is built or deleted
    a_run_cfg = config_from_dict(copy.deepcopy(acfg), source="incdet demo")
    run_cfg = config_from_dict(copy.deepcopy(dcfg), source="incdet demo (distillation)")
    naive_cfg = config_from_dict(copy.deepcopy(ncfg), source="incdet demo (naive)")
    if out_p.exists():
        if not overwrite:
            raise ConfigError(f"{out_p}: already exists (remove it or choose another --out)")
        for sub in ("A", "distill", "naive"):
            if (out_p / sub).exists():
                shutil.rmtree(out_p / sub)
    out_p.mkdir(parents=True, exist_ok=True)
    times: Dict[str, float] = {}

    # 1. data (built once, cached) and proposals (computed once, cached next to the data)
    t0 = time.perf_counter()
    from incdet.data.shapes import ensure_shapes

    echo(f"[demo] 1/4 shapes-voc in {data_p} (built on first use, ~15 s) ...")
    ensure_shapes(data_p, workers=max(1, min(2, os.cpu_count() or 1)), progress=True,
                  **cfg["tasks"].get("shapes", {}))
    times["data"] = time.perf_counter() - t0

    # 2. A(1-15)
    t0 = time.perf_counter()
    a_it = cfg["train"]["first_task"]["iterations"]
    b_it = cfg["train"]["iterations"]
    echo(f"[demo] 2/4 training A(1-15) ({a_it} iterations); selective-search proposals are computed first "
         f"if not cached -> {out_p / 'A'}")
    ra = run_training(a_run_cfg, run_dir=out_p / "A", quiet=False)
    times["A"] = time.perf_counter() - t0
    a = ra.all_metrics[0][0]
    echo(f"[demo]     A(1-15) mAP {_fmt(a['mAP'])} ({times['A']:.0f} s)")

    # 3. +B(16-20) with and without distillation from the same A (side by side with >= 2 CPUs)
    t0 = time.perf_counter()
    parallel = (os.cpu_count() or 1) >= 2
    echo(f"[demo] 3/4 +B(16-20) with distillation -> {out_p / 'distill'} and without (naive fine-tuning) -> "
         f"{out_p / 'naive'}, {b_it} iterations each, from the same A"
         + (" (the naive run in a second process)" if parallel else ""))
    child = None
    if parallel:
        import multiprocessing as mp

        child = mp.get_context("spawn").Process(target=_train_child, args=(ncfg, str(out_p / "naive"), threads),
                                                name="incdet-demo-naive")
        child.start()
    try:
        rd = run_training(run_cfg, run_dir=out_p / "distill", quiet=False)
    except BaseException:
        if child is not None:  # do not leave the naive run training alone
            child.terminate()
            child.join()
        raise
    if child is not None:
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"incdet demo: the naive run in {out_p / 'naive'} failed (exit code {child.exitcode}; "
                               "its error is printed above)")
        from incdet.engine.results import load_results

        rn = load_results(out_p / "naive" / "results.json")
    else:
        rn = run_training(naive_cfg, run_dir=out_p / "naive", quiet=False)
    times["B_distill_and_naive"] = time.perf_counter() - t0
    d = rd.all_metrics[1][1]
    n = rn.all_metrics[1][1]

    # 4. the table
    rows = [
        {"method": "A(1-15)", "old": a.get("mAP_all"), "new": None, "all": None},
        {"method": "+B(16-20) w/o distillation", "old": n.get("mAP_old"), "new": n.get("mAP_new"),
         "all": n.get("mAP_all")},
        {"method": "+B(16-20) w distillation", "old": d.get("mAP_old"), "new": d.get("mAP_new"),
         "all": d.get("mAP_all")},
    ]
    times["total"] = time.perf_counter() - t_start
    table = make_table(rows)
    note = (f"shapes-voc test split ({'quick smoke version, numbers meaningless' if quick else 'full'}), "
            f"VOC all-point AP in %, {dev}, torch threads {torch.get_num_threads()}; "
            f"A: {a_it} iterations, B: {b_it} iterations; wall time {times['total']:.0f} s")
    md = f"# incdet demo: shapes-voc 15+5\n\n{table}\n\n{note}\n\nCommand: `incdet demo{' --quick' if quick else ''}`\n"
    result = {"rows": rows, "seconds": {k: round(v, 1) for k, v in times.items()}, "quick": quick,
              "device": dev, "threads": torch.get_num_threads(), "iterations": {"A": a_it, "B": b_it},
              "runs": {"A": str(out_p / "A"), "distill": str(out_p / "distill"), "naive": str(out_p / "naive")},
              "parallel_b": parallel}
    (out_p / "table.md").write_text(md)
    (out_p / "table.json").write_text(json.dumps(result, indent=1))
    echo("[demo] 4/4 results (old = classes 1-15, new = 16-20, all = 1-20; mAP in %):")
    echo(table)
    echo(f"[demo] wall time {times['total']:.0f} s; table written to {out_p / 'table.md'} and table.json")
    return result


def main_demo(args: argparse.Namespace) -> int:
    run_demo(data=args.data, out=args.out, quick=args.quick, device=args.device, threads=args.threads,
             iters_a=args.iters_a, iters_b=args.iters_b, backbone=args.backbone)
    return 0


def register(sub) -> None:
    """Add the ``demo`` subcommand to an ``argparse`` subparsers object."""
    p = sub.add_parser("demo", help="class-incremental detection on shapes-voc: A(1-15), +B(16-20) with and "
                                    "without distillation, old/new/all mAP table (~15 min on 2 CPU cores)")
    p.add_argument("--data", default="data/shapes-voc", help="where shapes-voc is built / found (default %(default)s; "
                   "--quick uses DIR-quick)")
    p.add_argument("--out", default="runs/demo", help="run directory (default %(default)s; its A/, distill/ and naive/ "
                   "runs are replaced)")
    p.add_argument("--quick", action="store_true", help="1-2 minute smoke version (tiny data, few iterations)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared 2-core machine 2 threads can be "
                        "many times slower; 0 leaves torch's default)")
    p.add_argument("--iters-a", type=int, default=None, help="iterations of A(1-15) (default: the demo's schedule)")
    p.add_argument("--iters-b", type=int, default=None, help="iterations of each +B(16-20) run")
    p.add_argument("--backbone", default=DEMO_BACKBONE,
                   help="initial trunk weights: a path, zoo:NAME (default %(default)s) or none (random init)")
    p.set_defaults(func=main_demo)


__all__ = ["register", "main_demo", "run_demo", "demo_config", "make_table", "BASE_CONFIG", "DEMO_BACKBONE"]
