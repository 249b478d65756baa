"""Helpers shared by the experiment tools in ``tools/`` (not part of the package)."""
from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux); ``platform``'s guess elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_finished(run: Path) -> bool:
    """Whether ``run/results.json`` holds every task's final evaluation (the matrix's last cell)."""
    import json

    p = Path(run) / "results.json"
    if not p.is_file():
        return False
    d = json.loads(p.read_text())
    m = d.get("matrix") or []
    return bool(m) and len(m) == len(d.get("tasks") or []) and m[-1][-1] is not None


@dataclass
class QueuedRun:
    """One run of an experiment queue: ``train`` is called with ``config`` and ``overrides``
    (fresh) or resumes ``out/name``; ``command`` is the equivalent CLI command (recorded);
    ``needs`` a file (an ``init_from`` checkpoint) without which the run waits for a later call."""

    name: str
    config: Path
    overrides: List[str]
    command: List[str]
    needs: Optional[Path] = None


def run_queue(runs: Sequence[QueuedRun], out: Path, train: Callable[..., Any], *, tag: str, threads: int,
              device: str, extra_wall: Optional[Dict[str, Any]] = None) -> int:
    """Train ``runs`` in order under ``out``, one after another; returns 1 if one failed, 2 for
    a ``device`` that :func:`incdet.engine.distributed.resolve_device` refuses (nothing runs), else 0.

    For each run: skipped when ``out/NAME`` is finished (:func:`run_finished`); skipped (it waits
    for another call) while its ``needs`` file is missing or its config does not exist; resumed
    (``train(config, resume_dir=..., quiet=True, device=...)``) when ``out/NAME`` holds a
    ``checkpoint.pt`` and ``config.yaml``, else started (``train(config, overrides=...,
    run_dir=..., quiet=True, device=...)``, the signature of
    :func:`incdet.engine.trainer.run_training`). After a run, ``command.txt`` (the shell command)
    and ``wall.json`` (seconds, summed over resumed parts; threads; resolved device; CPU; GPU;
    torch; ``resumed``; plus ``extra_wall``) are written into its folder. An exception in one run
    is printed and the queue goes on; the failed runs are listed at the end. Lines are prefixed
    with ``[tag]``.
    """
    import json
    import shlex
    import time

    import torch

    from incdet.engine.distributed import resolve_device
    from incdet.errors import IncdetError

    try:  # a bad --device is one line before anything runs, not a failure of every run
        resolve_device(device)
    except IncdetError as e:
        import sys

        print(f"[{tag}] error: {e}", file=sys.stderr, flush=True)
        return 2
    torch.set_num_threads(threads)
    failed = []
    out.mkdir(parents=True, exist_ok=True)
    for r in runs:
        rd = out / r.name
        if run_finished(rd):
            print(f"[{tag}] {r.name}: finished, skipped", flush=True)
            continue
        if r.needs is not None and not Path(r.needs).is_file():
            print(f"[{tag}] {r.name}: needs {r.needs} first, skipped", flush=True)
            continue
        if not Path(r.config).is_file():
            print(f"[{tag}] {r.name}: {r.config} missing, skipped", flush=True)
            continue
        print(f"[{tag}] {r.name}: {shlex.join(r.command)}", flush=True)
        resume = (rd / "checkpoint.pt").is_file() and (rd / "config.yaml").is_file()
        prev = json.loads((rd / "wall.json").read_text()).get("seconds", 0.0) if (rd / "wall.json").is_file() else 0.0
        t0 = time.perf_counter()
        try:
            if resume:
                train(r.config, resume_dir=rd, quiet=True, device=device)
            else:
                train(r.config, overrides=list(r.overrides), run_dir=rd, quiet=True, device=device)
        except Exception as exc:  # one failed run must not stop the others; reported at the end
            print(f"[{tag}] {r.name}: FAILED: {type(exc).__name__}: {exc}", flush=True)
            failed.append(r.name)
            continue
        dt = time.perf_counter() - t0 + (prev if resume else 0.0)
        dev = resolve_device(device)
        cuda = dev.type == "cuda"
        rd.mkdir(parents=True, exist_ok=True)
        (rd / "command.txt").write_text(shlex.join(r.command) + "\n")
        (rd / "wall.json").write_text(json.dumps({
            "seconds": round(dt, 1), "threads": threads,
            "device": dev.type,
            "cpu": cpu_name(), "gpu": torch.cuda.get_device_name() if cuda else None, "resumed": resume,
            "torch": torch.__version__, **(extra_wall or {})}))
        print(f"[{tag}] {r.name}: done in {dt:.0f} s", flush=True)
    if failed:
        print(f"[{tag}] failed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


def hardware_line(cores_note: str = " (shared with other jobs during the runs)",
                  run_note: str = ", one thread per run") -> str:
    """One line for a results doc: CPU, logical cores, torch and Python versions, CPU only."""
    import os

    import torch

    return (f"{cpu_name()}, {os.cpu_count()} logical cores{cores_note}, "
            f"torch {torch.__version__}, Python {platform.python_version()}, CPU only{run_note}")


def fmt_number(v, nd: int = 2, sign: bool = True) -> str:
    """``v`` with ``nd`` decimals (``+`` sign when ``sign``); None / NaN / inf -> ``n/a``."""
    import math

    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:+.{nd}f}" if sign else f"{v:.{nd}f}"


