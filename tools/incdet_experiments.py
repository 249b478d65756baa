"""The incdet experiments of thesis chapter 3 on shapes-voc (and a VOC2012-100 smoke run), and
the tables of ``docs/results/incdet.md``.

    python tools/incdet_experiments.py run   [--out runs/incdet_exp] [--only NAME ...] [--thesis] [--threads 1]
    python tools/incdet_experiments.py table [--out runs/incdet_exp] [--md docs/results/incdet.md]
    python tools/incdet_experiments.py list

``run`` trains every experiment of :data:`EXPERIMENTS` that has no finished ``results.json`` in
``OUT/NAME`` yet (so an interrupted run is continued by running it again), in order: a variant
that re-uses an earlier run's A (``init_from``) comes after that run. Each run goes through the
shared driver exactly as ``incdet train CONFIG --set ...`` would (the command is printed and
written to ``OUT/NAME/command.txt``). ``table`` reads the finished runs and writes the markdown:

- one table per split (15+5, 10+10, 15+1x5) with the old / new / all mAP after the last task,
  for A, every variant and joint training (thesis tables 3.1-3.3);
- for 15+1x5, the per-step table (thesis table 3.9): mAP over the old classes, the new class of
  each step, and all classes seen so far, after every step;
- the wall time of each run and the machine it ran on, and which distillation normalisation
  (``learner.distill_norm``) each table's runs used;
- thesis tables 3.1 (19+1), 3.2 (10+10), 3.3 (15+5, 15+1x5) and 3.9 (per step) laid out as in
  the thesis, our VOC 2007 runs (:data:`THESIS_TABLES`, paper-setting configs, ``run --thesis``;
  they need a GPU, VOC 2007 and ImageNet ResNet-50 weights) beside the thesis' numbers; a missing
  run reads "not run yet".

"old" = the first task's classes, "new" = the classes added afterwards, "all" = all classes of the
split; all are means of per-class VOC all-point AP (%) on the full shapes-voc test split.
Joint training A(1-20)'s row is read from its per-class AP, split the same way.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import QueuedRun, cpu_name, run_finished, run_queue, save_markdown  # noqa: E402  (shared by the tools)
from _common import fmt_pct, keep_records as _keep_records, mean_std  # noqa: E402


@dataclass
class Experiment:
    name: str  # run directory under OUT (also the key in tables)
    config: str  # path relative to the repo root
    sets: List[str] = field(default_factory=list)
    init_from: Optional[str] = None  # another experiment whose checkpoints/task0.pt is the start
    split: str = ""  # the table it belongs to
    label: str = ""  # row label


#: seeds of the repeatability rows (``experiment.seed``); seed 0 is the config's own
SEEDS = (0, 1, 2)
#: the first task's schedule of the configs before it became 6000 iterations (the rows of
#: ``docs/results/incdet.md`` made with it carry these overrides)
#: beyond the thesis, for 15+1x5 (docs/results/incdet_6k.md): the unbiased background loss, and the
#: distillation pool scaled to shapes-voc's ~100 proposals per image (32 of ~100 ~ the thesis' 128 of 2,000)
UNBIASED_POOL32 = ["learner.bg_loss=unbiased", "learner.distill_pool=32", "learner.distill_rois=32"]
SHORT = ["train.first_task.iterations=2000", "train.first_task.lr_steps=[1600]"]


def _exps() -> List[Experiment]:
    E = Experiment
    c155, c1010, c15x, cj = ("configs/incdet/shapes_15+5.yaml", "configs/incdet/shapes_10+10.yaml",
                             "configs/incdet/shapes_15+1x5.yaml", "configs/incdet/shapes_joint.yaml")
    variants = [  # (suffix, label, --set overrides) of the incremental step
        ("naive", "w/o distillation (naive fine-tuning)", ["learner.distill=none"]),
        ("unbiased", "distillation, unbiased sampling", ["learner.distill_sampling=unbiased"]),
        ("nobox", "distillation w/o box distillation", ["learner.distill_box=false"]),
        ("ewc", "EWC (no distillation)", ["learner.distill=none", "learner.ewc_weight=1000"]),
    ]
    out = [E("joint", cj, split="joint", label="joint training A(1-20)")]
    for split, cfg in (("15+5", c155), ("10+10", c1010)):
        base = f"{split}_distill"
        out.append(E(base, cfg, split=split, label="distillation (biased sampling)"))
        for suf, label, sets in variants:
            out.append(E(f"{split}_{suf}", cfg, sets, init_from=base, split=split, label=label))
        if split == "15+5":  # two probes beyond the paper's settings (see the notes)
            out.append(E("15+5_lambda10", cfg, ["learner.distill_weight=10"], init_from=base, split=split,
                         label="distillation, lambda = 10"))
            out.append(E("15+5_bnfrozen", cfg, ["learner.bn_stats=frozen"], init_from=base, split=split,
                         label="distillation, BatchNorm statistics frozen"))
    out.append(E("10+10_ce", c1010, ["learner.distill=ce"], init_from="10+10_distill", split="10+10",
                 label="cross-entropy distillation"))
    # 19+1 (thesis table 3.1 analogue): every row of the table, one A(1-19)
    c191 = "configs/incdet/shapes_19+1.yaml"
    out.append(E("19+1_distill", c191, split="19+1", label="distillation (biased sampling)"))
    for suf, label, sets in [variants[0],
                             ("frozen_trunk", "frozen trunk (every conv layer fixed), w/o distillation",
                              ["learner.freeze=trunk", "learner.distill=none"]),
                             ("all_frozen", "all layers frozen but the new outputs",
                              ["learner.freeze=all_but_new", "learner.distill=none"]),
                             ("frozen_trunk_distill", "frozen trunk and distillation", ["learner.freeze=trunk"]),
                             ("ce", "cross-entropy distillation", ["learner.distill=ce"]),
                             variants[2]]:
        out.append(E(f"19+1_{suf}", c191, sets, init_from="19+1_distill", split="19+1", label=label))
    # schedule probes (issue 13, "schedules that converge"): joint training 3x longer, and at 2x the lr
    out.append(E("joint_6k", cj, ["train.first_task.iterations=6000", "train.first_task.lr_steps=[4800]"],
                 split="schedule", label="joint training, 6000 iterations (lr x0.1 at 4800)"))
    out.append(E("joint_lr4e-3", cj, ["train.first_task.lr=0.004"], split="schedule",
                 label="joint training, lr 0.004"))
    long = ["train.first_task.iterations=6000", "train.first_task.lr_steps=[4800]"]
    out.append(E("15+5_long_distill", c155, long, split="schedule_155",
                 label="A(1-15) 6000 iterations, +B distillation"))
    out.append(E("15+5_long_naive", c155, long + ["learner.distill=none"], init_from="15+5_long_distill",
                 split="schedule_155", label="A(1-15) 6000 iterations, +B naive"))
    # repeatability (issue 13): the key rows again under seeds 1 and 2 (seed 0 = the rows above)
    for k in SEEDS[1:]:
        seed = [f"experiment.seed={k}"]
        out.append(E(f"15+5_distill_s{k}", c155, seed, split="seeds", label=f"15+5 distillation, seed {k}"))
        out.append(E(f"15+5_naive_s{k}", c155, seed + ["learner.distill=none"], init_from=f"15+5_distill_s{k}",
                     split="seeds", label=f"15+5 naive, seed {k}"))
        out.append(E(f"joint_s{k}", cj, seed, split="seeds", label=f"joint training, seed {k}"))
        out.append(E(f"10+10_distill_s{k}", c1010, seed, split="seeds", label=f"10+10 distillation, seed {k}"))
        out.append(E(f"15+1x5_distill_s{k}", c15x, seed, init_from=f"15+5_distill_s{k}", split="seeds",
                     label=f"15+1x5 distillation, seed {k}"))
    # one class at a time re-uses the 15+5 run's A(1-15) (same classes, same data)
    out.append(E("15+1x5_distill", c15x, init_from="15+5_distill", split="15+1x5",
                 label="distillation (biased sampling)"))
    for suf, label, sets in variants[:2]:
        out.append(E(f"15+1x5_{suf}", c15x, sets, init_from="15+5_distill", split="15+1x5", label=label))
    out.append(E("15+1x5_lambda10", c15x, ["learner.distill_weight=10"], init_from="15+5_distill", split="15+1x5",
                 label="distillation, lambda = 10"))
    out.append(E("15+1x5_ce", c15x, ["learner.distill=ce"], init_from="15+5_distill", split="15+1x5",
                 label="cross-entropy distillation"))
    out.append(E("voc100_10+10", "configs/incdet/voc12-100_10+10.yaml", split="voc100",
                 label="distillation (VOC2012-100, smoke)"))
    # the rows above were run with the first task's former schedule (2000 iterations): their
    # commands say so, the configs' own schedule is now 6000 iterations (the rows below)
    shapes = {c155, c1010, c15x, cj, c191}
    for e in out:
        if e.config in shapes and e.init_from is None and not any("first_task.iterations" in s for s in e.sets):
            e.sets = SHORT + e.sets
    # the configs' schedule (A 6000 iterations, lr x0.1 at 4800): the key rows under three seeds
    for k in SEEDS:
        seed = [f"experiment.seed={k}"]
        out.append(E(f"6k_15+5_distill_s{k}", c155, seed, split="converged", label=f"15+5 distillation, seed {k}"))
        out.append(E(f"6k_15+5_naive_s{k}", c155, seed + ["learner.distill=none"], init_from=f"6k_15+5_distill_s{k}",
                     split="converged", label=f"15+5 naive, seed {k}"))
        out.append(E(f"6k_joint_s{k}", cj, seed, split="converged", label=f"joint training, seed {k}"))
        out.append(E(f"6k_15+1x5_distill_s{k}", c15x, seed, init_from=f"6k_15+5_distill_s{k}", split="converged",
                     label=f"15+1x5 distillation, seed {k}"))
        out.append(E(f"6k_10+10_distill_s{k}", c1010, seed, split="converged", label=f"10+10 distillation, seed {k}"))
    # 15+1x5 loses the old classes step after step (docs/results/incdet.md); probes on seed 0's A:
    # SGD as the thesis trains B, BatchNorm statistics frozen, and background RoIs only from IoU
    # [0.1, 0.5) (old objects in the new images, IoU 0 with the new boxes, then are not background)
    for suf, label, sets in (("sgd1e-2", "SGD lr 0.01 (Nesterov momentum 0.9)", ["train.optimizer=sgd", "train.lr=0.01"]),
                             ("bnfrozen", "BatchNorm statistics frozen", ["learner.bn_stats=frozen"]),
                             ("bglo01", "background RoIs from IoU [0.1, 0.5) (py-faster-rcnn) instead of [0, 0.5)",
                              ["learner.model.bg_iou_lo=0.1"]),
                             ("lambda10", "lambda = 10", ["learner.distill_weight=10"]),
                             # ~100 proposals per shapes-voc image: the 128-candidate pool is every
                             # proposal, so "biased" sampling is not biased; 32 of ~100 plays the role
                             # of the thesis' 128 of 2,000 (the proposals on objects)
                             ("pool32", "distillation on the 32 lowest-background proposals (pool 32, 32 RoIs)",
                              ["learner.distill_pool=32", "learner.distill_rois=32"]),
                             ("unbiasedbg", "unbiased background loss (not in the thesis: Cermelli et al. 2022)",
                              ["learner.bg_loss=unbiased"]),
                             ("unbiasedbg_pool32", "unbiased background loss and pool 32", UNBIASED_POOL32),
                             ("unbiasedbg_pool32_b600", "unbiased background loss and pool 32, 600 iterations per step",
                              UNBIASED_POOL32 + ["train.iterations=600", "train.lr_steps=[480]"])):
        out.append(E(f"6k_15+1x5_{suf}_s0", c15x, ["experiment.seed=0"] + sets, init_from="6k_15+5_distill_s0",
                     split="probe_15x5", label=f"distillation, {label}"))
    # 15+5's B is 500 iterations where the thesis trains B as long as A when many classes are added
    longb = ["train.iterations=2000", "train.lr_steps=[1600]"]
    out.append(E("6k_15+5_b2000_distill_s0", c155, ["experiment.seed=0"] + longb, init_from="6k_15+5_distill_s0",
                 split="probe_b", label="distillation, B 2000 iterations (lr x0.1 at 1600)"))
    out.append(E("6k_15+5_b2000_naive_s0", c155, ["experiment.seed=0"] + longb + ["learner.distill=none"],
                 init_from="6k_15+5_distill_s0", split="probe_b", label="w/o distillation, B 2000 iterations"))
    # the thesis trains B "for the same number of iterations as A when many classes are added at once"
    b6000 = ["train.iterations=6000", "train.lr_steps=[4800]"]
    out.append(E("6k_15+5_b6000_distill_s0", c155, ["experiment.seed=0"] + b6000, init_from="6k_15+5_distill_s0",
                 split="probe_b", label="distillation, B 6000 iterations (as long as A, as the thesis)"))
    out.append(E("6k_15+5_b6000_unbiasedbg_s0", c155, ["experiment.seed=0", "learner.bg_loss=unbiased"] + b6000,
                 init_from="6k_15+5_distill_s0", split="probe_b",
                 label="distillation, unbiased background loss, B 6000 iterations"))
    out.append(E("6k_15+5_unbiasedbg_s0", c155, ["experiment.seed=0", "learner.bg_loss=unbiased"],
                 init_from="6k_15+5_distill_s0", split="probe_b",
                 label="distillation, unbiased background loss (B 500 iterations)"))
    out.append(E("6k_15+5_b2000_unbiasedbg_s0", c155, ["experiment.seed=0"] + longb + ["learner.bg_loss=unbiased"],
                 init_from="6k_15+5_distill_s0", split="probe_b",
                 label="distillation, unbiased background loss, B 2000 iterations"))
    # the new classes stop at ~71 after B: does 5x the lr (as for 10+10) move them?
    for it, steps in ((2000, 1600), (6000, 4800)):
        out.append(E(f"6k_15+5_b{it}_lr1e-3_unbiasedbg_s0", c155,
                     ["experiment.seed=0", "learner.bg_loss=unbiased", "train.lr=0.001", f"train.iterations={it}",
                      f"train.lr_steps=[{steps}]"], init_from="6k_15+5_distill_s0", split="probe_b",
                     label=f"distillation, unbiased background loss, B {it} iterations at lr 1e-3 (5x the config's)"))
    # beyond the thesis: the unbiased background loss (learner.bg_loss, Cermelli et al. 2022), on the
    # seeds' own A checkpoints (seed 0's runs are the probes above)
    for k in SEEDS[1:]:
        seed = [f"experiment.seed={k}"]
        out.append(E(f"6k_15+1x5_unbiasedbg_pool32_s{k}", c15x, seed + UNBIASED_POOL32,
                     init_from=f"6k_15+5_distill_s{k}", split="remedy",
                     label=f"15+1x5 distillation, unbiased background loss and pool 32, seed {k}"))
        out.append(E(f"6k_15+5_unbiasedbg_s{k}", c155, seed + ["learner.bg_loss=unbiased"],
                     init_from=f"6k_15+5_distill_s{k}", split="remedy",
                     label=f"15+5 distillation, unbiased background loss, seed {k}"))
        out.append(E(f"6k_15+5_b2000_unbiasedbg_s{k}", c155, seed + longb + ["learner.bg_loss=unbiased"],
                     init_from=f"6k_15+5_distill_s{k}", split="remedy",
                     label=f"15+5 distillation, unbiased background loss, B 2000 iterations, seed {k}"))
        out.append(E(f"6k_15+5_b6000_unbiasedbg_s{k}", c155, seed + b6000 + ["learner.bg_loss=unbiased"],
                     init_from=f"6k_15+5_distill_s{k}", split="remedy",
                     label=f"15+5 distillation, unbiased background loss, B 6000 iterations, seed {k}"))
    out.append(E("6k_10+10_unbiasedbg_s0", c1010, ["experiment.seed=0", "learner.bg_loss=unbiased"],
                 init_from="6k_10+10_distill_s0", split="remedy",
                 label="10+10 distillation, unbiased background loss, seed 0"))
    out.append(E("6k_10+10_b2000_distill_s0", c1010, ["experiment.seed=0"] + longb,
                 init_from="6k_10+10_distill_s0", split="probe_1010", label="distillation, B 2000 iterations"))
    out.append(E("6k_10+10_b2000_unbiasedbg_s0", c1010, ["experiment.seed=0", "learner.bg_loss=unbiased",
                                                         "train.iterations=2000", "train.lr_steps=[1600]"],
                 init_from="6k_10+10_distill_s0", split="probe_1010",
                 label="distillation, unbiased background loss, B 2000 iterations"))
    out.append(E("6k_10+10_b2000_lr1e-3_unbiasedbg_s0", c1010,
                 ["experiment.seed=0", "learner.bg_loss=unbiased", "train.lr=0.001"] + longb,
                 init_from="6k_10+10_distill_s0", split="probe_1010",
                 label="distillation, unbiased background loss, B 2000 iterations at lr 1e-3 (5x the config's)"))
    out.append(E("6k_10+10_b6000_distill_s0", c1010, ["experiment.seed=0"] + b6000,
                 init_from="6k_10+10_distill_s0", split="probe_1010",
                 label="distillation, B 6000 iterations (as long as A, as the thesis)"))
    out.append(E("6k_10+10_b6000_unbiasedbg_s0", c1010, ["experiment.seed=0", "learner.bg_loss=unbiased"] + b6000,
                 init_from="6k_10+10_distill_s0", split="probe_1010",
                 label="distillation, unbiased background loss, B 6000 iterations"))
    return out


# ------------------------------------------------------------- thesis tables on VOC 2007
@dataclass
class ThesisRow:
    """One row of a thesis table: our run (``name``; None: not reproducible with this tool) and
    the thesis' VOC 2007 (old, new, all) mAP (None: the thesis has no such row)."""

    label: str
    name: Optional[str]
    thesis: Optional[Sequence[Optional[float]]]
    sets: List[str] = field(default_factory=list)
    init_from: Optional[str] = None


