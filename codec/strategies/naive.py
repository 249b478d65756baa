"""Naive fine-tuning (DANICE section 2.2): every parameter of the one codec is trained on the
new domain (the codec id changes: older files are refused, not decoded wrongly)."""
from __future__ import annotations

from typing import List

from torch import nn

from codec.registry import Strategy, register_strategy


def setup_naive(model: nn.Module) -> List[nn.Parameter]:
    """Every parameter trainable; returns them."""
    model.requires_grad_(True)
    return list(model.parameters())


@register_strategy("naive")
class Naive(Strategy):
    def set_trainable(self, model: nn.Module, task_index: int) -> None:
        setup_naive(model)
