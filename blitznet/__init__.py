"""BlitzNet: real-time joint object detection and semantic segmentation (thesis appendix C).

Importing the package registers the ``blitznet`` learner in ``incdet.engine.LEARNERS``.
"""
from blitznet.anchors import anchor_count, generate_anchors, ssd_scales
from blitznet.model import BlitzNet, BlitzNetConfig, ResSkip, blitznet300, blitznet512
from blitznet.nms import (capped_nms, capped_nms_flat, capped_nms_per_image, capped_nms_single, reference_capped_nms,
                          uncapped_nms)
from blitznet.predict import BlitzNetPredictor, load_weights, save_weights

from blitznet.learner import BlitzNetLearner, BlitzNetLearnerConfig  # noqa: F401  (registers "blitznet")

__all__ = [
    "BlitzNet", "BlitzNetConfig", "ResSkip", "blitznet300", "blitznet512", "anchor_count", "generate_anchors",
    "ssd_scales", "capped_nms", "capped_nms_flat", "capped_nms_per_image", "capped_nms_single", "reference_capped_nms", "uncapped_nms", "BlitzNetPredictor",
    "load_weights", "save_weights", "BlitzNetLearner", "BlitzNetLearnerConfig",
]