@dataclass
class ThesisTable:
    key: str  # split key of its experiments
    title: str
    config: str
    a_label: str
    a_thesis: float  # the thesis' mAP of A on the old classes
    n_old: int  # classes of the first task (the first n_old of the 20, in VOC order)
    rows: List[ThesisRow]


V = "voc07_"
_JOINT = ['tasks.split="20"']  # one task with all 20 classes, trained with A's schedule (first_task)
#: Thesis tables 3.1-3.3 (section 3.4, VOC 2007 test, copied from the thesis text) and the runs
#: that reproduce them with the paper-setting configs ``configs/incdet/voc07_*.yaml`` (GPU, VOC
#: 2007 and ImageNet ResNet-50 weights needed; ``run --thesis``). These use the learner's default
#: distillation normalisation (``thesis``, eq. 3.2).
THESIS_TABLES: List[ThesisTable] = [
    ThesisTable("voc07_19+1", "Table 3.1: addition of one class (tvmonitor), 19+1", "configs/incdet/voc07_19+1.yaml",
                "A(1-19)", 68.4, 19, [
                    ThesisRow("+B(20) w/o distillation", V + "19+1_naive", (25.0, 52.1, 26.4), ["learner.distill=none"]),
                    ThesisRow("+B(20) w frozen trunk", V + "19+1_frozen_trunk", (53.5, 43.1, 52.9),
                              ["learner.freeze=trunk", "learner.distill=none"]),
                    ThesisRow("+B(20) w all layers frozen", V + "19+1_all_frozen", (69.1, 41.6, 66.6),
                              ["learner.freeze=all_but_new", "learner.distill=none"]),
                    ThesisRow("+B(20) w frozen trunk and distill.", V + "19+1_frozen_trunk_distill", (68.7, 43.2, 67.4),
                              ["learner.freeze=trunk"]),
                    ThesisRow("+B(20) w distillation", V + "19+1_distill", (68.3, 58.3, 67.8)),
                    ThesisRow("+B(20) w cross-entropy distill.", V + "19+1_ce", (68.1, 52.0, 67.3), ["learner.distill=ce"]),
                    ThesisRow("+B(20) w/o bbox distillation", V + "19+1_nobox", (68.5, 62.7, 68.3),
                              ["learner.distill_box=false"]),
                    ThesisRow("A(1-20)", V + "joint", (69.6, 73.9, 69.8)),
                ]),
    ThesisTable("voc07_10+10", "Table 3.2: addition of 10 classes at once, 10+10", "configs/incdet/voc07_10+10.yaml",
                "A(1-10)", 65.8, 10, [
                    ThesisRow("+B(11-20) w/o distillation", V + "10+10_naive", (12.8, 64.5, 38.7), ["learner.distill=none"]),
                    ThesisRow("+B(11-20) w distillation", V + "10+10_distill", (63.2, 63.1, 63.1)),
                    ThesisRow("+B(11-20) w cross-entropy distill. (not in the thesis' table)", V + "10+10_ce", None,
                              ["learner.distill=ce"]),
                    ThesisRow("+B(11-20) w/o bbox distillation", V + "10+10_nobox", (58.7, 63.1, 60.9),
                              ["learner.distill_box=false"]),
                    ThesisRow("+B(11-20) w EWC", V + "10+10_ewc", (31.6, 61.0, 46.3),
                              ["learner.distill=none", "learner.ewc_weight=1000"]),
                    ThesisRow("A(1-20)", V + "joint", (68.4, 71.3, 69.8)),
                ]),
    ThesisTable("voc07_15+5", "Table 3.3: addition of 5 classes, at once (15+5) and one by one (15+1x5)",
                "configs/incdet/voc07_15+5.yaml", "A(1-15)", 70.5, 15, [
                    ThesisRow("+B(16-20) w distill.", V + "15+5_distill", (68.4, 58.4, 65.9)),
                    ThesisRow("+B(16)(17)...(20) w distill.", V + "15+1x5_distill", (66.0, 51.6, 62.4)),
                    ThesisRow("+B(16)(17)...(20) w unbiased distill.", V + "15+1x5_unbiased", (45.8, 46.5, 46.0),
                              ["learner.distill_sampling=unbiased"]),
                    ThesisRow("+A(16)+...+A(20) (separate networks; not supported by this tool)", None, (70.5, 37.8, 62.4)),
                    ThesisRow("A(1-20)", V + "joint", (70.9, 66.7, 69.8)),
                ]),
]

