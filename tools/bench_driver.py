"""Driver overhead: time per training step of the driver vs a bare PyTorch loop.

Both run the same toy learner (MLP, ``training_step``) from the same initial weights over the
same batches in the same order with the same SGD optimizer, so they compute the same numbers
(the table's last column checks that the final weights are equal). The driver adds its seeded resumable sampler, the per-step LR schedule, the
non-finite check (one ``.tolist()`` of the loss terms), loss bookkeeping and JSON-lines logging
every ``log_every`` steps. Checkpoints and evaluation are excluded (``checkpoint_every: 0``;
the task-end work is not timed). Runs alternate (bare first, then driver first, ...).

Two per-step times are reported, each the median over repeats: the median interval between
successive ``training_step`` calls (robust to other processes preempting this one on a shared
machine) and the mean (wall time / steps). The targets (overhead <= 5 % on ``small``, <= 1 % on
``medium``) are judged on the first; the range of the per-round overheads and the machine's load
average are printed beside it (on a loaded machine one round can differ from the next by 10 %).

    python tools/bench_driver.py [--steps 400] [--repeats 5] [--sizes small,medium] [--device auto] [--json out.json]

``small`` (~0.5 ms/step on one CPU thread) shows the fixed per-step cost; ``medium`` (~5 ms)
is closer to a real learner's step.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from incdet.engine.config import config_from_dict
from incdet.engine.distributed import resolve_device
from incdet.engine.toy import ToyLearner, build_toy_tasks
from incdet.engine.trainer import Trainer, mix_seed


def make_cfg(a, out: str):
    return config_from_dict({
        "experiment": {"name": "bench", "seed": 0, "out": out, "device": a.device},
        "tasks": {"builder": "toy", "n_tasks": 1, "classes_per_task": 10, "dim": a.dim,
                  "train_per_class": 2000, "eval_per_class": 10},
        "learner": {"name": "toy", "dim": a.dim, "hidden": a.hidden, "depth": a.depth},
        "train": {"iterations": a.steps, "batch_size": a.batch_size, "lr": 0.01, "momentum": 0.9,
                  "checkpoint_every": 0, "log_every": 20, "amp": "none"},
    }, source="bench")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


STAMPS: list = []
_orig_step = ToyLearner.training_step


def _stamped_step(self, batch):
    """training_step that records when it was called (same cost in both loops)."""
    STAMPS.append(time.perf_counter())
    return _orig_step(self, batch)


def median_interval() -> float:
    """Median time between successive training_step calls: robust to other processes
    preempting this one on a shared machine (the mean is not)."""
    d = [y - x for x, y in zip(STAMPS, STAMPS[1:])]
    return statistics.median(d)


def run_driver(a, device):
    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(make_cfg(a, d), Path(d) / "run", device=str(device), quiet=True)
        STAMPS.clear()
        tr.fit()
        t = tr.timings[0]
        return t["seconds"] / t["steps"], median_interval(), tr.learner.model.state_dict()


def run_bare(a, device):
    """The same work in a plain loop: same init, same batch order (so the same numbers)."""
    cfg = make_cfg(a, "/nonexistent")
    torch.manual_seed(0)
    (task,) = build_toy_tasks(cfg.tasks.options)
    learner = ToyLearner(cfg.learner.options, device)
    torch.manual_seed(mix_seed(0, 0) % 2**32)
    learner.begin_task(task)
    model = learner.model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    n = len(task.train_set)
    STAMPS.clear()
    sync(device)
    t0 = time.perf_counter()
    step, epoch = 0, 0
    while step < a.steps:
        g = torch.Generator()
        g.manual_seed(mix_seed(0, 0, epoch))
        order = torch.randperm(n, generator=g).tolist()
        for batch in DataLoader(task.train_set, batch_size=a.batch_size, sampler=order, drop_last=True):
            if step >= a.steps:
                break
            loss = learner.training_step(batch)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        epoch += 1
    sync(device)
    return (time.perf_counter() - t0) / a.steps, median_interval(), model.state_dict()


SIZES = {  # name: (dim, hidden, depth, batch_size)
    "small": (64, 128, 1, 32),
    "medium": (64, 512, 3, 128),
}


def measure(a, device):
    ToyLearner.training_step = _stamped_step
    try:
        run_bare(a, device)  # warm-up
        res = {"bare": [], "driver": []}
        for r in range(a.repeats):  # alternate which one goes first
            order = ("driver", "bare") if r % 2 else ("bare", "driver")
            for name in order:
                res[name].append((run_bare if name == "bare" else run_driver)(a, device))
    finally:
        ToyLearner.training_step = _orig_step
    wb, wd = res["bare"][-1][2], res["driver"][-1][2]
    same = all(torch.equal(wb[k], wd[k]) for k in wb)
    out = {"model": {"dim": a.dim, "hidden": a.hidden, "depth": a.depth}, "batch_size": a.batch_size,
           "same_final_weights": same}
    for name in ("bare", "driver"):
        out[f"{name}_mean_s_per_step"] = [x[0] for x in res[name]]
        out[f"{name}_median_interval_s"] = [x[1] for x in res[name]]
        out[f"{name}_mean_ms"] = 1e3 * statistics.median(out[f"{name}_mean_s_per_step"])
        out[f"{name}_median_ms"] = 1e3 * statistics.median(out[f"{name}_median_interval_s"])
    # per round (a bare run and a driver run next to each other): the spread of the overhead
    pairs = sorted(100.0 * (d[1] / b[1] - 1) for b, d in zip(res["bare"], res["driver"]))
    out["overhead_percent_per_round"] = pairs
    out["overhead_percent_mean"] = 100.0 * (out["driver_mean_ms"] / out["bare_mean_ms"] - 1)
    out["overhead_percent"] = 100.0 * (out["driver_median_ms"] / out["bare_median_ms"] - 1)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sizes", default="small,medium", help=f"comma-separated, from {', '.join(SIZES)}")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    device = resolve_device(a.device)
    a.device = str(device)
    out = {"device": str(device), "torch_threads": torch.get_num_threads(), "steps": a.steps, "repeats": a.repeats,
           "target_percent": {"small": 5.0, "medium": 1.0}, "cpus": os.cpu_count(), "results": {}}
    for name in a.sizes.split(","):
        a.dim, a.hidden, a.depth, a.batch_size = SIZES[name]
        l0 = os.getloadavg()[0]
        out["results"][name] = measure(a, device)
        out["results"][name]["load_average_1min"] = [l0, os.getloadavg()[0]]
    print(f"toy learner, {a.steps} steps x {a.repeats} repeats (alternating), device {device}, "
          f"torch threads {torch.get_num_threads()}")
    print("ms/step: 'median' = median interval between steps (robust to preemption), 'mean' = wall time / steps;"
          " each the median over repeats")
    print(f"{'size':<7} {'model':<11} {'batch':>5} {'bare med':>9} {'drv med':>8} {'overhead':>9} "
          f"{'bare mean':>9} {'drv mean':>8} {'overhead':>9}  {'target':<6} same weights  per-round range  load")
    for name, r in out["results"].items():
        m = r["model"]
        ok = "OK" if r["overhead_percent"] <= out["target_percent"].get(name, 5.0) else "ABOVE"
        print(f"{name:<7} {m['dim']}-{m['hidden']}x{m['depth']:<4} {r['batch_size']:>5} {r['bare_median_ms']:>9.3f} "
              f"{r['driver_median_ms']:>8.3f} {r['overhead_percent']:>+8.2f}% {r['bare_mean_ms']:>9.3f} "
              f"{r['driver_mean_ms']:>8.3f} {r['overhead_percent_mean']:>+8.2f}%  {ok:<6} {str(r['same_final_weights']):<12}  "
              f"{r['overhead_percent_per_round'][0]:+.1f}..{r['overhead_percent_per_round'][-1]:+.1f}%  "
              f"{r['load_average_1min'][0]:.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
