"""Freezing variants of thesis table 3.1 and the fine-tune-everything default (3.4.2).

``freeze=trunk`` ("B(20) w frozen trunk"): every convolutional layer, res5 included, and the
BatchNorm statistics stay as A left them during training on task B; only the output layers train.
``freeze=all_but_new`` ("all layers frozen"): also the old output layers stay fixed.
"""
from __future__ import annotations

import pytest
import torch

from incdet.models.fastrcnn import DetectorConfig, FastRCNN
from test_incdet_helpers import make_tasks, tiny_model_config
from incdet.models.learner import FastRCNNLearner, FastRCNNLearnerConfig
from test_incdet_learner import _props_file, _train


def _state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _changed(before, net):
    return {k for k, v in net.state_dict().items() if not torch.equal(before[k], v)}


def _step_on_b(tmp_path, freeze, distill="l2"):
    """Train A one step on task 0, then one SGD step on task B; the names of the state entries
    (parameters and buffers) that changed in B's step."""
    tasks = make_tasks()
    torch.manual_seed(0)
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = FastRCNNLearnerConfig(model=tiny_model_config(norm="bn"),  # trainable BatchNorm: statistics that move
                                proposals=_props_file(tmp_path, tasks), proposal_nms=None, freeze=freeze,
                                distill=distill)
    L = FastRCNNLearner(cfg, "cpu")
    L.begin_task(tasks[0])
    _train(L, tasks[0], 1)
    L.begin_task(tasks[1])
    before = _state(L.net)
    _train(L, tasks[1], 1)
    return L.net, _changed(before, L.net)


def _conv_keys(net):
    return {"backbone." + k for k in net.backbone.state_dict()}


@pytest.mark.parametrize("distill", ["l2", "none"])
def test_frozen_trunk_fixes_every_conv_layer_and_bn_statistics(tmp_path, distill):
    net, changed = _step_on_b(tmp_path, "trunk", distill)
    assert any(k.startswith("backbone.layer4.") for k in _conv_keys(net))
    assert not (changed & _conv_keys(net)), sorted(changed & _conv_keys(net))[:5]
    # only the output layers move: old and new chunks of both sibling layers
    assert {"cls_score.chunks.0.weight", "cls_score.chunks.1.weight",
            "bbox_pred.chunks.1.weight"} <= changed
    assert all(k.startswith(("cls_score.", "bbox_pred.")) for k in changed)


def test_all_layers_frozen_trains_only_the_new_outputs(tmp_path):
    net, changed = _step_on_b(tmp_path, "all_but_new")
    assert changed and all(k.startswith(("cls_score.chunks.1.", "bbox_pred.chunks.1.")) for k in changed)


def test_known_bad_freezing_is_caught(tmp_path, monkeypatch):
    """The checker above sees the old behaviour (res5 trainable) and BatchNorm statistics that move."""
    monkeypatch.setattr(FastRCNN, "conv_modules", FastRCNN.trunk_modules)  # res5 left trainable
    net, changed = _step_on_b(tmp_path / "a", "trunk")
    assert any(k.startswith("backbone.layer4.") and k.endswith("weight") for k in changed)
    monkeypatch.undo()
    # statistics not fixed (no freezing): a step in train mode moves res5's running means
    net, changed = _step_on_b(tmp_path / "b", "none")
    assert any(k.endswith("running_mean") for k in changed & _conv_keys(net))


def test_freeze_at_default_fine_tunes_everything(tmp_path):
    assert DetectorConfig().resolved_freeze_at == 0
    assert DetectorConfig(weights="zoo:x", freeze_at=-1).resolved_freeze_at == 0
    assert DetectorConfig(freeze_at=2).resolved_freeze_at == 2