#: Thesis table 3.9 (B(16)(17)...(20) w distill., after each step): mAP over classes 1-15 (mean of
#: the table's 15 per-class APs), the AP of each added class (pottedplant, sheep, sofa, train,
#: tvmonitor; None before it is added) and the mAP over all classes seen so far.
THESIS_STEPS = [
    ("A(1-15)", 70.5, [None] * 5, 70.5),
    ("+B(16)", 69.7, [26.3, None, None, None, None], 67.0),
    ("+B(16)(17)", 67.4, [27.9, 46.8, None, None, None], 63.9),
    ("+B(16)(17)(18)", 66.5, [26.1, 56.2, 45.3, None, None], 62.5),
    ("+B(16)(17)(18)(19)", 66.0, [25.9, 56.1, 48.2, 65.0, None], 62.4),
    ("+B(16)(17)(18)(19)(20)", 66.0, [25.6, 57.1, 46.5, 70.7, 58.2], 62.4),
]
THESIS_STEPS_RUN = V + "15+1x5_distill"


def _thesis_exps() -> List[Experiment]:
    E = Experiment
    out = [E(V + "joint", "configs/incdet/voc07_19+1.yaml", list(_JOINT), split="voc07_joint",
             label="joint training A(1-20)")]
    base = {"voc07_19+1": V + "19+1_distill", "voc07_10+10": V + "10+10_distill", "voc07_15+5": V + "15+5_distill"}
    for t in THESIS_TABLES:
        for r in t.rows:
            if r.name is None or r.name == V + "joint" or r.name.startswith(V + "15+1x5"):
                continue
            out.append(E(r.name, t.config, list(r.sets), init_from=None if r.name == base[t.key] else base[t.key],
                         split=t.key, label=r.label))
    for r in THESIS_TABLES[2].rows:  # one class at a time, from the 15+5 run's A(1-15)
        if r.name is not None and r.name.startswith(V + "15+1x5"):
            out.append(E(r.name, "configs/incdet/voc07_15+1x5.yaml", list(r.sets), init_from=V + "15+5_distill",
                         split="voc07_15+5", label=r.label))
    # the distillation runs (which train A) first
    return sorted(out, key=lambda e: (e.init_from is not None, e.name != V + "joint"))


