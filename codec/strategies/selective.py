"""Selective fine-tuning (DANICE section 2.2).

Selective fine-tuning trains only the GDN / inverse-GDN layers, the entropy model and new
per-channel ``alpha * z + beta`` after every convolution (added identity-initialised by
:meth:`codec.model.FactorizedCodec.add_affine`); convolutions stay frozen. DANICE reports about
5% of the parameters; :func:`trainable_fraction` gives the actual figure for a model.
"""
from __future__ import annotations

from typing import List

from compressai.entropy_models import EntropyBottleneck
from compressai.layers import GDN
from torch import nn

from codec.model import FactorizedCodec
from codec.registry import Strategy, register_strategy


def setup_selective(model: FactorizedCodec) -> List[nn.Parameter]:
    """Freeze convolutions; train GDN, entropy model and per-channel affines. Returns the trainable ones."""
    model.add_affine()
    model.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, (GDN, EntropyBottleneck)):
            m.requires_grad_(True)
    model.enc_affine.requires_grad_(True)
    model.dec_affine.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


@register_strategy("selective")
class Selective(Strategy):
    def grow(self, model: FactorizedCodec, task_index: int, config) -> FactorizedCodec:
        model.add_affine()
        return model

    def set_trainable(self, model: FactorizedCodec, task_index: int) -> None:
        setup_selective(model)


def selective_parameter_names(model: FactorizedCodec) -> List[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def trainable_fraction(model: nn.Module, include_entropy_model: bool = True) -> float:
    """Fraction of the model's parameters that require grad (entropy-model parameters counted
    unless ``include_entropy_model`` is False; the quantiles are always excluded, they only
    bound the CDF range)."""

    def count(pred):
        tot = 0
        for name, p in model.named_parameters():
            if name.endswith("quantiles"):
                continue
            if not include_entropy_model and "entropy_bottleneck" in name:
                continue
            if pred(p):
                tot += p.numel()
        return tot

    return count(lambda p: p.requires_grad) / max(1, count(lambda p: True))
