"""The task-incremental training loop.

For each task ``t``: ``begin_task`` -> a fixed number of optimizer steps over
``learner.train_dataset(task)`` -> ``task_summary`` -> ``end_task`` -> evaluate every task
``j <= t`` (every ``j`` with ``eval.future_tasks``; rank 0) -> ``R[t][j]`` -> task-end
checkpoint. ``tasks.stop_after: N`` trains the first N tasks only; ``tasks.init_from`` starts
after another run's task K (its results rows: ``eval.init_rows``). See
:mod:`incdet.engine.learner` for the learner's side.

Data order is a pure function of ``(seed, task, epoch)`` (:class:`ResumableSampler`), so a run
resumed from a mid-task checkpoint skips exactly the batches already done and, on CPU with
``num_workers: 0``, ends with bitwise the same weights as an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from incdet.engine import distributed as D
from incdet.engine.checkpoint import FORMAT, VERSION, check_learner, load_checkpoint, rng_state, save_atomic, seed_everything, set_rng_state
from incdet.engine.config import RunConfig, TrainConfig, load_yaml, config_from_dict, save_config
from incdet.engine.results import ResultsMatrix
from incdet.engine.task import Task
from incdet.errors import CheckpointError, ConfigError, IncdetError

log = logging.getLogger("incdet.engine")


class NonFiniteLossError(IncdetError):
    """A loss became NaN/inf; the run stopped and the last good checkpoint is kept."""


def mix_seed(seed: int, task: int, epoch: int = 0) -> int:
    """A 63-bit seed that is a pure function of (seed, task, epoch)."""
    return (int(seed) * 1_000_003 + int(task) * 10_007 + int(epoch) * 101 + 12345) % (2**63 - 1)


class ResumableSampler(Sampler[int]):
    """Shuffled indices of one epoch, identical in every run with the same (seed, task, epoch).

    Like ``DistributedSampler``: the permutation is padded to a multiple of ``world`` and rank
    ``r`` takes ``perm[r::world]``, so that with a global batch of ``B`` the union over ranks of
    step ``s``'s batches is ``perm[s*B:(s+1)*B]``, the single-process batch. ``start`` skips
    the first ``start`` indices of this rank (the batches already done before a resume).
    """

    def __init__(self, n: int, seed: int, task: int, epoch: int, rank: int = 0, world: int = 1, start: int = 0):
        self.n, self.seed, self.task, self.epoch = n, seed, task, epoch
        self.rank, self.world, self.start = rank, world, start
        self.per_rank = math.ceil(n / world)

    def indices(self) -> List[int]:
        g = torch.Generator()
        g.manual_seed(mix_seed(self.seed, self.task, self.epoch))
        perm = torch.randperm(self.n, generator=g).tolist()
        total = self.per_rank * self.world
        while len(perm) < total:
            perm += perm[: total - len(perm)]
        return perm[self.rank : total : self.world][self.start :]

    def __iter__(self):
        return iter(self.indices())

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


class _WorkerInit:
    def __call__(self, worker_id: int) -> None:
        s = torch.initial_seed() % (2**32)
        np.random.seed(s)
        import random

        random.seed(s)


def lr_at(step: int, tc: TrainConfig, steps_per_unit: int) -> float:
    """Learning rate for 0-based optimizer step ``step`` of a task: linear warmup over
    ``warmup_iters`` then ``lr * lr_gamma ** (number of lr_steps passed)``; ``lr_steps`` are in
    iterations (``steps_per_unit`` = 1) or epochs (``steps_per_unit`` = batches per epoch)."""
    lr = tc.lr * tc.lr_gamma ** sum(1 for m in tc.lr_steps if step >= m * steps_per_unit)
    if tc.warmup_iters and step < tc.warmup_iters:
        lr *= (step + 1) / tc.warmup_iters
    return lr


def build_optimizer(groups: List[dict], tc: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) / Adam / AdamW over the learner's parameter groups.
    A group's ``lr_mult`` scales the schedule's lr; its ``weight_decay`` overrides the config."""
    gs = []
    for g in groups:
        g = dict(g)
        g["params"] = [p for p in g["params"] if p.requires_grad]
        if not g["params"]:
            continue
        g.setdefault("lr_mult", 1.0)
        g.setdefault("weight_decay", tc.weight_decay)
        g["lr"] = tc.lr * g["lr_mult"]
        gs.append(g)
    if not gs:
        raise ConfigError("the learner has no trainable parameters (parameter_groups() is empty)")
    if tc.optimizer == "sgd":
        if tc.nesterov and tc.momentum <= 0:
            raise ConfigError("train.nesterov needs train.momentum > 0")
        return torch.optim.SGD(gs, lr=tc.lr, momentum=tc.momentum, nesterov=tc.nesterov, weight_decay=tc.weight_decay)
    cls = torch.optim.Adam if tc.optimizer == "adam" else torch.optim.AdamW
    return cls(gs, lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)