THESIS_EXPERIMENTS: List[Experiment] = _thesis_exps()
EXPERIMENTS: List[Experiment] = _exps() + THESIS_EXPERIMENTS
BY_NAME: Dict[str, Experiment] = {e.name: e for e in EXPERIMENTS}
#: ``run`` order: the 15+5 table first (the main result), joint training and VOC last
RUN_ORDER: List[str] = ([e.name for e in EXPERIMENTS if e.split == "15+5"] + ["joint"] +
                        [e.name for e in EXPERIMENTS if e.split == "seeds"] +
                        [e.name for e in EXPERIMENTS if e.split == "15+1x5"] +
                        [e.name for e in EXPERIMENTS if e.split == "10+10"] +
                        [e.name for e in EXPERIMENTS if e.split == "19+1"] +
                        [e.name for e in EXPERIMENTS if e.split in ("schedule", "schedule_155")] + ["voc100_10+10"] +
                        [e.name for e in EXPERIMENTS if e.split in ("converged", "probe_15x5", "probe_b", "remedy", "probe_1010")])
#: ``run --thesis``: the VOC 2007 runs of the thesis tables (A-training runs before their variants)
THESIS_ORDER: List[str] = [e.name for e in THESIS_EXPERIMENTS]


_finished = run_finished


def command_of(e: Experiment, out: Path) -> List[str]:
    cmd = ["incdet", "train", e.config, "--out", str(out / e.name), "--quiet"]
    for s in e.sets:
        cmd += ["--set", s]
    if e.init_from:
        cmd += ["--set", f"tasks.init_from={out / e.init_from / 'checkpoints' / 'task0.pt'}"]
    return cmd


def run(names: Sequence[str], out: Path, threads: int, device: str) -> int:
    """Train the experiments ``names`` (all: empty) in :data:`RUN_ORDER` (:func:`_common.run_queue`)."""
    from incdet.engine.trainer import run_training

    runs = []
    for e in [BY_NAME[n] for n in (names or RUN_ORDER)]:
        need = out / e.init_from / "checkpoints" / "task0.pt" if e.init_from else None
        sets = list(e.sets) + ([f"tasks.init_from={need}"] if need else [])
        runs.append(QueuedRun(e.name, ROOT / e.config, sets, command_of(e, out), need))
    return run_queue(runs, out, run_training, tag="incdet-exp", threads=threads, device=device)


# ---------------------------------------------------------------------------------- tables
def _wt(d: dict) -> str:
    """Wall time of a run and where it ran (GPU runs shared the GPU with other runs)."""
    w = d.get("_wall", {})
    if w.get("seconds") is None:
        return "-"
    return f"{w['seconds']:.0f} s ({'GPU' if w.get('gpu') else 'CPU'})"


def _mean(xs) -> float:
    """Mean of the values that are there (None / NaN absent; NaN when none): ``_common.mean_std``."""
    return mean_std(xs)[0]


def class_aps(metrics: dict) -> Dict[str, float]:
    """``{class: AP}`` from an ``evaluate`` dict (``AP/<class>`` entries; null = NaN)."""
    return {k[3:]: (float("nan") if v is None else float(v)) for k, v in metrics.items() if k.startswith("AP/")}


def old_new_all(aps: Dict[str, float], old: Sequence[str], new: Sequence[str]) -> Dict[str, float]:
    """Means of per-class AP over ``old``, ``new`` and both (a class without AP counts as missing)."""
    return {"old": _mean([aps.get(c) for c in old]), "new": _mean([aps.get(c) for c in new]),
            "all": _mean([aps.get(c) for c in list(old) + list(new)])}


#: kept copies of finished runs' small files (:data:`_common.RECORD_FILES`), committed so that the pages
#: can be regenerated on a machine without the runs; ``table`` refreshes them and reads a run from
#: there when ``OUT/NAME`` has no result (None: only ``OUT``; the functions' default)
RECORDS = ROOT / "docs" / "results" / "records" / "incdet"
_records: Optional[Path] = None


def keep_records(out: Path, dest: Path) -> List[str]:
    """:func:`_common.keep_records` for every experiment of this tool."""
    return _keep_records(out, dest, [e.name for e in EXPERIMENTS])


def _load(run: Path) -> Optional[dict]:
    p = run / "results.json"
    if not p.is_file() and _records is not None and (_records / run.name / "results.json").is_file():
        run = _records / run.name
        p = run / "results.json"
    if not p.is_file():
        return None
    d = json.loads(p.read_text())
    w = run / "wall.json"
    d["_wall"] = json.loads(w.read_text()) if w.is_file() else {}
    cmd = run / "command.txt"
    d["_command"] = cmd.read_text().strip() if cmd.is_file() else None
    return d


def _task_classes(d: dict) -> List[List[str]]:
    """Class names added by each task, from the per-class AP keys of the diagonal evaluations."""
    seen: List[str] = []
    out = []
    for i in range(len(d["tasks"])):
        m = (d.get("all_metrics") or [[]])[i][i] if d.get("all_metrics") else None
        names = list(class_aps(m or {}))
        new = [c for c in names if c not in seen]
        out.append(new)
        seen += new
    return out


_f = fmt_pct  # one decimal, '-' when missing (tools/_common.py)


#: the thesis table each shapes-voc split is the analogue of (``THESIS_TABLES`` index)
THESIS_TABLE_OF = {"19+1": 0, "10+10": 1, "15+5": 2, "15+1x5": 2}


def thesis_cells(split: str, name: str) -> str:
    """The thesis' VOC 2007 (old | new | all) for our run ``name`` of ``split``: the row of the
    split's thesis table whose VOC 2007 run is ``voc07_<name>`` (``joint``: its A(1-20) row; ``A``:
    the first task); ``- | - | -`` where the thesis has no such row."""
    k = THESIS_TABLE_OF.get(split)
    if k is None:
        return ""
    t = THESIS_TABLES[k]
    if name == "A":
        return f" {_f(t.a_thesis)} | - | - |"
    for r in t.rows:
        if r.name == V + name and r.thesis:
            return " " + " | ".join(_f(x) for x in r.thesis) + " |"
    return " - | - | - |"


def split_table(split: str, out: Path, names: Optional[Sequence[str]] = None, joint: str = "joint") -> Optional[str]:
    """old / new / all after the last task for the rows of ``split`` (or the runs ``names``; the
    first one's evaluation after task 0 gives A's row), and joint training (run ``joint``). Splits
    that are the analogue of a thesis table get the thesis' VOC 2007 numbers of the same row beside
    ours (:func:`thesis_cells`), for comparison of kind."""
    rows = [e for e in EXPERIMENTS if e.split == split] if names is None else [BY_NAME[n] for n in names]
    base = _load(out / rows[0].name)
    if base is None:
        return None
    groups = _task_classes(base)
    old = groups[0]
    new = [c for g in groups[1:] for c in g]
    a_aps = class_aps(base["all_metrics"][0][0])
    th = split in THESIS_TABLE_OF and names is None
    lines = [f"| method | old ({len(old)} classes) | new ({len(new)}) | all ({len(old) + len(new)}) | wall time |"
             + (" thesis (VOC 2007): old | new | all |" if th else ""),
             "|---|---:|---:|---:|---:|" + ("---:|---:|---:|" if th else "")]
    def cells(name: str) -> str:
        return thesis_cells(split, name) if th else ""

    lines.append(f"| A({len(old)} old classes) | {_f(_mean([a_aps.get(c) for c in old]))} | - | - | (in the next row) |"
                 + cells("A"))
    for e in rows:
        d = _load(out / e.name)
        if d is None or not d["matrix"] or d["matrix"][-1][-1] is None:
            lines.append(f"| +B {e.label} | not run | | | |" + cells(e.name))
            continue
        last = d["all_metrics"][-1][-1]
        s = old_new_all(class_aps(last), old, new)
        lines.append(f"| +B {e.label} | {_f(s['old'])} | {_f(s['new'])} | {_f(s['all'])} | "
                     f"{_wt(d)} |" + cells(e.name))
    j = _load(out / joint)
    if j is not None and j["matrix"] and j["matrix"][-1][-1] is not None:
        s = old_new_all(class_aps(j["all_metrics"][-1][-1]), old, new)
        lines.append(f"| joint training A(1-20) | {_f(s['old'])} | {_f(s['new'])} | {_f(s['all'])} | "
                     f"{_wt(j)} |" + cells("joint"))
    return "\n".join(lines)


