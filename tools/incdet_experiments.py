"""The incdet experiments of thesis chapter 3 on shapes-voc (and a VOC2012-100 smoke run), and
the tables of ``docs/results/incdet.md``.

    python tools/incdet_experiments.py run   [--out runs/incdet_exp] [--only NAME ...] [--threads 1]
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
- the wall time of each run and the machine it ran on.

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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import QueuedRun, cpu_name, run_finished, run_queue, save_markdown  # noqa: E402  (shared by the tools)


@dataclass
class Experiment:
    name: str  # run directory under OUT (also the key in tables)
    config: str  # path relative to the repo root
    sets: List[str] = field(default_factory=list)
    init_from: Optional[str] = None  # another experiment whose checkpoints/task0.pt is the start
    split: str = ""  # the table it belongs to
    label: str = ""  # row label


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
    # one class at a time re-uses the 15+5 run's A(1-15) (same classes, same data)
    out.append(E("15+1x5_distill", c15x, init_from="15+5_distill", split="15+1x5",
                 label="distillation (biased sampling)"))
    for suf, label, sets in variants[:2]:
        out.append(E(f"15+1x5_{suf}", c15x, sets, init_from="15+5_distill", split="15+1x5", label=label))
    out.append(E("15+1x5_lambda10", c15x, ["learner.distill_weight=10"], init_from="15+5_distill", split="15+1x5",
                 label="distillation, lambda = 10"))
    out.append(E("voc100_10+10", "configs/incdet/voc12-100_10+10.yaml", split="voc100",
                 label="distillation (VOC2012-100, smoke)"))
    return out


EXPERIMENTS: List[Experiment] = _exps()
BY_NAME: Dict[str, Experiment] = {e.name: e for e in EXPERIMENTS}
#: ``run`` order: the 15+5 table first (the main result), joint training and VOC last
RUN_ORDER: List[str] = ([e.name for e in EXPERIMENTS if e.split == "15+5"] +
                        [e.name for e in EXPERIMENTS if e.split == "15+1x5"] +
                        [e.name for e in EXPERIMENTS if e.split == "10+10"] + ["joint", "voc100_10+10"])


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


def _mean(xs: List[float]) -> float:
    xs = [x for x in xs if x is not None and x == x]
    return float(np.mean(xs)) if xs else float("nan")


def class_aps(metrics: dict) -> Dict[str, float]:
    """``{class: AP}`` from an ``evaluate`` dict (``AP/<class>`` entries; null = NaN)."""
    return {k[3:]: (float("nan") if v is None else float(v)) for k, v in metrics.items() if k.startswith("AP/")}


def old_new_all(aps: Dict[str, float], old: Sequence[str], new: Sequence[str]) -> Dict[str, float]:
    """Means of per-class AP over ``old``, ``new`` and both (a class without AP counts as missing)."""
    return {"old": _mean([aps.get(c) for c in old]), "new": _mean([aps.get(c) for c in new]),
            "all": _mean([aps.get(c) for c in list(old) + list(new)])}


def _load(run: Path) -> Optional[dict]:
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


def _f(x) -> str:
    return "-" if x is None or x != x else f"{x:.1f}"


def split_table(split: str, out: Path) -> Optional[str]:
    rows = [e for e in EXPERIMENTS if e.split == split]
    base = _load(out / rows[0].name)
    if base is None:
        return None
    groups = _task_classes(base)
    old = groups[0]
    new = [c for g in groups[1:] for c in g]
    a_aps = class_aps(base["all_metrics"][0][0])
    lines = [f"| method | old ({len(old)} classes) | new ({len(new)}) | all ({len(old) + len(new)}) | wall time |",
             "|---|---:|---:|---:|---:|"]
    lines.append(f"| A({len(old)} old classes) | {_f(_mean([a_aps.get(c) for c in old]))} | - | - | (in the next row) |")
    for e in rows:
        d = _load(out / e.name)
        if d is None or not d["matrix"] or d["matrix"][-1][-1] is None:
            lines.append(f"| +B {e.label} | not run | | | |")
            continue
        last = d["all_metrics"][-1][-1]
        s = old_new_all(class_aps(last), old, new)
        lines.append(f"| +B {e.label} | {_f(s['old'])} | {_f(s['new'])} | {_f(s['all'])} | "
                     f"{_wt(d)} |")
    j = _load(out / "joint")
    if j is not None and j["matrix"] and j["matrix"][-1][-1] is not None:
        s = old_new_all(class_aps(j["all_metrics"][-1][-1]), old, new)
        lines.append(f"| joint training A(1-20) | {_f(s['old'])} | {_f(s['new'])} | {_f(s['all'])} | "
                     f"{_wt(j)} |")
    return "\n".join(lines)


def steps_table(name: str, out: Path) -> Optional[str]:
    """Thesis table 3.9: after each step, mAP on the first task's classes, AP of the class added
    by each step, and the mAP of all classes seen so far."""
    d = _load(out / name)
    if d is None:
        return None
    groups = _task_classes(d)
    old = groups[0]
    added = [c for g in groups[1:] for c in g]
    head = "| after | old (1-%d) | " % len(old) + " | ".join(added) + " | all seen |"
    lines = [head, "|---" * (len(added) + 3) + "|"]
    for i, t in enumerate(d["tasks"]):
        m = d["all_metrics"][i][i] if d["all_metrics"][i][i] else None
        if m is None:
            continue
        aps = class_aps(m)
        cells = [_f(aps.get(c)) if c in aps else "" for c in added]
        seen = old + [c for g in groups[1:i + 1] for c in g]
        lines.append(f"| {t} | {_f(_mean([aps.get(c) for c in old]))} | " + " | ".join(cells) +
                     f" | {_f(_mean([aps.get(c) for c in seen]))} |")
    return "\n".join(lines)


def commands_block(split: str, out: Path) -> str:
    cmds = [shlex.join(command_of(e, out)) for e in EXPERIMENTS if e.split in (split,)]
    return "```\n" + "\n".join(cmds) + "\n```"


def write_markdown(out: Path, md: Path, extra_notes: str = "", notes_path: str = "") -> str:
    notes_arg = f" --notes {notes_path}" if notes_path else ""
    parts = ["# incdet on shapes-voc: class-incremental Fast R-CNN (thesis chapter 3)", "",
             "Produced by `python tools/incdet_experiments.py run --out runs/incdet_exp` "
             "(trains every run below, one after another; resumable), or on a GPU machine by "
             "`bash tools/gpu_experiments.sh runs` (the same runs, several at once), and "
             f"`python tools/incdet_experiments.py table --out runs/incdet_exp{notes_arg}` (writes this "
             "file). Each run is exactly the `incdet train` command listed under its table.", ""]
    walls = [(_load(out / e.name) or {}).get("_wall", {}) for e in EXPERIMENTS]
    secs = sum(w.get("seconds", 0) for w in walls)
    cpu = next((w.get("cpu") for w in walls if w.get("cpu")), cpu_name())
    thr = next((w.get("threads") for w in walls if w.get("threads")), None)
    gpu = next((w.get("gpu") for w in walls if w.get("gpu")), None)
    mixed = gpu and any(w.get("seconds") is not None and not w.get("gpu") for w in walls)
    where = (f"{gpu} (several runs sharing it at once, see tools/gpu_experiments.sh), host CPU {cpu}"
             + ("; the runs marked CPU in the tables ran on the CPU alone" if mixed else "")
             if gpu else f"{cpu}, CPU only")
    parts += [f"Hardware: {where}, {thr} torch thread(s) per run; total training + evaluation "
              f"wall time {secs / 60:.0f} min.", "",
              "mAP: mean of per-class VOC all-point AP (%) on the full shapes-voc test split "
              "(250 images); old = classes of the first task, new = classes added afterwards, "
              "all = both. Joint training A(1-20) is one model trained on all classes at once, split "
              "the same way.", ""]
    titles = {"15+5": "## 15+5: classes 16-20 added at once (table 3.3 analogue)",
              "10+10": "## 10+10: classes 11-20 added at once (table 3.2 analogue)",
              "15+1x5": "## 15+1x5: classes 16, 17, ..., 20 added one at a time (tables 3.3 and 3.9 analogue)"}
    for split in ("15+5", "10+10", "15+1x5"):
        t = split_table(split, out)
        parts += [titles[split], ""]
        if t is None:
            parts += ["Not run yet.", ""]
            continue
        parts += [t, "", "Commands:", "", commands_block(split, out), ""]
        if split == "15+1x5":
            for e in EXPERIMENTS:
                if e.split == "15+1x5":
                    st = steps_table(e.name, out)
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
                  "Command: `" + shlex.join(command_of(BY_NAME["voc100_10+10"], out)) + "`", ""]
    else:
        parts += ["Not run yet.", ""]
    return save_markdown(md, parts, extra_notes)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="incdet_experiments", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train the experiments that are not finished yet")
    r.add_argument("--out", default="runs/incdet_exp")
    r.add_argument("--only", nargs="*", default=[], choices=sorted(BY_NAME), metavar="NAME")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--device", default="auto")
    t = sub.add_parser("table", help="write docs/results/incdet.md from finished runs")
    t.add_argument("--out", default="runs/incdet_exp")
    t.add_argument("--md", default=str(ROOT / "docs" / "results" / "incdet.md"))
    t.add_argument("--notes", default=None, help="a markdown file appended to the tables")
    sub.add_parser("list", help="list the experiments and their commands")
    a = p.parse_args(argv)
    if a.cmd == "list":
        for e in EXPERIMENTS:
            print(f"{e.name:18s} {shlex.join(command_of(e, Path('runs/incdet_exp')))}")
        return 0
    if a.cmd == "run":
        return run(a.only, Path(a.out), a.threads, a.device)
    notes = Path(a.notes).read_text() if a.notes else ""
    print(write_markdown(Path(a.out), Path(a.md), notes, a.notes or ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