def _restore(path, what: str, load, state) -> None:
    """``load(state)``; a state that does not fit -> CheckpointError naming the file and the part."""
    try:
        load(state)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"{path}: cannot restore its {what} state ({type(e).__name__}: {e})") from None


@dataclass
class _Plan:
    """How a task is trained: schedule, data, per-process batch and the loop's size."""

    task: Task
    tc: TrainConfig
    dataset: Any
    n: int                  #: training items
    batch: int              #: per-process batch
    drop_last: bool
    batches_per_epoch: int
    n_iters: int            #: optimizer steps of the task
    unit: int               #: iterations per unit of ``lr_steps`` (1, or batches per epoch)


@dataclass
class _Optim:
    optimizer: torch.optim.Optimizer
    scaler: Optional[Any]   #: GradScaler (fp16 AMP) or None
    params: List[torch.Tensor]
    autocast: Optional[Callable]  #: () -> context manager of the forward pass; None: no AMP


class _Meter:
    """Running means of the losses and the item count since the last log record.

    A step only appends its losses (the cheapest per-step work); they are summed when a record
    is made, or every ``FOLD`` steps so that a long ``log_every`` keeps the memory bounded.
    """

    FOLD = 256

    def __init__(self):
        self.reset(time.perf_counter())

    def reset(self, now: float) -> None:
        self.sums: Dict[str, float] = {}
        self.pending: List[Dict[str, float]] = []
        self.count, self.items, self.t0 = 0, 0, now

    def update(self, losses: Dict[str, float], n_items: int) -> None:
        self.pending.append(losses)
        self.items += n_items
        if len(self.pending) >= self.FOLD:
            self._fold()

    def _fold(self) -> None:
        sums = self.sums
        for losses in self.pending:  # in step order: the same float sums as adding at every step
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
        self.count += len(self.pending)
        self.pending = []

    def averages(self) -> Dict[str, float]:
        self._fold()
        return {k: v / self.count for k, v in self.sums.items()}


