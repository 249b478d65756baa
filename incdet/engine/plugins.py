"""Finding learners and task builders by name: entry points, imported on first use.

The driver names no learner family. A package makes its learners and task builders known in
two steps: importing its module registers them (``@LEARNERS.register(name)``,
:func:`~incdet.engine.builders.task_builder`), and its ``pyproject.toml`` says which module to
import for which name::

    [project.entry-points."incdet.learners"]        # name, or a dotted prefix of names
    "incdet.fastrcnn" = "incdet.models.learner"
    mypkg = "mypkg.learner"                          # mypkg and mypkg.<anything>
    [project.entry-points."incdet.task_builders"]
    classes = "incdet.data.builder"

A name not registered yet is looked up in the group: the entry point of that exact name, else
of its longest dotted prefix (``a.b.c`` -> ``a.b`` -> ``a``); its module is imported. An unknown
name raises :class:`~incdet.errors.ConfigError` listing every known name (all entry points are
imported for that list). Entry points are read from the installed package metadata: after
editing them, refresh it with ``pip install -e . --no-deps``.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Dict, List

from incdet.errors import ConfigError

LEARNER_GROUP = "incdet.learners"
BUILDER_GROUP = "incdet.task_builders"


def _points(group: str) -> Dict[str, str]:
    """Entry point name -> module of ``group``."""
    return {ep.name: ep.value.split(":")[0].strip() for ep in entry_points(group=group)}


def _import(group: str, name: str, module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as e:  # an installation problem, reported as one line
        raise ConfigError(f"{name!r} ({group} entry point): importing {module} failed: "
                          f"{type(e).__name__}: {e}") from None


def _candidates(name: str) -> List[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def load_name(group: str, name: str) -> None:
    """Import the module of ``name``'s entry point in ``group`` (exact name, else the longest
    dotted prefix); nothing if there is none."""
    points = _points(group)
    for c in _candidates(name):
        if c in points:
            _import(group, c, points[c])
            return


def load_prefix(prefix: str) -> None:
    """Import every learner / task builder module whose entry point name is ``prefix`` or starts
    with ``prefix.`` (e.g. ``incdet`` -> ``incdet.fastrcnn``)."""
    for group in (LEARNER_GROUP, BUILDER_GROUP):
        for n, module in _points(group).items():
            if n == prefix or n.startswith(prefix + "."):
                _import(group, n, module)


def load_all() -> None:
    """Import every registered module of both groups (to enumerate every learner / builder)."""
    for group in (LEARNER_GROUP, BUILDER_GROUP):
        for n, module in _points(group).items():
            _import(group, n, module)


def _ensure(registry, group: str, name: str) -> None:
    if name in registry:
        return
    load_name(group, name)
    if name in registry:
        return
    load_all()
    hint = "" if _points(group) else (f" (no {group} entry points installed: run `pip install -e . --no-deps` "
                                      f"in the repository)")
    raise ConfigError(f"unknown {registry.kind} {name!r}; known: {', '.join(registry.names()) or '(none)'}{hint}")


def ensure_learner(name: str) -> None:
    """Make learner ``name`` registered (importing its module) or raise ConfigError."""
    from incdet.engine import LEARNERS

    _ensure(LEARNERS, LEARNER_GROUP, name)


def ensure_task_builder(name: str) -> None:
    """Make task builder ``name`` registered (importing its module) or raise ConfigError."""
    from incdet.engine import TASK_BUILDERS

    _ensure(TASK_BUILDERS, BUILDER_GROUP, name)
