"""The learner protocol and a base class with sensible defaults.

The driver (:mod:`incdet.engine.trainer`) calls, for each task ``t`` of the sequence::

    learner.begin_task(task)                 # grow heads, snapshot the teacher
    ds = learner.train_dataset(task)         # items already transformed for training
    loader = DataLoader(ds, sampler=<seeded by (seed, task, epoch)>, collate_fn=learner.collate)
    for batch in loader:                     # learner.model is wrapped in DDP when distributed
        losses = learner.training_step(batch)   # dict of named scalar losses incl. "loss"
        losses["loss"].backward(); optimizer.step()
    summary = learner.task_summary(task)     # recorded in results.json ("task_summaries")
    learner.end_task(task)
    for j <= t: R[t][j] = learner.evaluate(tasks[j])[primary_metric]   # rank 0 only
                                             # (every j with eval.future_tasks)

Resuming: ``learner.load_state_dict(state)`` must restore the learner exactly as it was when
``state_dict()`` was taken, *structure included* (heads grown to the seen classes, the teacher),
on a freshly constructed learner. When the driver resumes in the middle of task ``t`` it then
calls ``learner.resume_task(task)`` instead of ``begin_task`` (``begin_task`` would snapshot a
teacher from half-trained weights).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import default_collate

from incdet.engine.task import Task


class Learner:
    """Base class for learners; subclass and implement ``training_step`` and ``evaluate``.

    Attributes:
        Config: the learner's config dataclass (class attribute); the driver builds it from the
            ``learner:`` section and constructs ``cls(config, device)``.
        metrics: metric name -> higher_is_better, for every metric ``evaluate`` returns that can
            fill the results matrix.
        primary_metric: the metric put in the results matrix by default.
        eval_keys: names of the ``Config`` options that ``evaluate`` depends on (besides the
            weights and the task), e.g. a rate-distortion weight that enters the metric; the
            driver copies the results rows of another run's tasks (``tasks.init_from``) only
            when these options are equal (``eval.init_rows``). None (default): every option
            counts; ``()``: none does.
        model: the trainable ``nn.Module`` (the driver wraps it in DDP while training when
            distributed: use :attr:`unwrapped` for attribute access, ``self.model(...)`` for the
            forward pass so that gradients are synchronised).
        teacher: frozen copy of the model (``make_teacher()``), or None; never a submodule of
            ``model`` and never under DDP.
        task: the current task (set by ``begin_task`` / ``resume_task``).
    """

    Config: Any = None
    metrics: Dict[str, bool] = {}
    primary_metric: str = ""
    eval_keys: Optional[Sequence[str]] = None

    def __init__(self, config: Any, device: torch.device):
        self.config = config
        self.device = torch.device(device)
        self.model: Optional[nn.Module] = None
        self.teacher: Optional[nn.Module] = None
        self.task: Optional[Task] = None

    # -- model access ----------------------------------------------------------------
    @property
    def unwrapped(self) -> nn.Module:
        """``model`` without a DDP wrapper."""
        m = self.model
        return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m

    def make_teacher(self) -> nn.Module:
        """``deepcopy(model).eval().requires_grad_(False)`` (not registered anywhere)."""
        return copy.deepcopy(self.unwrapped).eval().requires_grad_(False)

    # -- task hooks -------------------------------------------------------------------
    def begin_task(self, task: Task) -> None:
        """Prepare for ``task`` (grow heads to ``task.n_seen`` outputs, snapshot the teacher)."""
        self.task = task

    def resume_task(self, task: Task) -> None:
        """Called instead of ``begin_task`` when a run resumes inside ``task`` after
        ``load_state_dict``; must not change weights."""
        self.task = task

    def end_task(self, task: Task) -> None:
        """Called after the last training step of ``task`` (before evaluation)."""

    def init_from_task_end(self, task: Task) -> None:
        """Called after ``load_state_dict`` when a run starts from another run's task-end
        checkpoint of ``task`` (``tasks.init_from``): redo end-of-task work that this run's
        config needs and the other run's did not do (e.g. EWC's Fisher information when only
        this run uses EWC). Must not change weights. Default: nothing."""

    def task_summary(self, task: Task) -> Optional[Dict[str, Any]]:
        """Facts about the task just trained, recorded per task in ``results.json``
        (``task_summaries[t]``; JSON numbers, strings, booleans). Called after the last training
        step of ``task``, before ``end_task``. Default: the parameter counts of ``model``
        (``params``, ``trainable_params``: those requiring grad, ``trainable_fraction``);
        None when there is no model."""
        m = self.unwrapped
        if m is None:
            return None
        total = sum(p.numel() for p in m.parameters())
        trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
        return {"params": total, "trainable_params": trainable,
                "trainable_fraction": trainable / total if total else 0.0}

    # -- data ---------------------------------------------------------------------------
    def train_dataset(self, task: Task):
        """Map-style dataset of training items for ``task`` (default: ``task.train_set``)."""
        return task.train_set

    def collate(self, items: List[Any]) -> Any:
        """Batch a list of items (default: ``torch.utils.data.default_collate``)."""
        return default_collate(items)

    # -- training -----------------------------------------------------------------------
    def training_step(self, batch: Any) -> Dict[str, torch.Tensor]:
        """Forward one batch; return named scalar losses including the total ``"loss"``."""
        raise NotImplementedError

    def parameter_groups(self) -> List[dict]:
        """Optimizer parameter groups. Each dict has ``params`` and may have ``lr_mult``
        (multiplies the schedule's lr) and ``weight_decay`` (overrides ``train.weight_decay``).
        Default: all parameters of ``model`` that require grad."""
        return [{"params": [p for p in self.unwrapped.parameters() if p.requires_grad]}]

    # -- evaluation -----------------------------------------------------------------------
    def evaluate(self, task: Task) -> Dict[str, float]:
        """Metrics of the current weights on ``task.eval_set``."""
        raise NotImplementedError

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Tensors and builtins only. Default: model and teacher state dicts."""
        return {
            "model": self.unwrapped.state_dict(),
            "teacher": None if self.teacher is None else self.teacher.state_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore ``state_dict()``; the default assumes the model structure never changes."""
        self.unwrapped.load_state_dict(state["model"])
        if state.get("teacher") is not None:
            self.teacher = self.make_teacher()
            self.teacher.load_state_dict(state["teacher"])
        else:
            self.teacher = None