class Trainer:
    """Runs a task sequence for one learner, writing everything into ``run_dir``.

    Args:
        cfg: the validated run config.
        run_dir: run directory (created; must be empty unless ``resume``).
        device: ``auto | cpu | cuda | cuda:N`` (default: ``cfg.experiment.device``).
        resume: continue from ``run_dir/checkpoint.pt`` (mid-task or at a task boundary).
        quiet: no progress bar (also when stderr is not a TTY or ``CI`` is set).

    Files in ``run_dir``: ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON object per
    logged step and per evaluation; after a resume, steps redone since the last checkpoint
    appear twice), ``checkpoint.pt`` (latest), ``checkpoints/task{K}.pt`` (after task K: the
    ``tasks.init_from`` of other runs), ``results.{json,csv,md,png}``.
    """

    def __init__(self, cfg: RunConfig, run_dir: Union[str, Path], device: Optional[str] = None,
                 resume: bool = False, quiet: bool = False, config_changed: bool = False):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = D.resolve_device(device or cfg.experiment.device, "--device" if device else "experiment.device")
        self.resume = resume
        self.config_changed = config_changed  # a resumed run with --set overrides: rewrite config.yaml
        self.distributed = D.init(self.device)
        self.main = D.is_main()
        if not self.main:  # rank-0-only logging
            log.setLevel(logging.WARNING)
        self.progress = (not quiet and self.main and sys.stderr.isatty() and not os.environ.get("CI"))
        self.timings: Dict[int, Dict[str, float]] = {}
        self.global_step = 0
        self.last_ckpt = "none written yet"
        self._metrics_file = None
        self._ckpt_path = self.run_dir / "checkpoint.pt"
        self._last_losses = None  #: the last step's loss tensors, let go after the next forward

    # ------------------------------------------------------------------ setup
    def _check_dir(self) -> None:
        """Refuse a run directory that cannot be used, before anything is written."""
        d = self.run_dir
        if d.exists() and not d.is_dir():
            raise ConfigError(f"{d}: exists and is not a directory (--out / experiment.out must name a directory)")
        if not self.resume:
            if d.exists() and any(d.iterdir()):
                raise ConfigError(f"{d}: run directory exists and is not empty; "
                                  f"use --resume {d} to continue it or --out for a new one")
            for p in d.parents:  # the first existing ancestor must be a directory
                if p.exists():
                    if not p.is_dir():
                        raise ConfigError(f"{d}: cannot create the run directory: {p} is not a directory")
                    break
        elif not (d / "config.yaml").is_file():
            raise CheckpointError(f"{d}: not a run directory (no config.yaml)")

    def _prepare_dir(self) -> None:
        D.barrier()
        if self.main:
            try:
                (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"{self.run_dir}: cannot create the run directory: {e.strerror or e}") from None
            if not self.resume or self.config_changed:
                save_config(self.cfg, self.run_dir / "config.yaml")
            for stale in [*self.run_dir.glob(".*.tmp-*"), *(self.run_dir / "checkpoints").glob(".*.tmp-*")]:
                stale.unlink()  # half-written files of a killed run (the real files are intact)
            self._metrics_file = open(self.run_dir / "metrics.jsonl", "a")
        D.barrier()

    def _resume_source(self) -> Optional[Path]:
        """The checkpoint a resumed run continues from: ``checkpoint.pt``; when it is gone, the
        last task-end checkpoint ``checkpoints/taskK.pt`` (the same state as ``checkpoint.pt``
        right after task K; later mid-task progress is redone, with the same result). With
        neither: None (start again) if the run starts from ``tasks.init_from`` (nothing of its
        own was saved yet), else CheckpointError naming the missing file."""
        if self._ckpt_path.is_file():
            return self._ckpt_path
        ends = sorted(((int(p.stem[4:]), p) for p in (self.run_dir / "checkpoints").glob("task*.pt")
                       if p.stem[4:].isdigit()), reverse=True)
        if not ends and self.cfg.tasks.init_from:
            log.warning("%s: no checkpoint of this run yet: starting again from tasks.init_from %s",
                        self.run_dir, self.cfg.tasks.init_from)
            return None
        if not ends:
            raise CheckpointError(f"{self._ckpt_path}: missing, and no task-end checkpoint in "
                                  f"{self.run_dir / 'checkpoints'} either: nothing to resume from "
                                  f"(start a new run with --out)")
        log.warning("%s is missing: resuming from the last task-end checkpoint %s", self._ckpt_path, ends[0][1])
        return ends[0][1]

    def _log_json(self, rec: dict) -> None:
        if self._metrics_file is not None:
            self._metrics_file.write(json.dumps(rec) + "\n")
            self._metrics_file.flush()

    # ------------------------------------------------------------------ main entry
    def fit(self) -> ResultsMatrix:
        try:
            return self._fit()
        finally:
            if self._metrics_file is not None:
                self._metrics_file.close()
                self._metrics_file = None

    def _fit(self) -> ResultsMatrix:
        """Set up (nothing is written until the config, data, learner and start checkpoint are
        known to be usable), then for each task: begin -> train -> end -> evaluate + save."""
        self._check_dir()
        self._setup()
        start_task, start_step, mid = self._load_start()
        self._prepare_dir()
        if self._init_eval is not None and self.main:  # row K of a tasks.init_from run, measured here
            k, cols = self._init_eval
            self.learner.resume_task(self.tasks[k])  # as `eval` does: the learner at the end of task K
            self._evaluate(k, only=cols)
            self.results.write(self.run_dir)
        for t in range(start_task, self.n_train):
            task = self.tasks[t]
            resumed = mid is not None and t == start_task
            self._begin_task(task, resumed)
            self._train_task(task, start_step if resumed else 0, mid if resumed else None)
            summary = getattr(self.learner, "task_summary", None)
            if summary is not None:
                with self._unwrapped():
                    self.results.set_task_summary(t, summary(task))
            self.learner.end_task(task)
            self._finish_task(t)
            D.barrier()
        if start_task >= self.n_train and self.main:
            log.info("all %d tasks to train already done in %s", self.n_train, self.run_dir)
            self.results.write(self.run_dir)
        D.barrier()
        return self.results

    def _setup(self) -> None:
        """Seed, determinism, tasks, learner, results matrix (the metric checked)."""
        from incdet.engine import LEARNERS
        from incdet.engine.builders import build_tasks

        cfg = self.cfg
        if cfg.experiment.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        world = D.world_size()
        for t in {0, 1}:
            b = cfg.train.for_task(t).batch_size
            if b % world:
                raise ConfigError(f"{cfg.source}: train.batch_size {b} is not divisible by the {world} processes")
        seed_everything(cfg.experiment.seed)
        self.tasks = build_tasks(cfg)
        self.learner = LEARNERS.get(cfg.learner.name)(cfg.learner.options, self.device)
        metric = cfg.eval.metric or self.learner.primary_metric
        if metric not in self.learner.metrics:
            raise ConfigError(f"{cfg.source}: eval.metric {metric!r} is not a metric of learner "
                              f"{cfg.learner.name!r}; known: {', '.join(self.learner.metrics)}")
        self.results = ResultsMatrix([t.name for t in self.tasks], metric, self.learner.metrics[metric])
        stop = cfg.tasks.stop_after
        if stop is not None and stop > len(self.tasks):
            raise ConfigError(f"{cfg.source}: tasks.stop_after {stop} is more than the {len(self.tasks)} tasks "
                              f"of the sequence ({', '.join(t.name for t in self.tasks)})")
        self.n_train = len(self.tasks) if stop is None else stop  #: tasks trained by this run
        self._init_eval = None  #: (task K, columns) to evaluate before training (tasks.init_from)

    def _load_start(self):
        """Where the run starts: ``(task, steps already done in it, mid-task checkpoint or None)``.

        ``--resume``: the run's own checkpoint (:meth:`_resume_source`); a fresh run with
        ``tasks.init_from``: another run's task-end checkpoint of the same learner family. The
        learner state and the results so far are loaded here."""
        cfg, learner, names = self.cfg, self.learner, [t.name for t in self.tasks]
        src = self._resume_source() if self.resume else None
        from_init = src is None and bool(cfg.tasks.init_from)
        if from_init:
            src = Path(cfg.tasks.init_from)
            if src.is_dir():
                raise ConfigError(f"{cfg.source}: tasks.init_from must be a checkpoint file "
                                  f"(e.g. {src}/checkpoints/task0.pt), not a directory")
        if src is None:
            return 0, 0, None
        ckpt = load_checkpoint(src)
        if from_init and ckpt["phase"] != "done":
            raise CheckpointError(f"{src}: tasks.init_from needs a task-end checkpoint (checkpoints/taskK.pt)")
        check_learner(ckpt, cfg.learner.name, src, same_family=from_init)
        k = ckpt["task_index"]
        if not isinstance(k, int) or not 0 <= k < len(names) or ckpt["task_names"][: k + 1] != names[: k + 1]:
            raise CheckpointError(f"{src}: its tasks {ckpt['task_names'][: k + 1]} do not match this "
                                  f"config's first tasks {names[: k + 1]}")
        try:
            learner.load_state_dict(ckpt["learner"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{src}: cannot load the learner state into learner "
                                  f"{cfg.learner.name!r} with this config: {e}") from None
        try:
            old = ResultsMatrix.from_dict(ckpt["results"])
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise CheckpointError(f"{src}: damaged checkpoint: its results cannot be read ({type(e).__name__}: {e})") from None
        if from_init:
            rows = self._init_rows(src, ckpt, k)
        else:  # this run's own checkpoint: every row measured so far
            rows = list(range(k + 1))
        for i in rows:
            self._copy_row(old, i)
        for i in range(min(k + 1, len(old.task_summaries))):  # what was trained: kept whatever the rows
            self.results.task_summaries[i] = old.task_summaries[i]
        if from_init and self.cfg.eval.every_task:
            want = range(len(names)) if self.cfg.eval.future_tasks else range(k + 1)
            missing = [j for j in want if not self.results.has(k, j)]
            if missing:
                self._init_eval = (k, missing)
        self.global_step = ckpt["global_step"]
        self.last_ckpt = f"{src} (task {k}, step {ckpt['step']})"
        if from_init:  # another run's task-end state, maybe another config
            learner.init_from_task_end(self.tasks[k])
            start = (k + 1, 0, None)
        elif ckpt["phase"] == "train":
            start = (k, ckpt["step"], ckpt)
        else:
            _restore(src, "rng", set_rng_state, ckpt.get("rng"))
            start = (k + 1, 0, None)
        log.info("%s from %s: task %d (%s), step %d", "starting" if from_init else "resuming",
                 src, start[0], names[min(start[0], len(names) - 1)], start[1])
        return start

    def _copy_row(self, old: ResultsMatrix, i: int) -> None:
        """Row ``i`` of ``old`` into this run's results: the cells of the columns whose task has
        the same name at the same position."""
        if i >= len(old.tasks):
            return
        for j in range(min(len(old.tasks), len(self.tasks))):
            cell = old.all_metrics[i][j] if i < len(old.all_metrics) and j < len(old.all_metrics[i]) else None
            if old.tasks[j] == self.tasks[j].name and isinstance(cell, dict) and self.results.metric in cell:
                self.results.set(i, j, cell)

    def _init_differences(self, ckpt: dict) -> List[str]:
        """What makes the results stored in another run's checkpoint not comparable with this
        run's: ``tasks.KEY`` / ``experiment.seed`` / ``learner.KEY`` values that differ
        (``init_from`` and ``stop_after`` aside; learner options: ``Learner.eval_keys``)."""
        from incdet.engine import TASK_BUILDERS
        import inspect

        old = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
        new = self.cfg.to_dict()
        diffs = []
        skip = {"init_from", "stop_after"}
        ot, nt = old.get("tasks") or {}, new["tasks"]
        for key in sorted((set(ot) | set(nt)) - skip):
            if ot.get(key) != nt.get(key):
                diffs.append(f"tasks.{key} ({ot.get(key)!r} there, {nt.get(key)!r} here)")
        fn = TASK_BUILDERS.get(self.cfg.tasks.builder)
        if "seed" in inspect.signature(fn).parameters:
            os_, ns = (old.get("experiment") or {}).get("seed"), new["experiment"]["seed"]
            if os_ != ns:
                diffs.append(f"experiment.seed ({os_!r} there, {ns!r} here; the task builder takes the seed)")
        ol, nl = old.get("learner") or {}, new["learner"]
        keys = getattr(type(self.learner), "eval_keys", None)
        keys = sorted((set(ol) | set(nl)) - {"name"}) if keys is None else list(keys)
        for key in keys:
            if ol.get(key) != nl.get(key):
                diffs.append(f"learner.{key} ({ol.get(key)!r} there, {nl.get(key)!r} here)")
        return diffs

    def _init_rows(self, src: Path, ckpt: dict, k: int) -> List[int]:
        """Rows of the other run's results kept by a run started from its task-end checkpoint of
        task ``k`` (``eval.init_rows``, see :class:`~incdet.engine.config.EvalConfig`)."""
        mode = self.cfg.eval.init_rows
        diffs = self._init_differences(ckpt)
        if not diffs:
            if mode == "evaluate":
                log.info("tasks.init_from %s: rows 0..%d copied, row %d evaluated again (eval.init_rows=evaluate)",
                         src, k - 1, k)
                return list(range(k))
            log.info("tasks.init_from %s: results rows 0..%d copied from it (measured the same way)", src, k)
            return list(range(k + 1))
        what = "; ".join(diffs)
        if mode == "copy":
            raise ConfigError(f"{self.cfg.source}: eval.init_rows=copy: the results of tasks.init_from {src} were "
                              f"measured differently: {what}. Use eval.init_rows=auto (or evaluate) to measure "
                              f"row {k} again")
        log.warning("tasks.init_from %s: its results were measured differently (%s): row %d is evaluated "
                    "again%s", src, what, k, f", rows 0..{k - 1} are left empty" if k else "")
        return []

    def _begin_task(self, task: Task, resumed: bool) -> None:
        if resumed:
            self.learner.resume_task(task)
        else:
            seed_everything(mix_seed(self.cfg.experiment.seed, task.index) % (2**32))
            self.learner.begin_task(task)

    def _finish_task(self, t: int) -> None:
        """Rank 0: evaluate the seen tasks, save ``checkpoint.pt`` and ``checkpoints/task{t}.pt``,
        write the results files."""
        if not self.main:
            return
        if self.cfg.eval.every_task or t == self.n_train - 1:
            self._evaluate(t)
        self._save(t, self._steps_of_task, "done", None, None)
        save_atomic(self._checkpoint_dict(t, self._steps_of_task, "done", None, None),
                    self.run_dir / "checkpoints" / f"task{t}.pt")
        self.results.write(self.run_dir)

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, t: int, only: Optional[List[int]] = None) -> None:
        """``R[t][j]`` for the tasks seen (``j <= t``), all tasks with ``eval.future_tasks``, or
        the columns ``only``."""
        learner, tasks, results = self.learner, self.tasks, self.results
        cols = only if only is not None else range(len(tasks) if self.cfg.eval.future_tasks else t + 1)
        for j in cols:
            t0 = time.perf_counter()
            with torch.no_grad():
                m = learner.evaluate(tasks[j])
            m = {k: float(v) for k, v in m.items()}
            if results.metric not in m:
                raise ConfigError(f"{self.cfg.source}: eval.metric {results.metric!r}: learner "
                                  f"{self.cfg.learner.name!r} gave no such value on task {tasks[j].name!r} "
                                  f"(it gave: {', '.join(sorted(m))})")
            results.set(t, j, m)
            self._log_json({"event": "eval", "after_task": t, "task": j, "task_name": tasks[j].name,
                            "seconds": round(time.perf_counter() - t0, 3), **m})
            log.info("after task %d (%s): %s on task %d (%s) = %.4g", t, tasks[t].name, results.metric,
                     j, tasks[j].name, m[results.metric])

    # ------------------------------------------------------------------ checkpoints
    @contextlib.contextmanager
    def _unwrapped(self):
        m = self.learner.model
        wrapped = isinstance(m, torch.nn.parallel.DistributedDataParallel)
        if wrapped:
            self.learner.model = m.module
        try:
            yield
        finally:
            self.learner.model = m

    def _checkpoint_dict(self, t, step, phase, optimizer, scaler) -> dict:
        tc = self.cfg.train.for_task(t)
        with self._unwrapped():
            lstate = self.learner.state_dict()
        return {
            "format": FORMAT, "version": VERSION,
            "learner_name": self.cfg.learner.name,
            "task_index": t, "step": step, "phase": phase, "global_step": self.global_step,
            "task_names": [x.name for x in self.tasks],
            "learner": lstate,
            "optimizer": None if optimizer is None else optimizer.state_dict(),
            "scheduler": {"kind": "step", "lr": tc.lr, "lr_steps": list(tc.lr_steps), "lr_gamma": tc.lr_gamma,
                          "warmup_iters": tc.warmup_iters},
            "scaler": None if scaler is None else scaler.state_dict(),
            "rng": rng_state(),
            "results": self.results.to_dict(),
            "config": self.cfg.to_dict(),
        }

    def _save(self, t, step, phase, optimizer, scaler) -> None:
        save_atomic(self._checkpoint_dict(t, step, phase, optimizer, scaler), self._ckpt_path)
        self.last_ckpt = f"{self._ckpt_path} (task {t}, step {step}, {phase})"

    # ------------------------------------------------------------------ training
    def _plan(self, task: Task) -> _Plan:
        """The schedule and loop size of ``task`` (batches per epoch, iterations, lr-step unit)."""
        tc = self.cfg.train.for_task(task.index)
        world = D.world_size()
        b = tc.batch_size // world
        ds = self.learner.train_dataset(task)
        n = len(ds)
        if n == 0:
            raise ConfigError(f"task {task.index} ({task.name}): the training set is empty")
        per_rank = math.ceil(n / world)
        drop_last = per_rank >= b
        bpe = per_rank // b if drop_last else 1
        n_iters = tc.iterations if tc.iterations is not None else tc.epochs * bpe
        return _Plan(task, tc, ds, n, b, drop_last, bpe, n_iters, 1 if tc.iterations is not None else bpe)

    def _optim(self, tc: TrainConfig, mid: Optional[dict]) -> _Optim:
        """Optimizer, AMP context and grad scaler of a task (state restored from ``mid``)."""
        optimizer = build_optimizer(self.learner.parameter_groups(), tc)
        amp = self.device.type == "cuda" and tc.amp != "none"
        amp_dtype = torch.bfloat16 if tc.amp == "bf16" else torch.float16
        scaler = torch.amp.GradScaler("cuda") if amp and tc.amp == "fp16" else None
        if mid is not None:
            if mid.get("optimizer") is not None:
                _restore(self._ckpt_path, "optimizer", optimizer.load_state_dict, mid["optimizer"])
            if scaler is not None and mid.get("scaler") is not None:
                _restore(self._ckpt_path, "scaler", scaler.load_state_dict, mid["scaler"])
            _restore(self._ckpt_path, "rng", set_rng_state, mid.get("rng"))
        params = [p for g in optimizer.param_groups for p in g["params"]]

        def autocast():
            return torch.autocast(device_type="cuda", dtype=amp_dtype)

        return _Optim(optimizer, scaler, params, autocast if amp else None)

    def _loader(self, plan: _Plan, epoch: int, offset: int) -> DataLoader:
        """The batches of one epoch, skipping the first ``offset`` (already done before a resume)."""
        seed, t, tc = self.cfg.experiment.seed, plan.task.index, plan.tc
        sampler = ResumableSampler(plan.n, seed, t, epoch, D.rank(), D.world_size(), start=offset * plan.batch)
        g = torch.Generator()
        g.manual_seed(mix_seed(seed, t, epoch))
        return DataLoader(plan.dataset, batch_size=plan.batch, sampler=sampler, drop_last=plan.drop_last,
                          collate_fn=self.learner.collate, num_workers=tc.num_workers,
                          pin_memory=self.device.type == "cuda", generator=g,
                          worker_init_fn=_WorkerInit() if tc.num_workers else None)

    def _train_step(self, batch, plan: _Plan, opt: _Optim, step: int) -> Dict[str, float]:
        """One optimizer step: forward, finite check (all ranks agree), backward, clip, step.
        Returns the losses as floats (averaged over processes)."""
        if opt.autocast is None:
            losses = self.learner.training_step(batch)
        else:
            with opt.autocast():
                losses = self.learner.training_step(batch)
        # the previous step's loss tensors (and their autograd nodes) are let go here, after this
        # step's forward, rather than when the last step returned: that reuses memory better
        # (measured: 3.6 us of a 240 us toy step); they are small (backward freed what they saved)
        self._last_losses = losses
        if "loss" not in losses:
            raise KeyError(f"{type(self.learner).__name__}.training_step returned no 'loss' (got {sorted(losses)})")
        loss = losses["loss"]
        if self.distributed or not loss.is_cpu:  # one transfer / collective
            vals = torch.stack([torch.as_tensor(v, device=loss.device).detach().float().reshape(())
                                for v in losses.values()])
            vals = D.all_reduce_mean(vals).tolist()
        else:  # on CPU .item() costs nothing; torch.stack would be the loop's biggest overhead
            vals = [v.item() if isinstance(v, torch.Tensor) else float(v) for v in losses.values()]
        # a sum is finite only when every term is (NaN and inf propagate): one check per step;
        # the terms are checked one by one only when it is not (a finite sum could overflow)
        if not math.isfinite(sum(vals)) and not all(math.isfinite(v) for v in vals):
            terms = ", ".join(f"{k}={v:.6g}" for k, v in zip(losses, vals))
            raise NonFiniteLossError(
                f"non-finite loss at task {plan.task.index} ({plan.task.name}) step {step} (global step "
                f"{self.global_step}): {terms}. Stopped without saving; the last good checkpoint is "
                f"{self.last_ckpt}. Try e.g. --resume {self.run_dir} --set train.lr=... (lower) or "
                f"--set train.grad_clip=...")
        optimizer, scaler, clip = opt.optimizer, opt.scaler, plan.tc.grad_clip
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(opt.params, clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(opt.params, clip)
            optimizer.step()
        return dict(zip(losses, vals))

    def _after_step(self, plan: _Plan, step: int, epoch: int, lr: float, meter: _Meter, bar, opt: _Optim) -> None:
        """The log policy (every ``log_every`` steps and at the last) and the mid-task checkpoint
        policy (every ``checkpoint_every`` steps, rank 0); advances the progress bar."""
        tc, t = plan.tc, plan.task.index
        if bar is not None:
            bar.update(1)
        if step % tc.log_every == 0 or step == plan.n_iters:
            now = time.perf_counter()
            ips = meter.items / max(now - meter.t0, 1e-9)
            rec = {"task": t, "task_name": plan.task.name, "step": step, "global_step": self.global_step,
                   "epoch": epoch, "lr": lr, **meter.averages(), "images_per_s": round(ips, 2),
                   "time": round(time.time(), 3)}
            self._log_json(rec)
            if bar is not None:
                bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{ips:.1f}", refresh=False)
            meter.reset(now)
        if self.main and tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < plan.n_iters:
            self._save(t, step, "train", opt.optimizer, opt.scaler)

    def _train_task(self, task: Task, start_step: int, mid: Optional[dict]) -> None:
        """Optimizer steps ``start_step..n_iters`` of ``task`` (``mid``: the checkpoint resumed from)."""
        plan = self._plan(task)
        self._steps_of_task = plan.n_iters
        if plan.n_iters == 0:
            return
        opt = self._optim(plan.tc, mid)
        learner, tc, t = self.learner, plan.tc, task.index
        if self.distributed:
            learner.model = torch.nn.parallel.DistributedDataParallel(
                learner.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=tc.find_unused_parameters)
        learner.model.train()
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=plan.n_iters, initial=start_step, desc=f"task {t} {task.name}", dynamic_ncols=True)
        log.info("task %d (%s): %d iterations, %d training items, global batch %d, lr %g",
                 t, task.name, plan.n_iters, plan.n, tc.batch_size, tc.lr)

        step = start_step
        epoch, offset = divmod(step, plan.batches_per_epoch)
        meter, t_start = _Meter(), time.perf_counter()
        # per-step work is kept to what a step needs: the world size is fixed, the groups' lr is
        # written when the schedule changes it
        world, groups, lr_set, n_iters = D.world_size(), opt.optimizer.param_groups, None, plan.n_iters
        # items per step (images/s): every batch is full, or (drop_last off: fewer items than one
        # batch) the one batch of an epoch holds this process's share
        step_items = world * (plan.batch if plan.drop_last else math.ceil(plan.n / world))
        lr_next = 0  # the schedule is evaluated at the steps where it can change (warmup, lr_steps)
        changes = sorted({m * plan.unit for m in tc.lr_steps if m * plan.unit > step})
        try:
            while step < plan.n_iters:
                step_before = step
                for batch in self._loader(plan, epoch, offset):
                    if step >= n_iters:
                        break
                    if step >= lr_next:
                        lr = lr_at(step, tc, plan.unit)
                        if lr != lr_set:
                            for grp in groups:
                                grp["lr"] = lr * grp["lr_mult"]
                            lr_set = lr
                        while changes and changes[0] <= step:
                            changes.pop(0)
                        lr_next = step + 1 if step + 1 <= tc.warmup_iters else (changes[0] if changes else plan.n_iters)
                    losses = self._train_step(batch, plan, opt, step)
                    step += 1
                    self.global_step += 1
                    meter.update(losses, step_items)
                    self._after_step(plan, step, epoch, lr, meter, bar, opt)
                if step == step_before:
                    raise ConfigError(f"task {t} ({task.name}): epoch {epoch} produced no batch "
                                      f"({plan.n} items, batch {plan.batch} per process)")
                epoch, offset = epoch + 1, 0
            # the training of this task is safe before end_task/evaluation (which may be long)
            if self.main and tc.checkpoint_every and start_step < plan.n_iters:
                self._save(t, step, "train", opt.optimizer, opt.scaler)
        finally:
            self._last_losses = None
            if bar is not None:
                bar.close()
            if isinstance(learner.model, torch.nn.parallel.DistributedDataParallel):
                learner.model = learner.model.module
        self.timings[t] = {"steps": step - start_step, "seconds": time.perf_counter() - t_start}