def steps_table(name: str, out: Path, thesis: bool = False) -> Optional[str]:
    """Thesis table 3.9: after each step, mAP on the first task's classes, AP of the class added
    by each step, and the mAP of all classes seen so far. ``thesis``: the thesis' VOC 2007 old
    and all-seen mAP after the same step beside ours (:data:`THESIS_STEPS`; its classes differ)."""
    d = _load(out / name)
    if d is None:
        return None
    groups = _task_classes(d)
    old = groups[0]
    added = [c for g in groups[1:] for c in g]
    th = thesis and len(d["tasks"]) == len(THESIS_STEPS)
    head = "| after | old (1-%d) | " % len(old) + " | ".join(added) + " | all seen |"
    lines = [head + (" thesis (VOC 2007): old (1-15) | all seen |" if th else ""),
             "|---" * (len(added) + 3 + 2 * th) + "|"]
    for i, t in enumerate(d["tasks"]):
        m = d["all_metrics"][i][i] if d["all_metrics"][i][i] else None
        if m is None:
            continue
        aps = class_aps(m)
        cells = [_f(aps.get(c)) if c in aps else "" for c in added]
        seen = old + [c for g in groups[1:i + 1] for c in g]
        lines.append(f"| {t} | {_f(_mean([aps.get(c) for c in old]))} | " + " | ".join(cells) +
                     f" | {_f(_mean([aps.get(c) for c in seen]))} |" +
                     (f" {_f(THESIS_STEPS[i][1])} | {_f(THESIS_STEPS[i][3])} |" if th else ""))
    return "\n".join(lines)


SCHEDULE_NOTE = ("Schedule: the tables of this page were made with A (the first task) trained for 2000 "
                 "iterations, the configs' former schedule (each command that trains A says so); the configs "
                 "now train A for 6000 iterations (joint training 34.1 -> 64.6 mAP, below). The key rows at "
                 "the configs' schedule, three seeds each: [incdet_6k.md](incdet_6k.md).")
NORM_NOTE = ("Distillation normalisation: each table says which `learner.distill_norm` its runs used. Runs "
             "made before the switch existed (no `distill_norm` in their `config.yaml`) used the released "
             "code's plain means (`released_code`); the shapes-voc configs, the VOC2012-100 config and the demo "
             "pin `released_code`, so these tables are reproduced as they were. The learner's default is "
             "`thesis` (eq. 3.2 as printed: the logit term x (1 + |C_A|)/|C_A| and the box term x 4 "
             "compared with `released_code`).")


PROTOCOL_NOTE = ('Evaluation protocol: every table here used the `standard` preset (`learner.protocol: standard`, '
                 "the configs' values: detections with score > 0.05, per-class NMS at IoU 0.3, at most 100 per "
                 "image; VOC AP at IoU 0.5, all-point except the VOC 2007 configs' 11-point `use_07_metric: "
                 'true`). The `thesis` preset (`--set learner.protocol=thesis`) evaluates as thesis 3.4.2 states: '
                 'score > 0.5, NMS 0.3, 100 per image (the thesis names no cap), VOC 2007 11-point AP; a key set '
                 'explicitly (`learner.eval_score_thresh`, `eval_nms_iou`, `eval_detections_per_img`, '
                 '`use_07_metric`) wins over the preset. COCO tasks (`learner.eval_metric: auto`) are evaluated by'
                 ' pycocotools: `mAP` in the results matrix is AP@[.5:.95] (COCO-style), `AP50` beside it is AP at'
                 ' IoU 0.5 (PASCAL-style; the two columns of table 3.4); crowd regions are ignored (also in the '
                 'VOC evaluator).')


def run_norm(run: Path) -> Optional[str]:
    """``learner.distill_norm`` of a finished run (from its resolved ``config.yaml``): a run whose
    config predates the switch used the released code's normalisation. None: not finished."""
    if _load(run) is None:
        return None
    cfg = run / "config.yaml"
    if not cfg.is_file():
        return "released_code (no config.yaml; assumed)"
    import yaml

    learner = (yaml.safe_load(cfg.read_text()) or {}).get("learner") or {}
    return str(learner.get("distill_norm", "released_code"))


def norm_line(names: Sequence[str], out: Path) -> str:
    """Which distillation normalisation the finished runs ``names`` used (``learner.distill_norm``)."""
    norms = {n: run_norm(out / n) for n in names}
    done = {n: v for n, v in norms.items() if v is not None}
    if not done:
        return "Distillation normalisation (`learner.distill_norm`): no finished run."
    kinds = sorted(set(done.values()))
    if len(kinds) == 1:
        return f"Distillation normalisation (`learner.distill_norm`): `{kinds[0]}` in every finished run of this table."
    return ("Distillation normalisation (`learner.distill_norm`): " +
            ", ".join(f"`{n}`: `{v}`" for n, v in done.items()) + ".")


def _last_aps(d: Optional[dict]) -> Optional[Dict[str, float]]:
    if d is None or not d.get("matrix") or d["matrix"][-1][-1] is None:
        return None
    return class_aps(d["all_metrics"][-1][-1])


def thesis_table(t: ThesisTable, out: Path) -> str:
    """A thesis table laid out as in the thesis (method | old | new | all), with the thesis'
    VOC 2007 numbers beside ours; "not run yet" where our run is missing. Old / new = the first
    ``t.n_old`` classes / the rest, in the run's class order (VOC order)."""
    lines = ["| method | old | new | all | thesis: old | new | all |", "|---|---:|---:|---:|---:|---:|---:|"]
    base = next((r.name for r in t.rows if r.name and not r.sets and r.name != V + "joint"
                 and BY_NAME[r.name].init_from is None), None)
    b = _load(out / base) if base else None
    a = None
    if b is not None and b.get("all_metrics") and b["all_metrics"][0][0]:
        a = _mean(list(class_aps(b["all_metrics"][0][0]).values()))
    lines.append(f"| {t.a_label} | {'not run yet' if a is None else _f(a)} | - | - | {_f(t.a_thesis)} | - | - |")
    for r in t.rows:
        th = " | ".join(_f(x) for x in r.thesis) if r.thesis else "- | - | -"
        if r.name is None:
            ours = "not supported | | "
        else:
            aps = _last_aps(_load(out / r.name))
            if aps is None:
                ours = "not run yet | | "
            else:
                names = list(aps)
                s = old_new_all(aps, names[: t.n_old], names[t.n_old:])
                ours = f"{_f(s['old'])} | {_f(s['new'])} | {_f(s['all'])}"
        lines.append(f"| {r.label} | {ours} | {th} |")
    return "\n".join(lines)


def thesis_steps_table(out: Path) -> str:
    """Thesis table 3.9 beside ours: after each step of B(16)(17)...(20), the mAP over classes
    1-15, the AP of each added class and the mAP over the classes seen so far."""
    added = ["plant", "sheep", "sofa", "train", "tv"]
    lines = ["| after | old (1-15) | " + " | ".join(added) + " | all seen | thesis: old (1-15) | " +
             " | ".join(added) + " | all seen |", "|---" + "|---:" * 14 + "|"]
    d = _load(out / THESIS_STEPS_RUN)
    for i, (label, t_old, t_new, t_all) in enumerate(THESIS_STEPS):
        th = f"{_f(t_old)} | " + " | ".join(_f(x) for x in t_new) + f" | {_f(t_all)}"
        m = None
        if d is not None and i < len(d.get("all_metrics") or []) and i < len(d["all_metrics"][i]):
            m = d["all_metrics"][i][i]
        if m is None:
            ours = "not run yet" + " | " * 6
        else:
            aps = class_aps(m)
            names = list(aps)
            old, new = names[:15], names[15:]
            cells = [_f(aps[new[k]]) if k < len(new) else "-" for k in range(5)]
            ours = f"{_f(_mean([aps[c] for c in old]))} | " + " | ".join(cells) + f" | {_f(_mean(list(aps.values())))}"
        lines.append(f"| {label} | {ours} | {th} |")
    return "\n".join(lines)


def thesis_section(out: Path) -> List[str]:
    parts = ["## Thesis tables 3.1-3.3 and 3.9 on VOC 2007 (paper settings)", "",
             "The runs of `python tools/incdet_experiments.py run --thesis` (the paper-setting configs "
             "`configs/incdet/voc07_*.yaml`: ResNet-50-C4 from ImageNet weights, all layers fine-tuned, "
             "needs a GPU and VOC 2007), beside the thesis' VOC 2007 test numbers (copied from the "
             "thesis). mAP: VOC 2007 11-point AP (%) on VOC 2007 test; old / new / all as in the thesis. "
             "These use the learner's default distillation normalisation `thesis` (eq. 3.2).", ""]
    for t in THESIS_TABLES:
        names = [r.name for r in t.rows if r.name]
        parts += [f"### {t.title}", "", thesis_table(t, out), "", norm_line(names, out), "", "Commands:", "",
                  "```\n" + "\n".join(shlex.join(command_of(BY_NAME[n], out)) for n in dict.fromkeys(names)) + "\n```", ""]
    parts += ["### Table 3.9: B(16)(17)...(20) w distill., after each step", "", thesis_steps_table(out), "",
              f"Our row: the run `{THESIS_STEPS_RUN}` (command under table 3.3).", ""]
    return parts


