"""Backbone pretraining on shapes-pretrain: disjoint classes, deterministic data, loadable weights, resume."""
import json

import pytest
import torch
import torchvision

from incdet.data import shapes
from incdet.data.shapes_pretrain import PRETRAIN_CLASSES, PRETRAIN_PATTERNS, PRETRAIN_SHAPES, ShapesPretrain
from incdet.errors import CheckpointError, ConfigError
from incdet.models import pretrain as pt
from incdet.models.fastrcnn import ResNetC4, load_resnet_weights


def test_classes_are_disjoint_from_shapes_voc():
    assert len(PRETRAIN_CLASSES) == 30
    assert not set(PRETRAIN_CLASSES) & set(shapes.SHAPES_CLASSES)
    assert not set(PRETRAIN_SHAPES) & set(shapes.SHAPES)
    assert not set(PRETRAIN_PATTERNS) & set(shapes.PATTERNS)


def test_images_are_deterministic_and_splits_differ():
    a, b = ShapesPretrain(40, 48, seed=3), ShapesPretrain(40, 48, seed=3)
    v = ShapesPretrain(40, 48, seed=3, split="val")
    x1, y1 = a[31]
    x2, y2 = b[31]
    assert torch.equal(x1, x2) and y1 == y2 == 1
    assert x1.shape == (3, 48, 48) and x1.dtype == torch.float32 and 0 <= x1.min() and x1.max() <= 1
    assert not torch.equal(v[31][0], x1)
    assert {a[i][1] for i in range(30)} == set(range(30))


def _cfg(**kw):
    base = dict(depth=18, width=4, size=32, iterations=4, batch_size=4, lr=0.05, warmup_iters=1, val_images=30,
                eval_every=100, checkpoint_every=2, num_workers=0, seed=1)
    base.update(kw)
    return pt.PretrainConfig(**base)


def test_pretrain_writes_torchvision_weights_that_the_detector_loads(tmp_path):
    out = tmp_path / "w.pt"
    m = pt.pretrain(_cfg(), tmp_path / "run", out, torch.device("cpu"))
    assert 0 <= m["top1"] <= 100 and m["steps"] == 4
    state = torch.load(out, weights_only=True)
    assert "fc.weight" in state and state["fc.weight"].shape == (30, 32)
    net = ResNetC4(18, 4, "bn", 2)
    load_resnet_weights(net, str(out))  # strict key/shape check inside
    assert torch.equal(net.conv1.weight, state["conv1.weight"])
    assert json.loads((tmp_path / "run" / "result.json").read_text())["metrics"]["top1"] == m["top1"]
    with pytest.raises(ConfigError, match="--resume"):
        pt.pretrain(_cfg(), tmp_path / "run", out, torch.device("cpu"))


def test_width_64_is_torchvision_resnet18(tmp_path):
    out = tmp_path / "r18.pt"
    pt.pretrain(_cfg(width=64, iterations=1, checkpoint_every=1), tmp_path / "run", out, torch.device("cpu"), half=True)
    state = torch.load(out, weights_only=True)
    assert state["conv1.weight"].dtype == torch.float16
    net = torchvision.models.resnet18(num_classes=30)
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


def test_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    full = tmp_path / "full.pt"
    pt.pretrain(_cfg(), tmp_path / "a", full, torch.device("cpu"))

    real = pt.lr_at

    def dying(step, c):
        if step == 3:
            raise KeyboardInterrupt
        return real(step, c)

    monkeypatch.setattr(pt, "lr_at", dying)
    with pytest.raises(KeyboardInterrupt):
        pt.pretrain(_cfg(), tmp_path / "b", tmp_path / "b.pt", torch.device("cpu"))
    assert not (tmp_path / "b.pt").exists()
    monkeypatch.setattr(pt, "lr_at", real)
    pt.pretrain(_cfg(), tmp_path / "b", tmp_path / "b.pt", torch.device("cpu"), resume=True)
    a, b = torch.load(full, weights_only=True), torch.load(tmp_path / "b.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="--width must be >= 4 and <= 256, got 0"):
        pt.pretrain(_cfg(width=0), tmp_path / "r", None, torch.device("cpu"))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        pt.pretrain(_cfg(), tmp_path / "none", None, torch.device("cpu"), resume=True)
    bad = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="mismatched"):
        pt.pretrain(_cfg(), tmp_path / "r2", None, torch.device("cpu"), init=str(bad))
