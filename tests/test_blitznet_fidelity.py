"""BlitzNet fidelity to the thesis (issue 15 item 7): ResSkip sums the upsampled input itself
(C.3.3), the projection only as an option; old weights files (projection, no key) still load;
the VOC07 SSD-protocol config evaluates with the 11-point AP."""
from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from blitznet.learner import BlitzNetLearner, BlitzNetLearnerConfig
from blitznet.model import BlitzNet, BlitzNetConfig, ResSkip
from blitznet.predict import load_weights, weights_dict
from incdet.data import Sample
from incdet.engine import Task
from incdet.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TINY = dict(backbone="resnet18", input_size=64, final_stride=8, channels=16, seg_channels=4, num_classes=3)


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 16, 3, 3, generator=g), torch.randn(2, 8, 5, 5, generator=g)


def test_resskip_sums_upsampled_input_when_channels_match():
    torch.manual_seed(0)
    x, skip = _inputs()
    blk = ResSkip(16, 8, 16).eval()  # projection "auto", c_in == c_out: identity
    assert blk.proj is None
    with torch.no_grad():
        up = F.interpolate(x, size=(5, 5), mode="bilinear", align_corners=False)
        y = blk(x, skip)
        assert torch.equal(y, torch.relu(blk.block(torch.cat([up, skip], 1)) + up))
        # the identity really is the residual: without it the output changes
        assert not torch.allclose(y, torch.relu(blk.block(torch.cat([up, skip], 1))))


@pytest.mark.parametrize("projection,c_out,has_proj", [("always", 16, True), ("auto", 12, True), ("auto", 16, False)])
def test_resskip_projection_option(projection, c_out, has_proj):
    torch.manual_seed(0)
    x, skip = _inputs()
    blk = ResSkip(16, 8, c_out, projection=projection).eval()
    assert (blk.proj is not None) == has_proj
    with torch.no_grad():
        up = F.interpolate(x, size=(5, 5), mode="bilinear", align_corners=False)
        res = blk.proj(up) if has_proj else up
        assert torch.allclose(blk(x, skip), torch.relu(blk.block(torch.cat([up, skip], 1)) + res))


def test_network_default_is_identity_and_always_keeps_projection():
    auto = BlitzNet(BlitzNetConfig(**TINY))
    always = BlitzNet(BlitzNetConfig(**TINY, resskip_projection="always"))
    assert not any(".proj." in k for k in auto.state_dict())
    n_fusions = len(always.fusions)
    assert sum(k.startswith("fusions.") and k.endswith(".proj.0.weight") for k in always.state_dict()) == n_fusions
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        assert auto.eval()(auto.normalize(x))["cls_logits"].shape == always.eval()(always.normalize(x))["cls_logits"].shape


def test_bad_projection_value_names_key():
    with pytest.raises(ConfigError, match="resskip_projection"):
        BlitzNetConfig(**TINY, resskip_projection="never")


def _old_style(model: BlitzNet) -> dict:
    """A weights dict as written before the key existed (config without it)."""
    d = weights_dict(model)
    del d["config"]["resskip_projection"]
    return d


def test_old_weights_file_without_key_loads_with_projection(tmp_path):
    torch.manual_seed(0)
    old = BlitzNet(BlitzNetConfig(**TINY, resskip_projection="always")).eval()
    p = tmp_path / "old.pt"
    torch.save(_old_style(old), p)
    model, _ = load_weights(p)
    assert model.config.resskip_projection == "always"
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        a, b = old(old.normalize(x)), model(model.normalize(x))
    assert torch.equal(a["cls_logits"], b["cls_logits"]) and torch.equal(a["seg_logits"], b["seg_logits"])
    # a file written now keeps its own value
    new = BlitzNet(BlitzNetConfig(**TINY)).eval()
    torch.save(weights_dict(new), tmp_path / "new.pt")
    assert load_weights(tmp_path / "new.pt")[0].config.resskip_projection == "auto"


def test_old_learner_checkpoint_without_key_loads():
    torch.manual_seed(0)
    cfg = BlitzNetLearnerConfig(model=BlitzNetConfig(**TINY, resskip_projection="always"), augment=False)
    L = BlitzNetLearner(cfg, "cpu")
    L.model = BlitzNet(cfg.model)
    L.teacher = BlitzNet(cfg.model).eval()
    state = L.state_dict()
    for k in ("model_config", "teacher_config"):
        del state[k]["resskip_projection"]
    # a run resumed with today's config (default "auto") still rebuilds the saved network
    L2 = BlitzNetLearner(BlitzNetLearnerConfig(model=BlitzNetConfig(**TINY), augment=False), "cpu")
    L2.load_state_dict(state)
    assert L2.model.config.resskip_projection == "always" and L2.teacher.fusions[0].proj is not None


def test_voc07_config_uses_11_point_metric(monkeypatch):
    """configs/blitznet/voc07_ssd.yaml: the SSD protocol (C.3.5 caps, VOC07 test, 11-point AP),
    and the learner's evaluation really calls the VOC evaluation with the 11-point metric."""
    import incdet.eval.voc as voc
    from incdet.engine.config import load_config

    cfg = load_config(REPO / "configs" / "blitznet" / "voc07_ssd.yaml")
    o = cfg.learner.options
    assert cfg.learner.name == "blitznet" and o.use_07_metric is True
    assert (o.score_thresh, o.pre_nms_top, o.nms_iou, o.per_class, o.max_det) == (0.01, 400, 0.45, 50, 200)
    assert o.model.input_size == 300 and o.model.resskip_projection == "auto"

    calls = []
    real = voc.voc_evaluate

    def spy(*a, **kw):
        calls.append(kw.get("use_07_metric"))
        return real(*a, **kw)

    monkeypatch.setattr(voc, "voc_evaluate", spy)
    torch.manual_seed(0)
    small = replace(o, model=BlitzNetConfig(**{**TINY, "segmentation": False}), augment=False)
    L = BlitzNetLearner(small, "cpu")
    img = torch.zeros(3, 64, 64, dtype=torch.uint8)
    s = Sample(image=img, boxes=torch.tensor([[8.0, 8.0, 40.0, 40.0]]), labels=torch.tensor([1]), image_id="a")
    task = Task(0, "all", ["a", "b", "c"], ["a", "b", "c"], train_set=[s], eval_set=[s])
    L.begin_task(task)
    m = L.evaluate(task)
    assert calls == [True] and "mAP" in m
    # and the all-point default stays the default elsewhere
    assert BlitzNetLearnerConfig().use_07_metric is False
    assert asdict(BlitzNetConfig())["resskip_projection"] == "auto"
