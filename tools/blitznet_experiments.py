"""The BlitzNet experiments of thesis appendix C on shapes-voc (and an end-to-end VOC2012-100
run), and the tables of ``docs/results/blitznet.md``.

    python tools/blitznet_experiments.py run    [--out runs/blitznet_exp] [--only NAME ...] [--profile cpu]
    python tools/blitznet_experiments.py table  [--out runs/blitznet_exp] [--md docs/results/blitznet.md]
    python tools/blitznet_experiments.py all    (run, then table)
    python tools/blitznet_experiments.py list   [--profile cpu]
    python tools/blitznet_experiments.py figures [--out runs/blitznet_exp]   (PNG tiles of predictions)

``run`` trains every experiment of :data:`EXPERIMENTS` that has no finished ``results.json`` in
``OUT/NAME`` yet (an interrupted set is continued by running it again; a run with a
``checkpoint.pt`` is resumed), in :data:`RUN_ORDER`. Each run goes through the shared driver
exactly as ``blitznet train CONFIG --out OUT/NAME --quiet --set ...`` would; that command is
written to ``OUT/NAME/command.txt`` and the wall time, threads and CPU to ``OUT/NAME/wall.json``.
``table`` only reads finished run directories and writes the markdown:

- table C.3 analogue: detection only, segmentation only, joint (mAP and mIoU);
- table C.8 analogue: fusion block ResSkip / plain (no residual) / hourglass, joint training;
- class-incremental BlitzNet, shapes 15+5: A(1-15), +B(16-20) with and without distillation,
  joint A(1-20): old / new / all mAP (incdet's forgetting-table layout) and mIoU;
- VOC2012-100 end to end (BlitzNet300: ResNet-50, 512 channels, 300 px): mAP and mIoU.

Profiles (:data:`PROFILES`) hold the schedules as ``--set`` overrides: ``cpu`` is sized for two
CPU cores (two runs at a time) and ~3 h for the whole set; ``paper`` keeps the configs' own schedules (GPU); ``gpu``
is 2/3 of them, for ~10 runs sharing one GPU (``tools/gpu_experiments.sh``);
``quick`` is a few iterations on a few images (a smoke test of the plumbing).
mAP / mIoU are percentages, as the learner reports them (runs this tool recorded before the
learner did, with fractions, are converted when read: see :func:`load_run`).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import QueuedRun, cpu_name, run_finished, run_queue, save_markdown  # noqa: E402  (shared by the tools)
from _common import fmt_pct, keep_records as _keep_records, mean_std  # noqa: E402

JOINT_CFG = "configs/blitznet/shapes_joint.yaml"
INC_CFG = "configs/blitznet/shapes_15+5.yaml"
VOC_CFG = "configs/blitznet/voc100.yaml"


@dataclass
class Experiment:
    name: str              #: run directory under OUT
    config: str            #: path relative to the repo root
    kind: str              #: schedule family in a profile: "shapes", "inc" or "voc"
    sets: List[str] = field(default_factory=list)
    init_from: Optional[str] = None  #: another experiment whose checkpoints/task0.pt is task 0
    label: str = ""


#: the C.3 rows' own overrides (seed 0 runs are named ``joint``, ``det_only``, ``seg_only``)
BASE_SETS: Dict[str, List[str]] = {"joint": [], "det_only": ["learner.model.segmentation=false"],
                                   "seg_only": ["learner.model.detection=false", "eval.metric=mIoU"]}
BASE_LABELS = {"joint": "detection + segmentation", "det_only": "detection only", "seg_only": "segmentation only"}
SEEDS = (0, 1, 2)

EXPERIMENTS: List[Experiment] = [
    Experiment("joint", JOINT_CFG, "shapes", [], label="joint (detection + segmentation), ResSkip"),
    Experiment("det_only", JOINT_CFG, "shapes", BASE_SETS["det_only"], label="detection only"),
    Experiment("seg_only", JOINT_CFG, "shapes", BASE_SETS["seg_only"], label="segmentation only"),
    Experiment("fusion_plain", JOINT_CFG, "shapes", ["learner.model.fusion=plain"],
               label="plain (ResSkip without the residual)"),
    Experiment("fusion_hourglass", JOINT_CFG, "shapes", ["learner.model.fusion=hourglass"], label="hourglass"),
    Experiment("inc15+5_distill", INC_CFG, "inc", [], label="+B(16-20) with distillation"),
    Experiment("inc15+5_naive", INC_CFG, "inc", ["learner.distill=none"], init_from="inc15+5_distill",
               label="+B(16-20) without distillation (naive fine-tuning)"),
    # probe (not in the paper): distillation terms x10, same A
    Experiment("inc15+5_distill_w10", INC_CFG, "inc", ["learner.distill_weight=10", "learner.distill_seg_weight=10"],
               init_from="inc15+5_distill", label="+B(16-20) with distillation, weights x10 (probe)"),
    # seeds 1 and 2 of the C.3 rows (the spread of the C.3 / C.8 numbers)
    *[Experiment(f"{base}_seed{k}", JOINT_CFG, "shapes", [f"experiment.seed={k}"] + BASE_SETS[base],
                 label=f"{BASE_LABELS[base]}, seed {k}")
      for k in (1, 2) for base in ("joint", "det_only", "seg_only")],
    # C.8 with ResSkip's residual branch as it was before issue 15 (a 1x1 conv + BN projection)
    Experiment("fusion_resskip_proj", JOINT_CFG, "shapes", ["learner.model.resskip_projection=always"],
               label="ResSkip with a 1x1 conv + BN projection of the upsampled input"),
    Experiment("voc100", VOC_CFG, "voc", [], label="BlitzNet300-s4, VOC2012-100"),
    # the C.3 rows trained 2.5x longer (5000 iterations, x0.1 at 3500 and 4500): mIoU was still rising
    *[Experiment(f"{base}_5k_seed{k}", JOINT_CFG, "shapes",
                 [f"experiment.seed={k}", "train.iterations=5000", "train.lr_steps=[3500,4500]"] + BASE_SETS[base],
                 label=f"{BASE_LABELS[base]}, 5000 iterations, seed {k}")
      for k in (0, 1, 2) for base in ("joint", "det_only")],
    # probe (not in the paper): the segmentation loss x3 (mIoU was still rising at 5000 iterations)
    *[Experiment(f"joint_5k_segw{w}_seed{k}", JOINT_CFG, "shapes",
                 [f"experiment.seed={k}", "train.iterations=5000", "train.lr_steps=[3500,4500]", f"learner.seg_weight={w}"],
                 label=f"detection + segmentation, segmentation loss x{w}, 5000 iterations, seed {k} (probe)")
      for w, k in ((3, 1), (3, 2), (3, 0), (10, 1))],
]
BY_NAME: Dict[str, Experiment] = {e.name: e for e in EXPERIMENTS}
#: the C.3 rows and the incremental runs first, then the other seeds, the C.8 ablations, the probe, VOC,
#: the C.3 rows at 5000 iterations
RUN_ORDER: List[str] = ["joint", "det_only", "seg_only", "inc15+5_distill", "inc15+5_naive",
                        "joint_seed1", "det_only_seed1", "seg_only_seed1",
                        "joint_seed2", "det_only_seed2", "seg_only_seed2",
                        "fusion_plain", "fusion_hourglass", "fusion_resskip_proj", "inc15+5_distill_w10", "voc100",
                        "joint_5k_seed1", "det_only_5k_seed1", "joint_5k_seed2", "det_only_5k_seed2",
                        "joint_5k_seed0", "det_only_5k_seed0", "joint_5k_segw3_seed1", "joint_5k_segw3_seed2",
                        "joint_5k_segw3_seed0", "joint_5k_segw10_seed1"]


#: ``--schedule`` of ``c3`` and ``figures``: "" the profile's rows, "5k" the rows trained 5000
#: iterations, "5k_segw3" the joint row of the segmentation-loss-x3 probe with the 5k
#: detection-only rows (without segmentation the loss weight changes nothing)
SCHEDULES = ("", "5k", "5k_segw3")


def seed_run(base: str, seed: int, schedule: str = "") -> str:
    """The run name of a C.3 row (``joint``, ``det_only``, ``seg_only``) at ``seed``; ``schedule``
    ``"5k"``: the row trained 5000 iterations (``joint_5k_seed1``, ...); ``"5k_segw3"``: the joint
    row with the segmentation loss x3 (``joint_5k_segw3_seed1``), the other rows as ``"5k"``."""
    if schedule == "5k_segw3" and base != "joint":
        schedule = "5k"
    base = f"{base}_{schedule}" if schedule else base
    return base if seed == 0 and not schedule else f"{base}_seed{seed}"

_NW = ["train.num_workers=0"]  # one core: data loading in the training process
PROFILES: Dict[str, Dict[str, List[str]]] = {
    # measured on this machine (one thread, the other core busy with another job): ~0.6 s per
    # joint shapes iteration at batch 8 (160 px, the zoo's width-16 ResNet-18, 64 ch), ~0.45 s
    # segmentation only; ~6.5 s per VOC iteration at batch 4 (300 px, ResNet-50, 512 ch)
    "cpu": {
        "shapes": ["train.iterations=2000", "train.lr_steps=[1400,1800]", "train.warmup_iters=100",
                   "train.checkpoint_every=500", "train.log_every=100"] + _NW,
        "inc": ["train.first_task.iterations=2000", "train.first_task.lr_steps=[1400,1800]",
                "train.first_task.warmup_iters=100", "train.iterations=1000", "train.lr_steps=[800]",
                "train.checkpoint_every=500", "train.log_every=100"] + _NW,
        "voc": ["train.iterations=60", "train.batch_size=4", "train.lr=1e-3", "train.lr_steps=[48]",
                "train.warmup_iters=6", "train.checkpoint_every=30", "train.log_every=6"] + _NW,
    },
    "paper": {"shapes": [], "inc": [], "voc": []},
    # one GPU shared by ~10 runs at once (tools/gpu_experiments.sh): 2/3 of the configs' schedules
    "gpu": {
        "shapes": ["train.iterations=2000", "train.lr_steps=[1400,1800]", "train.checkpoint_every=1000",
                   "train.num_workers=2"],
        "inc": ["train.first_task.iterations=2000", "train.first_task.lr_steps=[1400,1800]",
                "train.iterations=1000", "train.lr_steps=[800]", "train.checkpoint_every=1000",
                "train.num_workers=2"],
        "voc": ["train.num_workers=2"],
    },
    "quick": {
        k: ["train.iterations=2", "train.batch_size=2", "train.lr_steps=[]", "train.warmup_iters=0",
            "train.checkpoint_every=0", "train.log_every=1", "tasks.max_train_images=8",
            "tasks.max_eval_images=4"] + (["train.first_task={}"] if k == "inc" else []) + _NW
        for k in ("shapes", "inc", "voc")
    },
}


_finished = run_finished


def overrides_of(e: Experiment, out: Path, profile: str) -> List[str]:
    sets = list(PROFILES[profile][e.kind]) + list(e.sets)
    if e.init_from:
        sets.append(f"tasks.init_from={out / e.init_from / 'checkpoints' / 'task0.pt'}")
    return sets


def command_of(e: Experiment, out: Path, profile: str) -> List[str]:
    cmd = ["blitznet", "train", e.config, "--out", str(out / e.name), "--quiet"]
    for s in overrides_of(e, out, profile):
        cmd += ["--set", s]
    return cmd


def run(names: Sequence[str], out: Path, profile: str, threads: int, device: str) -> int:
    """Train the experiments ``names`` (all: empty) in :data:`RUN_ORDER` (:func:`_common.run_queue`)."""
    from incdet.engine.trainer import run_training

    os.chdir(ROOT)  # configs name their data relative to the repo root
    runs = [QueuedRun(e.name, ROOT / e.config, overrides_of(e, out, profile), command_of(e, out, profile),
                      out / e.init_from / "checkpoints" / "task0.pt" if e.init_from else None)
            for e in [BY_NAME[n] for n in (names or RUN_ORDER)]]
    return run_queue(runs, out, run_training, tag="blitznet-exp", threads=threads, device=device,
                     extra_wall={"profile": profile, "metric_unit": "%"})


# ---------------------------------------------------------------------------------- tables
def _num(x) -> float:
    return float("nan") if x is None else float(x)


def _mean(xs) -> float:
    """Mean of the values that are there (None / NaN absent; NaN when none): ``_common.mean_std``."""
    return mean_std(xs)[0]


_f = fmt_pct  # one decimal, '-' when missing (tools/_common.py)


_PCT_KEYS = ("mAP", "mAP_seen", "mIoU", "mIoU_seen")


def _fractions_to_percent(d: dict) -> None:
    """Runs recorded by this tool before the learner reported percentages (a ``wall.json``
    without ``metric_unit``) hold fractions: scale their metrics to % in place. A run with any
    such value above 1 is in % already (e.g. started by hand, its ``wall.json`` written without
    the key) and is left as it is."""
    keyed = [(m, k) for row in d.get("all_metrics") or [] for m in row for k in list(m or {})
             if (k in _PCT_KEYS or k.startswith("AP/")) and m[k] is not None]
    if any(float(m[k]) > 1.0 for m, k in keyed):
        return
    for m, k in keyed:
        m[k] = 100.0 * float(m[k])


def class_aps(metrics: dict) -> Dict[str, float]:
    """``{class: AP}`` from an ``evaluate`` dict (``AP/<class>`` entries; null = NaN)."""
    return {k[3:]: _num(v) for k, v in (metrics or {}).items() if k.startswith("AP/")}


#: kept copies of finished runs' small files (:data:`_common.RECORD_FILES`), committed so that
#: the page can be written again on a machine without the runs; ``table`` refreshes them and
#: reads a run from there when ``OUT/NAME`` has no finished result (None: only ``OUT``)
RECORDS = ROOT / "docs" / "results" / "records" / "blitznet"
_records: Optional[Path] = None


def keep_records(out: Path, dest: Path) -> List[str]:
    """:func:`_common.keep_records` for every experiment of this tool."""
    return _keep_records(out, dest, [e.name for e in EXPERIMENTS])


def load_run(run: Path) -> Optional[dict]:
    """``results.json`` of a finished run with ``_wall`` (wall.json) and ``_command`` added, or None
    (read from the kept records when ``run`` is not finished and ``_records`` is set).
    Metrics are in % (older runs of this tool, whose ``wall.json`` has no ``metric_unit``, are scaled)."""
    if not _finished(run) and _records is not None and _finished(_records / run.name):
        run = _records / run.name
    if not _finished(run):
        return None
    d = json.loads((run / "results.json").read_text())
    w = run / "wall.json"
    d["_wall"] = json.loads(w.read_text()) if w.is_file() else {}
    if w.is_file() and d["_wall"].get("metric_unit") != "%":
        _fractions_to_percent(d)
    c = run / "command.txt"
    d["_command"] = c.read_text().strip() if c.is_file() else None
    return d


def _last(d: dict) -> dict:
    return d["all_metrics"][-1][-1] or {}


def _wall(d: Optional[dict]) -> str:
    s = (d or {}).get("_wall", {}).get("seconds")
    return "-" if s is None else f"{s / 60:.1f} min"


def _cmds(names: Sequence[str], out: Path, profile: str) -> str:
    lines = []
    for n in names:
        d = load_run(out / n)
        lines.append((d or {}).get("_command") or shlex.join(command_of(BY_NAME[n], out, profile)))
    return "```\n" + "\n".join(lines) + "\n```"


def _map_miou_table(first: str, rows, out: Path) -> str:
    """``| first | mAP | mIoU | wall time |`` after the last task of each run in ``rows``."""
    lines = [f"| {first} | mAP (%) | mIoU (%) | wall time |", "|---|---:|---:|---:|"]
    for n, label in rows:
        d = load_run(out / n)
        if d is None:
            lines.append(f"| {label} | not run | | |")
            continue
        m = _last(d)
        lines.append(f"| {label} | {_f(_num(m.get('mAP')))} | {_f(_num(m.get('mIoU')))} | {_wall(d)} |")
    return "\n".join(lines)


def _c3_runs(out: Path, schedule: str = "") -> Dict[str, List[Optional[dict]]]:
    """``{row: [load_run of each seed in SEEDS]}`` for the C.3 rows (None: not finished)."""
    return {base: [load_run(out / seed_run(base, k, schedule)) for k in SEEDS] for base in BASE_SETS}


def c3_seeds(out: Path, schedule: str = "", runs: Optional[Dict[str, List[Optional[dict]]]] = None
             ) -> Dict[str, Dict[str, List[float]]]:
    """``{row: {"mAP": [per seed], "mIoU": [per seed]}}`` of the C.3 rows' finished runs (seeds
    :data:`SEEDS`; a run not finished is left out); ``runs``: :func:`_c3_runs`, read if not given."""
    runs = _c3_runs(out, schedule) if runs is None else runs
    res: Dict[str, Dict[str, List[float]]] = {}
    for base, per in runs.items():
        ms = [_last(d) for d in per if d is not None]
        res[base] = {"mAP": [_num(m.get("mAP")) for m in ms], "mIoU": [_num(m.get("mIoU")) for m in ms]}
    return res


def _mean_std(xs: Sequence[float]) -> str:
    m, sd, n = mean_std(xs)
    if not n:
        return "-"
    return f"{m:.1f}" + ("" if sd != sd else f" ({sd:.1f})")


def c3_table(out: Path, schedule: str = "", runs: Optional[Dict[str, List[Optional[dict]]]] = None
             ) -> Optional[str]:
    """Table C.3 analogue: mAP and mIoU of detection only / segmentation only / joint, per seed
    (:data:`SEEDS`), with the mean and the sample standard deviation; ``runs``: :func:`_c3_runs`,
    read if not given."""
    runs = _c3_runs(out, schedule) if runs is None else runs
    if all(d is None for per in runs.values() for d in per):
        return None
    seeds = c3_seeds(out, schedule, runs)
    first = "seed 0" if not schedule else "first seed run"
    lines = [f"| trained for | mAP (%) per seed | mAP mean (std) | mIoU (%) per seed | mIoU mean (std) | wall time, {first} |",
             "|---|---:|---:|---:|---:|---:|"]
    for base in ("det_only", "seg_only", "joint"):
        per = runs[base]
        if all(d is None for d in per):
            lines.append(f"| {BASE_LABELS[base]} | not run | | | | |")
            continue
        cells = {k: " / ".join(_f(_num(_last(d).get(k))) if d else "not run" for d in per) for k in ("mAP", "mIoU")}
        lines.append(f"| {BASE_LABELS[base]} | {cells['mAP']} | {_mean_std(seeds[base]['mAP'])} | "
                     f"{cells['mIoU']} | {_mean_std(seeds[base]['mIoU'])} | {_wall(next(d for d in per if d))} |")
    return "\n".join(lines)


def c3_targets(out: Path, schedule: str = "", runs: Optional[Dict[str, List[Optional[dict]]]] = None
               ) -> List[str]:
    """Issue 13's BlitzNet targets, computed from the C.3 runs: joint mIoU >= 60 %, and joint
    training at least as good as detection alone on detection mAP (means over the seeds);
    ``runs``: :func:`_c3_runs`, read if not given."""
    seeds = c3_seeds(out, schedule, runs)
    lines = []
    miou = [x for x in seeds["joint"]["mIoU"] if x == x]
    if miou:
        m = _mean(miou)
        lines.append(f"- mIoU of joint training: {m:.1f} % (mean of {len(miou)} seed(s)); target >= 60: "
                     f"**{'met' if m >= 60 else 'not met'}**.")
    j = [x for x in seeds["joint"]["mAP"] if x == x]
    d = [x for x in seeds["det_only"]["mAP"] if x == x]
    if j and d:
        diff = _mean(j) - _mean(d)
        spread = max([v for v in (mean_std(j)[1], mean_std(d)[1]) if v == v], default=float("nan"))
        sp = "" if spread != spread else f"; the larger seed std is {spread:.1f}"
        lines.append(f"- Detection mAP, joint minus detection only: {diff:+.1f} points (means of {len(j)} and "
                     f"{len(d)} seed(s){sp}; the thesis, C.3: +0.6); target >= 0: "
                     f"**{'met' if diff >= 0 else 'not met'}**.")
    return lines


def c8_table(out: Path) -> Optional[str]:
    """Table C.8 analogue: fusion block of the upscale stream, joint training."""
    rows = [("joint", "ResSkip (bilinear up, concat skip, 1x1-3x3-1x1, + the upsampled input; C.3.3)"),
            ("fusion_plain", "plain (the same block without the residual)"),
            ("fusion_hourglass", "hourglass (a residual block on the skip map added to the upsampled stream)"),
            ("fusion_resskip_proj", BY_NAME["fusion_resskip_proj"].label + " (before issue 15)")]
    if all(load_run(out / n) is None for n, _ in rows):
        return None
    return _map_miou_table("fusion block", rows, out)


def inc_table(out: Path) -> Optional[str]:
    """Old / new / all mAP (and mIoU) after the last task of each 15+5 run.

    old = task 0's classes (1-15), new = task 1's (16-20), all = both: means of per-class AP.
    mIoU old = background + old classes (task 0's eval), new = background + new classes,
    all = background + all 20 (``mIoU_seen`` of the last evaluation). The A row is task 0's
    diagonal of the distillation run (the naive run starts from the same checkpoint).
    The joint row is the ``joint`` run (all 20 classes at once) split the same way (its mIoU
    is over all classes only).
    """
    base = load_run(out / "inc15+5_distill")
    if base is None:
        return None
    a_m = base["all_metrics"][0][0] or {}
    old = list(class_aps(a_m))
    lines = ["| method | mAP old (1-15) | mAP new (16-20) | mAP all | mIoU old | mIoU new | mIoU all | wall time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| A(1-15) | {_f(_num(a_m.get('mAP')))} | - | - | {_f(_num(a_m.get('mIoU')))} | - | - | "
             f"(in the next row) |"]
    new: List[str] = []
    for n in ("inc15+5_distill", "inc15+5_naive", "inc15+5_distill_w10"):
        d = load_run(out / n)
        if d is None and n == "inc15+5_distill_w10":
            continue
        if d is None:
            lines.append(f"| {BY_NAME[n].label} | not run | | | | | | |")
            continue
        r = d["all_metrics"][-1]
        aps = class_aps(r[-1])
        new = [c for c in aps if c not in old]
        lines.append(f"| {BY_NAME[n].label} | {_f(_mean([aps.get(c) for c in old]))} | "
                     f"{_f(_mean([aps.get(c) for c in new]))} | {_f(_mean(list(aps.values())))} | "
                     f"{_f(_num((r[0] or {}).get('mIoU')))} | {_f(_num(r[-1].get('mIoU')))} | "
                     f"{_f(_num(r[-1].get('mIoU_seen')))} | {_wall(d)} |")
    j = load_run(out / "joint")
    if j is not None:
        aps = class_aps(_last(j))
        new = new or [c for c in aps if c not in old]
        lines.append(f"| joint training A(1-20) | {_f(_mean([aps.get(c) for c in old]))} | "
                     f"{_f(_mean([aps.get(c) for c in new]))} | {_f(_mean([aps.get(c) for c in old + new]))} | "
                     f"- | - | {_f(_num(_last(j).get('mIoU')))} | {_wall(j)} |")
    return "\n".join(lines)


def voc_table(out: Path) -> Optional[str]:
    d = load_run(out / "voc100")
    if d is None:
        return None
    m = _last(d)
    aps = class_aps(m)
    n_ap = sum(1 for v in aps.values() if v == v)
    return "\n".join(["| model | mAP (%) | mIoU (%) | classes with an AP | wall time |", "|---|---:|---:|---:|---:|",
                      f"| BlitzNet300-s4 (ResNet-50, 512 ch), random init | {_f(_num(m.get('mAP')))} | "
                      f"{_f(_num(m.get('mIoU')))} | {n_ap} / {len(aps)} | {_wall(d)} |"])


def _hardware(out: Path, names: Optional[Sequence[str]] = None) -> str:
    """CPU, threads, torch and the summed wall time of the finished runs ``names`` (all: None)."""
    names = [e.name for e in EXPERIMENTS] if names is None else names
    walls = [w for w in ((load_run(out / n) or {}).get("_wall") for n in names) if w]
    if not walls:
        return "Hardware: no finished runs yet."
    secs = sum(w.get("seconds", 0) for w in walls)
    thr = sorted({w.get("threads") for w in walls if w.get("threads") is not None})
    dev = sorted({w.get("device", "?") for w in walls})
    gpu = next((w.get("gpu") for w in walls if w.get("gpu")), None)
    how = (f"GPU {gpu}, about ten training processes sharing it at once (tools/gpu_experiments.sh)" if gpu else
           "one or two training processes at a time on a 2-core machine shared with other jobs")
    return (f"Hardware: {walls[0].get('cpu', cpu_name())}, device {'/'.join(dev)}, "
            f"{'/'.join(map(str, thr))} torch thread(s) (OMP_NUM_THREADS=1), {how}; "
            f"torch {walls[0].get('torch', '?')}. "
            f"Total wall time of the {len(walls)} finished runs: {secs / 60:.0f} min.")


def write_markdown(out: Path, md: Path, profile: str = "cpu", notes: str = "", notes_path: str = "") -> str:
    """Write ``md`` from the finished runs under ``out``; returns the text."""
    hw = _hardware(out)
    parts = ["# BlitzNet on shapes-voc and VOC2012-100 (thesis appendix C)", "",
             f"Produced by `python tools/blitznet_experiments.py run --out {out} --profile {profile}` "
             "(trains every run below, one after another; resumable) and "
             f"`python tools/blitznet_experiments.py table --out {out}"
             f"{' --notes ' + notes_path if notes_path else ''}` (writes this file from the run "
             "directories). Each run is exactly the `blitznet train` command shown above its table.", "",
             hw, "",
             "mAP: mean of per-class VOC all-point AP, mIoU: mean IoU over background and the classes "
             "(both in %), on the full shapes-voc test split (250 images, 160 px) unless said otherwise. "
             "The shapes models start from the zoo's pretrained trunk (`zoo:resnet18w16_shapes-pretrain`: "
             "ResNet-18 at width 16, pretrained by `incdet pretrain` on shapes and patterns that share no "
             "class with shapes-voc; docs/results/zoo.md) with 64 channels in both streams; the VOC run "
             "starts from random initialisation (no pretrained ResNet-50 exists here). The runs made "
             "from random initialisation before the zoo existed are in `blitznet_from_scratch.md`.", ""]
    if profile == "cpu":
        parts += ["**Schedules are CPU-sized** (the `cpu` profile of the tool: 2000 iterations at batch 8 = "
                  "20 epochs of the 800 shapes training images for a shapes model, B 1000; against ~10^5 in "
                  "the paper). Wall times vary with the load of the other job sharing the machine.", ""]
    elif profile == "gpu":
        parts += ["**Schedules are short** (the `gpu` profile of the tool: 2000 iterations at batch 8 = 20 "
                  "epochs of the 800 shapes training images for a shapes model, 2/5 of the joint config's 5000 and "
                  "far below the paper's ~10^5). One seed per row; the joint run is repeated with a second "
                  "seed to show the run-to-run spread. Wall times are of runs sharing one GPU.", ""]
    c3_runs = _c3_runs(out)
    sections = [
        ("## Detection, segmentation, or both (table C.3 analogue)", c3_table(out, runs=c3_runs),
         [seed_run(b, k) for k in SEEDS for b in ("det_only", "seg_only", "joint")]),
        ("## Fusion block of the upscale stream (table C.8 analogue, joint training)", c8_table(out),
         ["joint", "fusion_plain", "fusion_hourglass", "fusion_resskip_proj"]),
        ("## Class-incremental BlitzNet, shapes 15+5 (thesis 7.1.1 on an SSD-style detector)", inc_table(out),
         ["inc15+5_distill", "inc15+5_naive", "inc15+5_distill_w10", "joint"]),
        ("## End to end on VOC2012-100 (detection + segmentation, short schedule)", voc_table(out), ["voc100"]),
    ]
    for title, table, names in sections:
        parts += [title, ""]
        if table is None:
            parts += ["Not run yet.", ""]
            continue
        parts += ["Commands:", "", _cmds(names, out, profile), "", _hardware(out, names), "", table, ""]
        if names[0] == "det_only":
            targets = c3_targets(out, runs=c3_runs)
            if targets:
                parts += ["Issue 13's BlitzNet targets, computed from these runs:", ""] + targets + [""]
        if names[0] == "inc15+5_distill":
            parts += ["old = classes 1-15 (task A), new = 16-20 (task B). The naive and the x10 runs start "
                      "from the distillation run's A checkpoint (`tasks.init_from`), so all +B rows share A "
                      "(the distillation run's wall time includes training A). mAP: per-class AP on the whole "
                      "test split after B, averaged over old / new / all classes. mIoU old: background + "
                      "classes 1-15 with new-class pixels counted as background (task A's evaluation after B); "
                      "mIoU new: background + classes 16-20; mIoU all: background + all 20.", ""]
        if names[0] == "voc100":
            parts += ["VOC2012-100 has 100 images and no separate test split: the model is trained and "
                      "evaluated on the same `trainval` images (a check that the real VOC path - XML, "
                      "masks with void, 20 classes, 300 px, ResNet-50 - runs end to end, not a benchmark).", ""]
    return save_markdown(md, parts, notes)


FIGURES = {  # run -> (picture under docs/results/blitznet/, images)
    "joint": ("joint_shapes_test.png", [f"data/shapes-voc/JPEGImages/test_{i:06d}.jpg" for i in range(6)]),
    "inc15+5_distill": ("inc15+5_distill_shapes_test.png",
                        [f"data/shapes-voc/JPEGImages/test_{i:06d}.jpg" for i in range(6)]),
    "inc15+5_naive": ("inc15+5_naive_shapes_test.png",
                      [f"data/shapes-voc/JPEGImages/test_{i:06d}.jpg" for i in range(6)]),
    "voc100": ("voc100_voc2012.png", [f"../shared/data/voc2012-100/VOCdevkit/VOC2012/JPEGImages/{n}.jpg"
                                      for n in ("2007_000549", "2007_000636", "2007_001284")]),
}


def figures(out: Path, fig_dir: Path, min_score: float = 0.3, schedule: str = "") -> List[Path]:
    """Boxes (score >= ``min_score``) and masks of finished runs on a few test images (PNG tiles,
    drawn by ``tools/showcase.py``); returns the pictures written. With a ``schedule`` (see
    :data:`SCHEDULES`) only the joint row's first seed of that schedule is drawn, to
    ``joint_<schedule>_shapes_test.png``."""
    sys.path.insert(0, str(ROOT / "tools"))
    from showcase import blitznet_tiles

    written = []
    figs = FIGURES
    if schedule:
        png, images = FIGURES["joint"]
        figs = {seed_run("joint", 0, schedule): (png.replace("joint_", f"joint_{schedule}_", 1), images)}
    for name, (png, images) in figs.items():
        ck = out / name / "checkpoint.pt"
        imgs = [str(ROOT / i) for i in images if (ROOT / i).is_file()]
        if load_run(out / name) is None or not ck.is_file() or not imgs:
            continue
        written.append(blitznet_tiles(str(ck), imgs, str(fig_dir / png), min_score=min_score))
        print(f"wrote {written[-1]}")
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="blitznet_experiments", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("run", "train the experiments that are not finished yet"),
                        ("all", "run, then write the markdown"),
                        ("table", "write docs/results/blitznet.md from finished run directories"),
                        ("list", "list the experiments and their commands"),
                        ("c3", "print the table C.3 analogue (seeds of joint / detection only / segmentation "
                               "only) and its targets for the runs under --out"),
                        ("figures", "prediction pictures of finished runs under docs/results/blitznet/")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--out", default="runs/blitznet_exp")
        s.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
        if name in ("c3", "figures"):
            s.add_argument("--schedule", default="", choices=list(SCHEDULES),
                           help="5k: the rows trained 5000 iterations (joint_5k_seed1, ...); 5k_segw3: the "
                                "joint row with the segmentation loss x3 (joint_5k_segw3_seed1, ...) against "
                                "the 5k detection-only rows")
        if name in ("run", "all"):
            s.add_argument("--only", nargs="*", default=[], choices=sorted(BY_NAME), metavar="NAME")
            s.add_argument("--threads", type=int, default=1)
            s.add_argument("--device", default="auto")
        if name in ("table", "all"):
            s.add_argument("--md", default=str(ROOT / "docs" / "results" / "blitznet.md"))
            s.add_argument("--notes", default=None, help="a markdown file appended after the tables")
            s.add_argument("--records", default=str(RECORDS),
                           help="folder of kept run records: refreshed from --out, read where --out lacks a run "
                                "('none': only --out)")
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.cmd == "list":
        for e in EXPERIMENTS:
            print(f"{e.name:18s} {shlex.join(command_of(e, out, a.profile))}")
        return 0
    if a.cmd == "c3":
        runs = _c3_runs(out, a.schedule)  # each run read once for the table and the targets
        t = c3_table(out, a.schedule, runs)
        print(t if t is not None else f"no C.3 runs under {out}")
        print("\n".join([""] + c3_targets(out, a.schedule, runs)))
        return 0
    if a.cmd == "figures":
        figures(out, ROOT / "docs" / "results" / "blitznet", schedule=a.schedule)
        return 0
    rc = 0
    if a.cmd in ("run", "all"):
        rc = run(a.only, out, a.profile, a.threads, a.device)
    if a.cmd in ("table", "all"):
        global _records
        if a.records != "none":
            kept = keep_records(out, Path(a.records))
            print(f"records of {len(kept)} finished run(s) kept in {a.records}", file=sys.stderr)
        _records = None if a.records == "none" else Path(a.records)
        try:
            notes = Path(a.notes).read_text() if a.notes else ""
            write_markdown(out, Path(a.md), a.profile, notes, a.notes or "")
        finally:
            _records = None
        print(f"wrote {a.md}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
