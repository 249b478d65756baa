"""The toy learner: a small MLP classifier on a class-incremental Gaussian-blob stream.

It exercises the whole driver (growing head, optional teacher, resume, DDP) in well under a
second per task on one CPU core, and shows catastrophic forgetting under naive fine-tuning:
after training on the classes of task t only, the single shared output layer predicts the new
classes for everything and the accuracy on earlier tasks collapses.

Task builder ``toy`` (options :class:`ToyTasksConfig`): ``n_tasks`` tasks of
``classes_per_task`` classes; an item is ``(x: float32[dim], y: int64)`` with ``y`` the
0-based position of its class in the class order. Learner ``toy`` (:class:`ToyLearner`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from incdet.engine import LEARNERS
from incdet.engine.builders import task_builder
from incdet.engine.learner import Learner
from incdet.engine.task import Task


# --------------------------------------------------------------------------- data
@dataclass
class ToyTasksConfig:
    n_tasks: int = 3
    classes_per_task: int = 2
    dim: int = 16
    train_per_class: int = 64
    eval_per_class: int = 64
    separation: float = 3.0   #: std of the class means
    spread: float = 1.0       #: std of the points around their mean
    data_seed: int = 0


class BlobDataset(Dataset):
    """``(x, y)`` pairs held in two tensors."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, classes: List[str]):
        self.x, self.y, self.classes = x, y, classes

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


@task_builder("toy", ToyTasksConfig)
def build_toy_tasks(o: ToyTasksConfig) -> List[Task]:
    """Gaussian blobs, ``classes_per_task`` new classes per task (deterministic in ``data_seed``)."""
    from incdet.errors import ConfigError

    if min(o.n_tasks, o.classes_per_task, o.dim, o.train_per_class, o.eval_per_class) < 1:
        raise ConfigError("tasks: n_tasks, classes_per_task, dim, train_per_class, eval_per_class must be >= 1")
    g = torch.Generator().manual_seed(o.data_seed)
    n_cls = o.n_tasks * o.classes_per_task
    means = torch.randn(n_cls, o.dim, generator=g) * o.separation
    names = [f"c{k}" for k in range(n_cls)]

    def sample(labels: List[int], per_class: int) -> BlobDataset:
        y = torch.tensor(labels, dtype=torch.int64).repeat_interleave(per_class)
        x = means[y] + torch.randn(len(y), o.dim, generator=g) * o.spread
        return BlobDataset(x, y, names)

    tasks = []
    for t in range(o.n_tasks):
        labels = list(range(t * o.classes_per_task, (t + 1) * o.classes_per_task))
        tasks.append(Task(index=t, name=f"c{labels[0]}-{labels[-1]}", new_classes=[names[k] for k in labels],
                          seen_classes=names[: labels[-1] + 1], train_set=sample(labels, o.train_per_class),
                          eval_set=sample(labels, o.eval_per_class)))
    return tasks


# --------------------------------------------------------------------------- model
class ToyNet(nn.Module):
    """MLP ``dim -> hidden (x depth) -> n_out``; ``forward(x[B, dim]) -> logits[B, n_out]``."""

    def __init__(self, dim: int, hidden: int, depth: int, n_out: int, dropout: float = 0.0):
        super().__init__()
        layers, d = [], dim
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            d = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def grow(self, n_out: int) -> None:
        """Resize the output layer to ``n_out`` classes, keeping the rows of old classes."""
        old = self.head
        if old.out_features == n_out:
            return
        new = nn.Linear(old.in_features, n_out).to(old.weight.device)
        k = min(n_out, old.out_features)
        with torch.no_grad():
            new.weight[:k] = old.weight[:k]
            new.bias[:k] = old.bias[:k]
        self.head = new


@dataclass
class ToyConfig:
    dim: int = 16            #: must match tasks.dim
    hidden: int = 32
    depth: int = 1
    dropout: float = 0.0
    distill: float = 0.0     #: weight of LwF-style distillation of old outputs from the teacher (0: naive fine-tuning)
    temperature: float = 2.0
    eval_batch_size: int = 256
    step_delay: float = 0.0  #: seconds to sleep in each training step (tests that kill a run mid-task)


@LEARNERS.register("toy")
class ToyLearner(Learner):
    """Class-incremental MLP; one output layer over all seen classes, no task id at test time.

    ``training_step((x[B, dim], y[B]))`` -> ``{"loss", "ce", "kd"}``; ``evaluate(task)`` ->
    ``{"accuracy": % of task.eval_set classified correctly among all seen classes}``.
    """

    Config = ToyConfig
    metrics = {"accuracy": True, "error": False}
    primary_metric = "accuracy"

    def __init__(self, config: ToyConfig, device):
        super().__init__(config, device)
        c = config
        self.model = ToyNet(c.dim, c.hidden, c.depth, 1, c.dropout).to(self.device)
        self.n_seen = 0

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.teacher = self.make_teacher() if (self.config.distill > 0 and task.index > 0) else None
        self.unwrapped.grow(task.n_seen)
        self.n_seen = task.n_seen

    def training_step(self, batch) -> Dict[str, torch.Tensor]:
        if self.config.step_delay:
            time.sleep(self.config.step_delay)
        x, y = (t.to(self.device, non_blocking=True) for t in batch)
        logits = self.model(x)
        ce = F.cross_entropy(logits, y)
        kd = logits.new_zeros(())
        if self.teacher is not None:
            T = self.config.temperature
            with torch.no_grad():
                old = self.teacher(x)
            n_old = old.shape[1]
            kd = F.kl_div(F.log_softmax(logits[:, :n_old] / T, 1), F.softmax(old / T, 1), reduction="batchmean") * T * T
        return {"loss": ce + self.config.distill * kd, "ce": ce, "kd": kd}

    @torch.no_grad()
    def evaluate(self, task: Task) -> Dict[str, float]:
        model = self.unwrapped
        was = model.training
        model.eval()
        ds = task.eval_set
        correct = 0
        bs = self.config.eval_batch_size
        for i in range(0, len(ds), bs):
            x, y = ds.x[i : i + bs].to(self.device), ds.y[i : i + bs].to(self.device)
            correct += int((model(x).argmax(1) == y).sum())
        model.train(was)
        acc = 100.0 * correct / max(1, len(ds))
        return {"accuracy": acc, "error": 100.0 - acc}

    def load_state_dict(self, state: dict) -> None:
        self.unwrapped.grow(state["model"]["head.weight"].shape[0])
        self.n_seen = state["model"]["head.weight"].shape[0]
        self.unwrapped.load_state_dict(state["model"])
        self.teacher = None
        if state.get("teacher") is not None:
            c = self.config
            t = ToyNet(c.dim, c.hidden, c.depth, state["teacher"]["head.weight"].shape[0], c.dropout).to(self.device)
            t.load_state_dict(state["teacher"])
            self.teacher = t.eval().requires_grad_(False)
