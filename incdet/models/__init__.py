"""Incremental Fast R-CNN (ResNet-C4) on precomputed proposals, with distillation (thesis ch. 3).

Importing this package registers the ``incdet.fastrcnn`` learner in ``incdet.engine.LEARNERS``.
"""
from incdet.models.fastrcnn import DetectorConfig, FastRCNN
from incdet.models.learner import FastRCNNLearner, FastRCNNLearnerConfig
from incdet.models.proposals import ProposalSource, selective_search, sliding_window_proposals

__all__ = [
    "DetectorConfig",
    "FastRCNN",
    "FastRCNNLearner",
    "FastRCNNLearnerConfig",
    "ProposalSource",
    "selective_search",
    "sliding_window_proposals",
]
