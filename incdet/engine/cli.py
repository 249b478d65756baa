"""The CLI runner and the verbs ``train``, ``eval``, ``report`` that every family's CLI shares.

:func:`run_cli` builds a parser from ``register(subparsers)`` functions and turns
:class:`~incdet.errors.IncdetError` into one line on stderr and exit status 2. :func:`register`
adds the driver's verbs (any registered learner, found by name: :mod:`incdet.engine.plugins`).

    incdet train CONFIG [--set k=v ...] [--out RUN_DIR] [--device auto|cpu|cuda] [--quiet]
    incdet train --resume RUN_DIR [--device ...]
    incdet eval RUN_DIR [--checkpoint PATH]       # re-evaluate saved weights on the seen tasks
                                                  # (all tasks with eval.future_tasks)
    incdet report RUN_DIR                         # print R and the summary, write csv/md/png

Multi-process: ``torchrun --nproc_per_node N -m incdet train CONFIG ...``.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from incdet.errors import CheckpointError, ConfigError, IncdetError

log = logging.getLogger("incdet.engine")


def run_cli(prog: str, description: str, registrars: Iterable[Callable], argv: Optional[Sequence[str]] = None) -> int:
    """Build a parser from ``registrars``, run the chosen command, turn user errors into exit 2
    (the message on one line: ``PROG: error: MESSAGE``)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for reg in registrars:
        reg(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        rc = args.func(args)
    except IncdetError as e:  # one line, whatever the message (e.g. torch's load_state_dict errors)
        msg = re.sub(r"\s*\n\s*", " ", str(e).strip())
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


def register(sub) -> None:
    """Add ``train``/``eval``/``report`` to an argparse subparsers object."""
    p = sub.add_parser("train", help="train a learner on a task sequence (or --resume a run)")
    p.add_argument("config", nargs="?", help="run config YAML (configs/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=0.01 (repeatable)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default: experiment.out/experiment.name)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: experiment.device)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (automatic when not a TTY or CI is set)")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="evaluate a run's saved weights on every task seen so far")
    p.add_argument("run_dir")
    p.add_argument("--checkpoint", help="checkpoint file (default: RUN_DIR/checkpoint.pt)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_eval)

    p = sub.add_parser("report", help="print a run's results matrix and summary; write csv/md/png")
    p.add_argument("run_dir")
    p.set_defaults(func=_report)


def _train(args) -> int:
    from incdet.engine.trainer import run_training

    if args.resume is None and args.config is None:
        raise ConfigError("train: give a CONFIG file or --resume RUN_DIR")
    if args.resume is not None and args.config is not None:
        raise ConfigError("train: give either CONFIG or --resume RUN_DIR, not both")
    results = run_training(args.config, args.overrides, run_dir=args.out, device=args.device,
                           resume_dir=args.resume, quiet=args.quiet)
    from incdet.engine import distributed as D

    if D.rank() == 0 and not args.quiet:
        print(results.to_markdown())
    return 0


def _eval(args) -> int:
    import torch

    from incdet.engine import LEARNERS
    from incdet.engine.builders import build_tasks
    from incdet.engine.checkpoint import check_learner, load_checkpoint
    from incdet.engine.config import config_from_dict, load_yaml
    from incdet.engine.distributed import resolve_device

    run = Path(args.run_dir)
    cpath = run / "config.yaml"
    if not cpath.is_file():
        raise CheckpointError(f"{run}: not a run directory (no config.yaml)")
    cfg = config_from_dict(load_yaml(cpath), source=str(cpath))
    ckpt_path = Path(args.checkpoint) if args.checkpoint else run / "checkpoint.pt"
    device = resolve_device(args.device or cfg.experiment.device, "--device" if args.device else "experiment.device")
    ckpt = load_checkpoint(ckpt_path)
    check_learner(ckpt, cfg.learner.name, ckpt_path)
    tasks = build_tasks(cfg)
    k = ckpt["task_index"]
    if k >= len(tasks) or ckpt["task_names"][: k + 1] != [t.name for t in tasks[: k + 1]]:
        raise CheckpointError(f"{ckpt_path}: its tasks {ckpt['task_names'][: k + 1]} do not match the "
                              f"run's tasks {[t.name for t in tasks]}")
    learner = LEARNERS.get(cfg.learner.name)(cfg.learner.options, device)
    try:
        learner.load_state_dict(ckpt["learner"])
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{ckpt_path}: cannot load the learner state into learner "
                              f"{cfg.learner.name!r} of {cpath}: {e}") from None
    learner.resume_task(tasks[k])
    out = {"checkpoint": str(ckpt_path), "task_index": k, "phase": ckpt["phase"], "step": ckpt["step"], "tasks": []}
    for j in range(len(tasks) if cfg.eval.future_tasks else k + 1):
        with torch.no_grad():
            m = {key: float(v) for key, v in learner.evaluate(tasks[j]).items()}
        out["tasks"].append({"task": j, "name": tasks[j].name, **m})
        print(f"task {j} ({tasks[j].name}): " + ", ".join(f"{key}={v:.4g}" for key, v in m.items()))
    (run / "eval.json").write_text(json.dumps(out, indent=2))
    return 0


def _report(args) -> int:
    from incdet.engine.results import load_results

    run = Path(args.run_dir)
    res = load_results(run)
    res.write(run)
    print(res.to_markdown())
    s = res.summary()
    print(json.dumps({k: s[k] for k in s if k != "average_accuracy_per_task"}, indent=None, default=str))
    print(f"wrote {run}/results.csv, results.md, results.png")
    return 0
