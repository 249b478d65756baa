"""Losses for incremental learning (distillation from a frozen teacher)."""
from incdet.models.losses.distill import (
    DistillTargets,
    ce_distillation,
    distillation_loss,
    l2_distillation,
    select_distillation_rois,
)

__all__ = ["DistillTargets", "select_distillation_rois", "l2_distillation", "ce_distillation", "distillation_loss"]
