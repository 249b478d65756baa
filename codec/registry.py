"""Registries of codec kinds and adaptation strategies (like CompressAI's ``registry``).

- :data:`CODECS`: ``arch["kind"]`` -> a codec class with ``from_arch(arch)``;
  :func:`build_codec` rebuilds a codec from its ``arch()`` dict (checkpoints store it).
- :data:`STRATEGIES`: strategy name -> a :class:`Strategy` (how a task adapts the codec).

Entries register themselves with the decorators, one module each: ``factorized`` in
:mod:`codec.model`, ``naive`` / ``selective`` / ``cawf`` / ``adapters`` under
:mod:`codec.strategies` (imported by ``import codec``). This module imports no codec, so
:mod:`codec.model` does not depend on the strategies.
"""
from __future__ import annotations

from typing import Callable, Type

from torch import nn

from incdet.errors import CheckpointError
from incdet.registry import Registry

CODECS: Registry = Registry("codec kind")
STRATEGIES: Registry = Registry("strategy")


def register_codec(kind: str) -> Callable[[Type], Type]:
    """Class decorator: ``arch()["kind"] == kind`` checkpoints are rebuilt with ``cls.from_arch``."""
    return CODECS.register(kind)


def register_strategy(name: str) -> Callable:
    """Decorator for a :class:`Strategy` subclass; registers one instance under ``name``."""

    def deco(cls):
        STRATEGIES.register(name)(cls())
        cls.name = name
        return cls

    return deco


def build_codec(arch: dict) -> nn.Module:
    """Rebuild a codec module from its ``arch()`` dict; an unknown kind -> ``CheckpointError``
    listing the known ones."""
    kind = arch.get("kind") if isinstance(arch, dict) else None
    try:
        cls = CODECS.get(kind)
    except KeyError as e:
        raise CheckpointError(e.args[0]) from None
    return cls.from_arch(arch)


def get_strategy(name: str) -> "Strategy":
    """The registered strategy ``name``; unknown -> ``KeyError`` listing the known ones."""
    return STRATEGIES.get(name)


class Strategy:
    """How a task after the first adapts the codec (the source task trains everything).

    ``grow(model, task_index, config)`` returns the model with the structure task ``t`` needs
    (it may wrap the model, e.g. CAwF); ``set_trainable(model, task_index)`` sets
    ``requires_grad`` for that task's parameters.
    """

    name = ""

    def grow(self, model: nn.Module, task_index: int, config) -> nn.Module:
        return model

    def set_trainable(self, model: nn.Module, task_index: int) -> None:
        raise NotImplementedError
