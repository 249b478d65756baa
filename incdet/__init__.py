"""incdet: vision models that learn new classes and domains without forgetting old ones.

Packages: ``incdet`` (shared data, evaluation, task-incremental driver, incremental Fast
R-CNN), ``blitznet`` (joint detection + segmentation), ``codec`` (domain-adaptive neural
image codec).
"""

__version__ = "0.1.0"
