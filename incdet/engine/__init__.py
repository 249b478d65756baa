"""The shared task-incremental training driver (see docs/design.md).

* :class:`Task`, :class:`Learner` (protocol + base class), ``LEARNERS`` / ``TASK_BUILDERS``
  registries, :func:`task_builder`.
* :class:`ResultsMatrix` and the forgetting metrics (:mod:`incdet.engine.results`).
* :class:`Trainer` / :func:`run_training` (:mod:`incdet.engine.trainer`), configs
  (:mod:`incdet.engine.config`), checkpoints (:mod:`incdet.engine.checkpoint`).
"""
from incdet.engine.task import Task
from incdet.registry import Registry

#: learner name -> learner class (each class has a ``Config`` dataclass attribute)
LEARNERS: Registry = Registry("learner")
#: task builder name -> ``build(options, seed=...) -> list[Task]`` with a ``Config`` attribute
TASK_BUILDERS: Registry = Registry("task builder")

from incdet.engine.learner import Learner  # noqa: E402
from incdet.engine.builders import build_tasks, task_builder  # noqa: E402,F401
from incdet.engine.results import (  # noqa: E402
    ResultsMatrix,
    average_accuracy,
    average_forgetting,
    backward_transfer,
    forgetting_per_task,
)

__all__ = [
    "Task", "LEARNERS", "TASK_BUILDERS", "Learner", "task_builder", "build_tasks", "ResultsMatrix",
    "average_accuracy", "average_forgetting", "backward_transfer", "forgetting_per_task",
]