def _seed_name(name: str, k: int, prefix: str = "") -> str:
    """The run of row ``name`` under seed ``k``: ``name`` / ``name_sK`` (the former schedule's
    rows), or ``PREFIXname_sK`` for every seed when ``prefix`` is given (``6k_``: the configs')."""
    if prefix:
        return f"{prefix}{name}_s{k}"
    return name if k == 0 else f"{name}_s{k}"


def seed_values(out: Path, prefix: str = "") -> Dict[str, List[Optional[float]]]:
    """Per seed (:data:`SEEDS`), the key rows of the 15+5 split: A(1-15) on its classes, +B with
    and without distillation (old / new / all after B) and joint training A(1-20) split the same
    way; and the all-class mAP after the last step of 10+10 and 15+1x5 with distillation; None
    where a run is missing. ``prefix``: which runs (:func:`_seed_name`)."""
    rows: Dict[str, List[Optional[float]]] = {k: [] for k in (
        "A(1-15)", "distill old", "distill new", "distill all", "naive old", "naive new", "naive all",
        "joint old", "joint new", "joint all")}
    for k in SEEDS:
        d = _load(out / _seed_name("15+5_distill", k, prefix))
        groups = _task_classes(d) if d is not None and d.get("all_metrics") else None
        old = groups[0] if groups else None
        new = [c for g in groups[1:] for c in g] if groups else None
        a = None
        if d is not None and d.get("all_metrics") and d["all_metrics"][0][0]:
            a = _mean([class_aps(d["all_metrics"][0][0]).get(c) for c in old])
        rows["A(1-15)"].append(a)
        for key, name in (("distill", "15+5_distill"), ("naive", "15+5_naive"), ("joint", "joint")):
            aps = _last_aps(_load(out / _seed_name(name, k, prefix)))
            s = old_new_all(aps, old, new) if aps is not None and old is not None else {}
            for part in ("old", "new", "all"):
                rows[f"{key} {part}"].append(s.get(part))
    rows["10+10 distill all"] = [_all_after(out, _seed_name("10+10_distill", k, prefix)) for k in SEEDS]
    rows["15+1x5 distill all"] = [_all_after(out, _seed_name("15+1x5_distill", k, prefix)) for k in SEEDS]
    return rows


def seeds_table(out: Path, prefix: str = "") -> str:
    rows = seed_values(out, prefix)
    lines = ["| row | " + " | ".join(f"seed {k}" for k in SEEDS) + " | mean | std (n) |",
             "|---" + "|---:" * (len(SEEDS) + 2) + "|"]
    for key, vals in rows.items():
        m, sd, n = mean_std(vals)
        lines.append(f"| {key} | " + " | ".join(_f(v) for v in vals) + f" | {_f(m)} | {_f(sd)} ({n}) |")
    return "\n".join(lines)


def schedule_table(out: Path) -> str:
    """Joint training A(1-20) under the former schedule (``joint``, 2000 iterations) and the
    schedule probes: mAP over all 20 classes and the wall time."""
    lines = ["| joint training A(1-20) | all (20) | wall time |", "|---|---:|---:|"]
    for name, label in [("joint", "the former schedule: 2000 iterations, lr 0.002 (x0.1 at 1600)")] + [
            (e.name, e.label.replace("joint training, ", "")) for e in EXPERIMENTS if e.split == "schedule"]:
        d = _load(out / name)
        v = _all_after(out, name)
        lines.append(f"| {label} | {'not run' if v is None else _f(v)} | {_wt(d) if d else '-'} |")
    return "\n".join(lines)