def fmt_pct(x) -> str:
    """A percentage with one decimal; ``-`` when missing (None / NaN)."""
    return "-" if x is None or x != x else f"{x:.1f}"


def mean_std(xs: Sequence[Optional[float]]) -> tuple:
    """(mean, sample standard deviation (ddof 1), n) of the values that are there (None/NaN: absent)."""
    v = [float(x) for x in xs if x is not None and x == x]
    if not v:
        return float("nan"), float("nan"), 0
    m = sum(v) / len(v)
    sd = (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else float("nan")
    return m, sd, len(v)


#: the small files of a finished run that the experiment tools keep in git (docs/results/records/)
RECORD_FILES = ("results.json", "wall.json", "command.txt", "config.yaml")


def keep_records(out: Path, dest: Path, names: Sequence[str]) -> List[str]:
    """Copy :data:`RECORD_FILES` of every finished run ``out/NAME`` (``NAME`` in ``names``) to
    ``dest/NAME`` (atomically, file by file), so a results page can be written again on a
    machine without the runs; returns the names copied."""
    from incdet.engine.checkpoint import write_atomic

    done = []
    for name in names:
        if not run_finished(out / name):
            continue
        (dest / name).mkdir(parents=True, exist_ok=True)
        for f in RECORD_FILES:
            src = out / name / f
            if src.is_file():
                data = src.read_bytes()
                write_atomic(dest / name / f, lambda fh, data=data: fh.write(data), binary=True)
        done.append(name)
    return done


def save_json(path: Path, obj) -> None:
    """``obj`` as indented JSON at ``path``, atomically (``incdet.engine.checkpoint.write_atomic``)."""
    from incdet.engine.checkpoint import write_atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: f.write(json.dumps(obj, indent=1)))


def save_markdown(path: Path, parts: Sequence[str], notes: Optional[str] = None) -> str:
    """Join ``parts`` (and ``notes``, if any) into a markdown file at ``path``; return the text."""
    parts = list(parts) + ([notes.strip(), ""] if notes else [])
    text = "\n".join(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def load_run(run: Path):
    """``(raw, cfg, tasks)`` of an incdet / blitznet run directory: its ``config.yaml`` as a
    dict, as the driver's config, and the tasks it builds. ``SystemExit`` naming ``run`` when
    it has no ``config.yaml``."""
    from incdet.engine.builders import build_tasks
    from incdet.engine.config import config_from_dict, load_yaml

    cpath = Path(run) / "config.yaml"
    if not cpath.is_file():
        raise SystemExit(f"{run}: not a run directory (no config.yaml)")
    raw = load_yaml(cpath)
    cfg = config_from_dict(raw, source=str(cpath))
    return raw, cfg, build_tasks(cfg)


def run_checkpoints(run: Path, cfg) -> Dict[int, Path]:
    """Task index -> the checkpoint written after that task: ``run/checkpoints/task<k>.pt``,
    and for task 0 the run's ``tasks.init_from`` checkpoint when it started from another run's
    first task (the run's own ``task0.pt`` wins when both exist). Sorted by task index."""
    out: Dict[int, Path] = {}
    init = getattr(cfg.tasks, "init_from", None)
    if init and Path(init).is_file():
        out[0] = Path(init)
    for p in (Path(run) / "checkpoints").glob("task*.pt"):
        if p.stem[4:].isdigit():
            out[int(p.stem[4:])] = p
    return dict(sorted(out.items()))


def load_learner(cfg, checkpoint: Path, task, device: str = "cpu"):
    """``(learner, checkpoint dict)``: the learner ``cfg`` names, built on ``device``, with the
    state of ``checkpoint`` and resumed at ``task`` (``learner.resume_task``)."""
    from incdet.engine import LEARNERS
    from incdet.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    learner = LEARNERS.get(cfg.learner.name)(cfg.learner.options, device)
    learner.load_state_dict(ckpt["learner"])
    learner.resume_task(task)
    return learner, ckpt