def run_training(config: Union[str, Path, RunConfig], overrides=(), run_dir=None, device=None,
                 resume_dir=None, quiet: bool = False) -> ResultsMatrix:
    """Train from a config file (or resume ``resume_dir``); returns the results matrix."""
    from incdet.engine.config import load_config

    if resume_dir is not None:
        resume_dir = Path(resume_dir)
        cpath = resume_dir / "config.yaml"
        if not cpath.is_file():
            raise CheckpointError(f"{resume_dir}: not a run directory (no config.yaml)")
        from incdet.engine.config import apply_overrides

        # --set on a resumed run (e.g. a lower lr after a non-finite loss) rewrites config.yaml;
        # the run is then no longer identical to an uninterrupted one
        cfg = config_from_dict(apply_overrides(load_yaml(cpath), overrides), source=str(cpath))
        if overrides:
            log.warning("resuming %s with changed config: %s", resume_dir, " ".join(overrides))
        trainer = Trainer(cfg, resume_dir, device=device, resume=True, quiet=quiet, config_changed=bool(overrides))
    else:
        cfg = config if isinstance(config, RunConfig) else load_config(config, overrides)
        out = Path(run_dir) if run_dir else Path(cfg.experiment.out) / cfg.experiment.name
        trainer = Trainer(cfg, out, device=device, quiet=quiet)
    try:
        return trainer.fit()
    finally:
        D.cleanup()