def long_table(out: Path) -> str:
    """15+5 with A(1-15) trained 3x longer (6000 iterations; B unchanged), beside the config's
    schedule (seed 0) and the targets against joint training of the same length (``joint_6k``)."""
    lines = ["| A(1-15) schedule | A(1-15) | +B distill: old | new | all | +B naive: old | new | all |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    j = _all_after(out, "joint_6k")
    notes = []
    for label, dn, nn in (("2000 iterations (the former schedule)", "15+5_distill", "15+5_naive"),
                          ("6000 iterations (the configs now)", "15+5_long_distill", "15+5_long_naive")):
        d = _load(out / dn)
        if d is None or not d.get("all_metrics") or not d["all_metrics"][0][0]:
            lines.append(f"| {label} | not run | | | | | | |")
            continue
        groups = _task_classes(d)
        old, new = groups[0], [c for g in groups[1:] for c in g]
        a = _mean([class_aps(d["all_metrics"][0][0]).get(c) for c in old])
        cells = []
        for name in (dn, nn):
            aps = _last_aps(_load(out / name))
            s = old_new_all(aps, old, new) if aps is not None else {}
            cells += [_f(s.get("old")), _f(s.get("new")), _f(s.get("all"))]
        lines.append(f"| {label} | {_f(a)} | " + " | ".join(cells) + " |")
        if dn == "15+5_long_distill":
            aps = _last_aps(_load(out / dn))
            if aps is not None:
                s = old_new_all(aps, old, new)
                notes.append(f"With the 6000-iteration A: distillation keeps {_f(100 * s['old'] / a)} % of A on the "
                             f"old classes; all classes {_f(s['all'])} = "
                             f"{_f(100 * s['all'] / j) if j is not None else '-'} % of joint training of the same "
                             f"length ({_f(j)}, `joint_6k`); one seed.")
    return "\n".join(lines + ([""] + notes if notes else []))


def _all_after(out: Path, name: str) -> Optional[float]:
    aps = _last_aps(_load(out / name))
    return None if aps is None else _mean(list(aps.values()))


def targets_lines(out: Path, prefix: str = "") -> List[str]:
    """Issue 13's targets, each with the measured figure and met / not met / not measured (seed
    means where seeds exist; spread = the larger sample std of the two compared rows)."""
    r = seed_values(out, prefix)
    ms = {k: mean_std(v) for k, v in r.items()}
    a, jd = ms["A(1-15)"][0], ms["joint all"][0]

    def verdict(ok: Optional[bool]) -> str:
        return "not measured" if ok is None else ("**met**" if ok else "**not met**")

    def have(*xs) -> bool:
        return all(x is not None and x == x for x in xs)

    out_l = []
    out_l.append(f"- Joint training A(1-20) >= 60 mAP: {_f(jd)} (mean of {ms['joint all'][2]} seeds): "
                 f"{verdict(jd >= 60 if have(jd) else None)}.")
    do, no = ms["distill old"][0], ms["naive old"][0]
    out_l.append(f"- 15+5 distillation, old classes >= 90 % of A: {_f(100 * do / a) if have(do, a) else '-'} %: "
                 f"{verdict(do >= 0.9 * a if have(do, a) else None)}.")
    dall = ms["distill all"][0]
    out_l.append(f"- 15+5 distillation, all classes >= 90 % of joint: {_f(100 * dall / jd) if have(dall, jd) else '-'} %: "
                 f"{verdict(dall >= 0.9 * jd if have(dall, jd) else None)}.")
    out_l.append(f"- 15+5 naive fine-tuning, old classes <= 30 % of A: {_f(100 * no / a) if have(no, a) else '-'} %: "
                 f"{verdict(no <= 0.3 * a if have(no, a) else None)}.")
    sd = max(ms["distill old"][1], ms["naive old"][1]) if have(ms["distill old"][1], ms["naive old"][1]) else None
    gap_ok = (do - no) > 5 * sd if have(do, no, sd) else None
    out_l.append(f"- Gap distillation - naive on the old classes ({_f(do - no) if have(do, no) else '-'}) larger "
                 f"than 5x the seed spread (5 x {_f(sd)}): {verdict(gap_ok)}.")
    for split, name in (("10+10", "10+10_distill"), ("15+1x5", "15+1x5_distill")):
        v, _, n = mean_std([_all_after(out, _seed_name(name, k, prefix)) for k in SEEDS])
        out_l.append(f"- {split} distillation, all classes after the last step >= 85 % of joint: "
                     f"{_f(100 * v / jd) if have(v, jd) else '-'} % ({_f(v)} mAP, mean of {n} seed(s)): "
                     f"{verdict(v >= 0.85 * jd if have(v, jd) else None)}.")
    return out_l


def commands_block(split: str, out: Path) -> str:
    cmds = [shlex.join(command_of(e, out)) for e in EXPERIMENTS if e.split in (split,)]
    return "```\n" + "\n".join(cmds) + "\n```"


def hardware_line(names: Sequence[str], out: Path) -> str:
    """Where the runs ``names`` ran (from their ``wall.json``) and their total wall time."""
    walls = [(_load(out / n) or {}).get("_wall", {}) for n in names]
    secs = sum(w.get("seconds", 0) for w in walls)
    cpu = next((w.get("cpu") for w in walls if w.get("cpu")), cpu_name())
    thr = next((w.get("threads") for w in walls if w.get("threads")), None)
    gpu = next((w.get("gpu") for w in walls if w.get("gpu")), None)
    mixed = gpu and any(w.get("seconds") is not None and not w.get("gpu") for w in walls)
    where = (f"{gpu} (several runs sharing it at once, see tools/gpu_experiments.sh), host CPU {cpu}"
             + ("; the runs marked CPU in the tables ran on the CPU alone" if mixed else "")
             if gpu else f"{cpu}, CPU only")
    return (f"Hardware: {where}, {thr} torch thread(s) per run; total training + evaluation "
            f"wall time {secs / 60:.0f} min.")


REMEDY_ROWS = (
    ("15+5 distillation (thesis)", "6k_15+5_distill_s{k}"),
    ("15+5 distillation + unbiased background loss", "6k_15+5_unbiasedbg_s{k}"),
    ("15+5 distillation + unbiased background loss, B 2000 iterations", "6k_15+5_b2000_unbiasedbg_s{k}"),
    ("15+5 distillation + unbiased background loss, B 6000 iterations (as long as A)", "6k_15+5_b6000_unbiasedbg_s{k}"),
    ("15+1x5 distillation (thesis)", "6k_15+1x5_distill_s{k}"),
    ("15+1x5 distillation + unbiased background loss + pool 32", "6k_15+1x5_unbiasedbg_pool32_s{k}"),
    ("10+10 distillation (thesis)", "6k_10+10_distill_s{k}"),
    ("10+10 distillation + unbiased background loss", "6k_10+10_unbiasedbg_s{k}"),
)


def _old_all_after(out: Path, name: str) -> tuple:
    """(old-class mAP, all-class mAP) after the last task of run ``name``; (None, None) if absent."""
    d = _load(out / name)
    aps = _last_aps(d)
    if aps is None:
        return None, None
    groups = _task_classes(d)
    s = old_new_all(aps, groups[0], [c for g in groups[1:] for c in g])
    return s["old"], s["all"]


def remedy_table(out: Path) -> str:
    """The thesis' distillation beside it with the unbiased background loss (``REMEDY_ROWS``):
    all-class mAP after the last step per seed, mean, sample std, the mean as % of joint training
    (mean of the ``6k_joint_sK`` seeds) and the old classes' mean."""
    joint = mean_std([_all_after(out, f"6k_joint_s{k}") for k in SEEDS])[0]
    lines = ["| run | " + " | ".join(f"all, seed {k}" for k in SEEDS) + " | mean | std (n) | % of joint | old (mean) |",
             "|---" + "|---:" * (len(SEEDS) + 4) + "|"]
    for label, pattern in REMEDY_ROWS:
        vals = [_old_all_after(out, pattern.format(k=k)) for k in SEEDS]
        m, sd, n = mean_std([v[1] for v in vals])
        om = mean_std([v[0] for v in vals])[0]
        pct = _f(100 * m / joint) if n and joint == joint else "-"
        lines.append(f"| {label} | " + " | ".join(_f(v[1]) for v in vals) + f" | {_f(m)} | {_f(sd)} ({n}) | {pct} | {_f(om)} |")
    return "\n".join(lines)


def write_converged_markdown(out: Path, md: Path, extra_notes: str = "", notes_path: str = "") -> str:
    """``docs/results/incdet_6k.md``: the key rows at the configs' own schedule (split
    ``converged``: A 6000 iterations), every seed, and issue 13's targets measured on them."""
    names = [e.name for e in EXPERIMENTS if e.split == "converged"]
    notes_arg = f" --notes {notes_path}" if notes_path else ""
    if _records is not None and Path(_records).resolve() != Path(RECORDS).resolve():  # other records: say which
        notes_arg = f" --records {_records}" + notes_arg
    if Path(md).name != "incdet_6k.md":  # another page than the default: say which
        notes_arg = f" --md {md}" + notes_arg
    parts = ["# incdet on shapes-voc at the configs' schedule: the key rows, seed by seed", "",
             f"Produced by `python tools/incdet_experiments.py run --split converged --out {out}` "
             f"and `python tools/incdet_experiments.py table --page 6k --out {out}"
             f"{notes_arg}` (writes this file). Each run is the `incdet train` command listed below "
             "(its record, `command.txt`, keeps the command as it was run); a run not finished yet "
             "reads `-`.", "",
             hardware_line(names, out), "",
             "The configs `configs/incdet/shapes_*.yaml` as they are: the zoo's pretrained trunk, the first "
             "task (A) trained for 6000 iterations (lr 0.002, x0.1 at 4800), each incremental step for the "
             "config's `train.iterations`. The tables of [incdet.md](incdet.md) were made with A trained for "
             "2000 iterations (their commands say so). mAP: mean of per-class VOC all-point AP (%) on the "
             "shapes-voc test split (250 images); old = classes of the first task, new = classes added "
             "afterwards; joint training A(1-20) is split the same way.", "",
             seeds_table(out, "6k_"), "", "### Targets of issue 13, measured", ""] + targets_lines(out, "6k_") + [
             "", "Commands:", "", commands_block("converged", out), ""]
    b = ["6k_15+5_distill_s0", "6k_15+5_naive_s0"] + [e.name for e in EXPERIMENTS if e.split == "probe_b"]
    parts += ["## 15+5 on seed 0's A: B trained longer", "",
              "The configs train B (classes 16-20) for 500 iterations; the thesis trains B as long as A when "
              "several classes are added at once. Same A (seed 0), B for 2000 iterations, and for 6000 (as long "
              "as A, lr x0.1 at 4800).", ""]
    t = split_table("probe_b", out, names=b, joint="6k_joint_s0")
    parts += [t if t is not None else "Not run yet.", "", "Commands (the first two rows': above):", "",
              commands_block("probe_b", out), ""]
    probes = ["6k_15+1x5_distill_s0"] + [e.name for e in EXPERIMENTS if e.split == "probe_15x5"]
    parts += ["## 15+1x5 on seed 0's A: probes of the collapse", "",
              "Classes 16-20 added one at a time, each step `train.iterations` of the config on the images "
              "that contain the step's class: the config (Adam lr 2e-4), SGD with Nesterov momentum as the "
              "thesis trains B, BatchNorm statistics frozen, background RoIs drawn from IoU [0.1, 0.5) "
              "with the step's boxes instead of [0, 0.5), a distillation weight of 10, the distillation pool "
              "scaled to shapes-voc's ~100 proposals per image (32 instead of 128), and the unbiased background "
              "loss (`learner.bg_loss: unbiased`, not in the thesis; section below), alone and with pool 32.", ""]
    t = split_table("probe_15x5", out, names=probes, joint="6k_joint_s0")
    parts += [t if t is not None else "Not run yet.", ""]
    for n in probes:
        st = steps_table(n, out)
        if st:
            parts += [f"Per step, {BY_NAME[n].label} (`{n}`):", "", st, ""]
    parts += ["Commands (the first row's: above):", "", commands_block("probe_15x5", out), ""]
    p1010 = ["6k_10+10_distill_s0", "6k_10+10_unbiasedbg_s0", "6k_10+10_b2000_distill_s0",
             "6k_10+10_b2000_unbiasedbg_s0", "6k_10+10_b2000_lr1e-3_unbiasedbg_s0", "6k_10+10_b6000_distill_s0",
             "6k_10+10_b6000_unbiasedbg_s0"]
    parts += ["## 10+10 on seed 0's A: B's length", "",
              "Classes 11-20 added at once: the config's B (500 iterations), the unbiased background loss, and "
              "both with B trained 2000 iterations (lr x0.1 at 1600; also at 5x the config's lr) and 6000 "
              "iterations (lr x0.1 at 4800: as long as A, as the thesis trains B when many classes are added at "
              "once).", ""]
    t = split_table("probe_1010", out, names=p1010, joint="6k_joint_s0")
    parts += [t if t is not None else "Not run yet.", "", "Command (the others': above and below):", "",
              commands_block("probe_1010", out), ""]
    parts += ["## Beyond the thesis: the unbiased background loss, seed by seed", "",
              "`learner.bg_loss: unbiased` (not in the thesis; Cermelli et al. 2022, *Modeling missing annotations "
              "for incremental learning in object detection*): in a step after the first, a background RoI's "
              "loss is -log(p_bg + sum of the old classes' p), so the step no longer teaches that the old "
              "objects in its images are background. For 15+1x5 also the distillation pool scaled to "
              "shapes-voc's ~100 proposals per image (`distill_pool: 32, distill_rois: 32`). Each run starts "
              "from the same seed's A as the thesis rows (seed 0's runs are the probes above); all = mAP over "
              "all 20 classes after the last step, % of joint = against the mean of the joint seeds.", "",
              remedy_table(out), "", "Commands (seed 0's: above):", "", commands_block("remedy", out), ""]
    return save_markdown(md, parts, extra_notes)


def write_markdown(out: Path, md: Path, extra_notes: str = "", notes_path: str = "") -> str:
    notes_arg = f" --notes {notes_path}" if notes_path else ""
    parts = ["# incdet on shapes-voc: class-incremental Fast R-CNN (thesis chapter 3)", "",
             "Produced by `python tools/incdet_experiments.py run --out runs/incdet_exp` "
             "(trains every run below, one after another; resumable), or on a GPU machine by "
             "`bash tools/gpu_experiments.sh runs` (the same runs, several at once), and "
             f"`python tools/incdet_experiments.py table --out runs/incdet_exp{notes_arg}` (writes this "
             "file). Each run is exactly the `incdet train` command listed under its table.", ""]
    parts += [hardware_line([e.name for e in EXPERIMENTS], out), "",
              "mAP: mean of per-class VOC all-point AP (%) on the full shapes-voc test split "
              "(250 images); old = classes of the first task, new = classes added afterwards, "
              "all = both. Joint training A(1-20) is one model trained on all classes at once, split "
              "the same way.", "",
              "Thesis columns: beside each row of a table that is the analogue of a thesis table, the thesis' "
              "VOC 2007 test numbers of the same row (ResNet-50-C4 from ImageNet, 11-point AP, the VOC "
              "classes; section at the end), for comparison of kind only: classes, network and data differ.", "",
              "Trunk: every shapes-voc config starts from the model zoo's pretrained ResNet-18 "
              "(`learner.model.weights: zoo:resnet18w16_shapes-pretrain`, docs/results/zoo.md: pretrained "
              "on generated shapes that share no shape and no pattern with shapes-voc, the role ImageNet "
              "plays in the thesis); all layers fine-tuned. The former tables, from random initialisation, "
              "are in [incdet_from_scratch.md](incdet_from_scratch.md).", "", SCHEDULE_NOTE, "", NORM_NOTE, "",
              PROTOCOL_NOTE, ""]
    titles = {"15+5": "## 15+5: classes 16-20 added at once (table 3.3 analogue)",
              "10+10": "## 10+10: classes 11-20 added at once (table 3.2 analogue)",
              "15+1x5": "## 15+1x5: classes 16, 17, ..., 20 added one at a time (tables 3.3 and 3.9 analogue)"}
    titles["19+1"] = "## 19+1: class 20 added alone (table 3.1 analogue: every row of the table)"
    parts += ["## Repeatability: the key rows under three seeds", "",
              "`experiment.seed` 0 (the rows of the tables below), 1 and 2; each seed trains its own "
              "A(1-15), its +B and 15+1x5 runs start from it (10+10 trains its own A(1-10)). Same classes "
              "and test split as the tables below.", "",
              seeds_table(out), "", "Commands (seed 0: under the tables below):", "",
              commands_block("seeds", out), "", "### Targets of issue 13, measured", ""] + targets_lines(out) + [""]
    parts += ["### Schedule probes (joint training, seed 0)", "", schedule_table(out), "", "Commands:", "",
              commands_block("schedule", out), "", "### 15+5 with a 3x longer A (seed 0)", "", long_table(out), "",
              "Commands:", "", commands_block("schedule_155", out), ""]
    for split in ("15+5", "10+10", "15+1x5", "19+1"):
        t = split_table(split, out)
        parts += [titles[split], ""]
        if t is None:
            parts += ["Not run yet.", ""]
            continue
        parts += [t, "", norm_line([e.name for e in EXPERIMENTS if e.split == split], out), "",
                  "Commands:", "", commands_block(split, out), ""]
        if split == "15+1x5":
            for e in EXPERIMENTS:
                if e.split == "15+1x5":
                    st = steps_table(e.name, out, thesis=V + e.name == THESIS_STEPS_RUN)
                    if st:
                        parts += [f"Per step, {e.label} (`{e.name}`):", "", st, ""]
    parts += ["Joint training: `" + shlex.join(command_of(BY_NAME["joint"], out)) + "`", ""]
    v = _load(out / "voc100_10+10")
    parts += ["## VOC2012-100, 10+10 (end-to-end smoke run: real XML, selective-search proposals)", ""]
    if v is not None and v["matrix"] and v["matrix"][-1][-1] is not None:
        groups = _task_classes(v)
        s = old_new_all(class_aps(v["all_metrics"][-1][-1]), groups[0], [c for g in groups[1:] for c in g])
        a = _mean(list(class_aps(v["all_metrics"][0][0]).values()))
        parts += ["| A(1-10) mAP | +B(11-20) old | new | all | wall time |", "|---:|---:|---:|---:|---:|",
                  f"| {_f(a)} | {_f(s['old'])} | {_f(s['new'])} | {_f(s['all'])} | "
                  f"{_wt(v)} |", "",
                  "Command: `" + shlex.join(command_of(BY_NAME["voc100_10+10"], out)) + "`", "",
                  norm_line(["voc100_10+10"], out), ""]
    else:
        parts += ["Not run yet.", ""]
    parts += thesis_section(out)
    return save_markdown(md, parts, extra_notes)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="incdet_experiments", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train the experiments that are not finished yet")
    r.add_argument("--out", default="runs/incdet_exp")
    r.add_argument("--only", nargs="*", default=[], choices=sorted(BY_NAME), metavar="NAME")
    r.add_argument("--split", default=None, choices=sorted({e.split for e in EXPERIMENTS}),
                   help="the experiments of one table (e.g. converged: the configs' schedule, three seeds)")
    r.add_argument("--thesis", action="store_true",
                   help="the VOC 2007 runs of the thesis tables (GPU, VOC 2007, ResNet-50 weights) instead of shapes-voc")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--device", default="auto")
    t = sub.add_parser("table", help="write docs/results/incdet.md from finished runs")
    t.add_argument("--out", default="runs/incdet_exp")
    t.add_argument("--page", choices=("main", "6k"), default="main",
                   help="main: docs/results/incdet.md; 6k: docs/results/incdet_6k.md (the configs' schedule)")
    t.add_argument("--md", default=None, help="output file (default: the page's)")
    t.add_argument("--notes", default=None, help="a markdown file appended to the tables")
    t.add_argument("--records", default=str(RECORDS),
                   help="where finished runs' small files are kept (copied there first; a run missing from "
                        "--out is read from there); 'none': only --out")
    sub.add_parser("list", help="list the experiments and their commands")
    a = p.parse_args(argv)
    if a.cmd == "list":
        for e in EXPERIMENTS:
            print(f"{e.name:18s} {shlex.join(command_of(e, Path('runs/incdet_exp')))}")
        return 0
    if a.cmd == "run":
        names = list(a.only)
        if a.split:  # every split has experiments (the choices are taken from them)
            names += [n for n in RUN_ORDER + THESIS_ORDER if BY_NAME[n].split == a.split and n not in names]
        return run(names or (THESIS_ORDER if a.thesis else []), Path(a.out), a.threads, a.device)
    global _records
    if a.records != "none":
        kept = keep_records(Path(a.out), Path(a.records))
        print(f"records of {len(kept)} finished run(s) kept in {a.records}", file=sys.stderr)
    notes = Path(a.notes).read_text() if a.notes else ""
    md = Path(a.md) if a.md else ROOT / "docs" / "results" / ("incdet.md" if a.page == "main" else "incdet_6k.md")
    write = write_markdown if a.page == "main" else write_converged_markdown
    _records = None if a.records == "none" else Path(a.records)
    try:
        print(write(Path(a.out), md, notes, a.notes or ""))
    finally:
        _records = None
    return 0


if __name__ == "__main__":
    sys.exit(main())
