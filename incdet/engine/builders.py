"""Task builders: config section ``tasks:`` -> list of :class:`Task`.

A builder is a function ``build(options, seed=...) -> list[Task]`` registered in
``incdet.engine.TASK_BUILDERS`` with its options dataclass attached as ``build.Config``
(use :func:`task_builder`). The ``tasks:`` section of a run config holds ``builder`` (the
name), ``init_from`` (see :mod:`incdet.engine.trainer`) and the builder's options.

Builders register themselves where their data code lives (e.g. ``classes`` in
:mod:`incdet.data.builder`, ``toy`` in :mod:`incdet.engine.toy`) and are found by name through
entry points (:mod:`incdet.engine.plugins`).
"""
from __future__ import annotations

import inspect
from typing import List

from incdet.engine.task import Task
from incdet.errors import ConfigError


def task_builder(name: str, config_cls):
    """Decorator: register ``fn`` as task builder ``name`` with options dataclass ``config_cls``."""
    from incdet.engine import TASK_BUILDERS

    def deco(fn):
        fn.Config = config_cls
        return TASK_BUILDERS.register(name)(fn)

    return deco


def build_tasks(cfg) -> List[Task]:
    """Build the task list of a :class:`~incdet.engine.config.RunConfig`."""
    from incdet.engine import TASK_BUILDERS

    from incdet.engine.plugins import ensure_task_builder

    ensure_task_builder(cfg.tasks.builder)
    fn = TASK_BUILDERS.get(cfg.tasks.builder)
    kwargs = {}
    if "seed" in inspect.signature(fn).parameters:
        kwargs["seed"] = cfg.experiment.seed
    tasks = list(fn(cfg.tasks.options, **kwargs))
    if not tasks:
        raise ConfigError(f"{cfg.source}: task builder {cfg.tasks.builder!r} produced no tasks")
    for i, t in enumerate(tasks):
        if t.index != i:
            raise ConfigError(f"{cfg.source}: task builder {cfg.tasks.builder!r}: task {i} has index {t.index}")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"{cfg.source}: task names must be unique, got {names}")
    return tasks
