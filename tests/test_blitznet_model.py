"""BlitzNet network, anchors, losses and learner on tiny configurations (CPU, seconds)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from blitznet.anchors import anchor_count, anchors_per_location, generate_anchors, ssd_scales
from blitznet.losses import decode_boxes, detection_loss, distillation_loss, encode_boxes, match_anchors, segmentation_loss
from blitznet.model import BlitzNet, BlitzNetConfig, HourglassFusion, ResSkip, blitznet300, blitznet512
from incdet.errors import ConfigError

TINY = dict(backbone="resnet18", input_size=64, final_stride=8, channels=32, seg_channels=8)


def tiny(num_classes=3, **kw) -> BlitzNet:
    torch.manual_seed(0)
    return BlitzNet(BlitzNetConfig(num_classes=num_classes, **{**TINY, **kw}))


def test_paper_anchor_counts():
    # feature sizes by conv arithmetic (no forward pass): BlitzNet300-s4 75,38,19,10,5,3,1 and
    # BlitzNet512-s8 64,32,16,8,4,2,1; table C.7 lists 45,390 and 32,766 anchors.
    m300 = BlitzNet(blitznet300(backbone="resnet18", channels=16, seg_channels=4))
    assert m300.feature_sizes((300, 300)) == [(75, 75), (38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    assert m300.num_anchors_for() == 45390
    m512 = BlitzNet(blitznet512(backbone="resnet18", channels=16, seg_channels=4))
    assert m512.num_anchors_for() == 32766
    assert anchor_count([(2, 3)], [2.0, 3.0]) == 36 and anchors_per_location([2.0]) == 4


def test_feature_sizes_match_forward_and_anchor_formula():
    m = tiny().eval()
    with torch.no_grad():
        out = m(torch.zeros(1, 3, 64, 80))
    assert out["feature_sizes"] == m.feature_sizes((64, 80))
    n = sum(h * w for h, w in out["feature_sizes"]) * 6
    assert out["cls_logits"].shape == (1, n, 4)
    assert out["box_deltas"].shape == (1, n, 4)
    assert out["seg_logits"].shape == (1, 4, 8, 10)  # stride 8
    assert m.anchors(out["feature_sizes"], (64, 80)).shape == (n, 4)


def test_generate_anchors_geometry():
    a = generate_anchors([(2, 2)], (100, 100), [2.0], scales=[0.5, 0.8], clip=False)
    assert a.shape == (2 * 2 * 4, 4)
    first = a[:4]  # cell (0, 0), centre (25, 25)
    assert torch.allclose((first[:, :2] + first[:, 2:]) / 2, torch.full((4, 2), 25.0))
    wh = first[:, 2:] - first[:, :2]
    assert torch.allclose(wh[0], torch.tensor([50.0, 50.0]))
    assert torch.allclose(wh[1], torch.tensor([50 * math.sqrt(2), 50 / math.sqrt(2)]), atol=1e-4)
    assert torch.allclose(wh[3], torch.full((2,), 100 * math.sqrt(0.4)), atol=1e-4)  # extra square
    s = ssd_scales(7)
    assert len(s) == 8 and s[0] == pytest.approx(0.1) and s[1] == pytest.approx(0.2) and s[6] == pytest.approx(0.9)


def test_resskip_semantics():
    torch.manual_seed(0)
    blk = ResSkip(8, 4, 6).eval()
    x, skip = torch.randn(2, 8, 3, 3), torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        y = blk(x, skip)
        up = torch.nn.functional.interpolate(x, size=(5, 5), mode="bilinear", align_corners=False)
        ref = torch.relu(blk.block(torch.cat([up, skip], 1)) + blk.proj(up))
    assert y.shape == (2, 6, 5, 5)
    assert torch.allclose(y, ref)
    assert (y >= 0).all()
    plain = ResSkip(8, 4, 6, residual=False).eval()
    assert plain.proj is None
    with torch.no_grad():
        assert torch.allclose(plain(x, skip), torch.relu(plain.block(torch.cat([up, skip], 1))))
    assert HourglassFusion(8, 4, 6)(x, skip).shape == (2, 6, 5, 5)


@pytest.mark.parametrize("fusion", ["plain", "hourglass"])
def test_fusion_variants_forward(fusion):
    m = tiny(fusion=fusion).eval()
    with torch.no_grad():
        out = m(torch.zeros(1, 3, 64, 64))
    assert out["seg_logits"].shape == (1, 4, 8, 8)


def test_encode_decode_roundtrip():
    anchors = torch.tensor([[0.0, 0, 10, 10], [5, 5, 30, 20]])
    gt = torch.tensor([[1.0, 2, 9, 12], [0, 0, 40, 40]])
    assert torch.allclose(decode_boxes(encode_boxes(gt, anchors), anchors), gt, atol=1e-4)


def test_matching_forced_and_ignored():
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 20, 20], [50, 50, 60, 60], [100, 100, 110, 110]])
    boxes = torch.tensor([[0.0, 0, 11, 11], [52, 52, 70, 70], [100, 100, 110, 110]])
    labels = torch.tensor([1, 2, 3])
    lab, m = match_anchors(anchors, boxes, labels, torch.tensor([False, False, True]))
    assert lab.tolist() == [1, 0, 2, -1]  # box 2 forced onto its best anchor (IoU 0.31); crowd -> ignored
    assert torch.equal(m[2], boxes[1])
    lab, _ = match_anchors(anchors, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert (lab == 0).all()


def test_detection_loss_hard_negative_ratio_and_det_free_images():
    torch.manual_seed(0)
    anchors = generate_anchors([(4, 4)], (64, 64), [2.0])
    N = anchors.shape[0]
    logits = torch.randn(2, N, 3, requires_grad=True)
    deltas = torch.randn(2, N, 4, requires_grad=True)
    t0 = {"boxes": torch.tensor([[0.0, 0, 15, 15]]), "labels": torch.tensor([1]), "has_det": True}
    t1 = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "has_det": False}
    out = detection_loss(logits, deltas, anchors, [t0, t1])
    (out["loss_cls"] + out["loss_box"]).backward()
    assert torch.isfinite(out["loss_cls"]) and torch.isfinite(out["loss_box"])
    g = logits.grad.abs().sum(-1)
    n_pos = int((match_anchors(anchors, t0["boxes"], t0["labels"])[0] > 0).sum())
    assert int((g[0] > 0).sum()) == 4 * n_pos  # positives + 3x hardest negatives
    assert (g[1] == 0).all()  # segmentation-only image: no detection gradient


def test_segmentation_loss_ignores_void_and_maskless():
    torch.manual_seed(0)
    seg = torch.randn(3, 4, 8, 8, requires_grad=True)
    m = torch.full((64, 64), 255, dtype=torch.uint8)
    m[:32] = 2
    loss = segmentation_loss(seg, [{"mask": m}, {"mask": None}, {"mask": torch.full((64, 64), 255, dtype=torch.uint8)}])
    loss.backward()
    assert torch.isfinite(loss)
    assert seg.grad[0].abs().sum() > 0 and seg.grad[1].abs().sum() == 0 and seg.grad[2].abs().sum() == 0
    z = segmentation_loss(seg, [{"mask": None}] * 3)
    assert z.item() == 0.0 and z.requires_grad


def test_add_classes_keeps_old_outputs():
    m = tiny().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = m(x)
        m.add_classes(2)
        b = m(x)
    assert b["cls_logits"].shape[-1] == 6 and b["seg_logits"].shape[1] == 6
    assert torch.allclose(a["cls_logits"], b["cls_logits"][..., :4], atol=1e-5)
    assert torch.allclose(a["seg_logits"], b["seg_logits"][:, :4], atol=1e-5)
    assert torch.equal(a["box_deltas"], b["box_deltas"])
    assert m.config.num_classes == 5


def test_distillation_zero_for_identical_and_positive_otherwise():
    m = tiny().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        t = m(x)
    d = distillation_loss(t, t, 3)
    assert all(v.item() == pytest.approx(0.0) for v in d.values())
    assert set(d) == {"loss_distill_cls", "loss_distill_box", "loss_distill_seg"}
    s = {k: (v + 1.0 if torch.is_tensor(v) else v) for k, v in t.items()}
    s["cls_logits"] = t["cls_logits"] + torch.randn_like(t["cls_logits"])
    d2 = distillation_loss(s, t, 3)
    assert d2["loss_distill_cls"] > 0 and d2["loss_distill_box"] == pytest.approx(1.0)
    # a constant shift of all logits is invisible to centred distillation
    assert d2["loss_distill_seg"].item() == pytest.approx(0.0, abs=1e-6)


def test_postprocess_outputs():
    m = tiny().eval()
    with torch.no_grad():
        out = m(torch.zeros(2, 3, 64, 64))
        res = m.postprocess(out, (64, 64), [(100, 150), (64, 64)], max_det=7)
    assert len(res) == 2
    r = res[0]
    assert r["boxes"].shape[1] == 4 and len(r["boxes"]) <= 7 and len(r["scores"]) == len(r["labels"])
    assert r["mask"].shape == (100, 150) and r["mask"].dtype == torch.uint8
    assert (r["labels"] >= 1).all() and (r["labels"] <= 3).all()
    assert (r["boxes"][:, 2] <= 149).all() and (r["boxes"][:, 3] <= 99).all()


def test_bad_config_errors():
    from incdet.errors import ConfigError

    with pytest.raises(ConfigError, match="final_stride"):
        BlitzNetConfig(final_stride=16).validate()
    with pytest.raises(ConfigError, match="fusion"):
        BlitzNetConfig(fusion="nope").validate()
    with pytest.raises(ConfigError, match="valid"):
        BlitzNetConfig.from_dict({"chanels": 3})


@pytest.mark.parametrize("override, message", [
    ("learner.distill=false", "learner.distill must be str"),  # was a bool; now l2 | none as in incdet
    ("learner.distill=kd", "learner.distill must be one of 'l2', 'none', got 'kd'"),
    ("learner.distill_rois=0", "learner.distill_rois must be >= 1 and <= 128, got 0"),
    ("learner.distill_sample=64", "unknown key learner.distill_sample"),  # renamed distill_rois
    ("learner.nms_iou=1.5", "learner.nms_iou must be > 0 and <= 1, got 1.5"),
    ("learner.score_thresh=-0.1", "learner.score_thresh must be >= 0 and < 1, got -0.1"),
    ("learner.neg_pos_ratio=0", "learner.neg_pos_ratio must be > 0, got 0"),
    ("learner.max_expand=0.5", "learner.max_expand must be >= 1, got 0.5"),
    ("learner.nms_method=fast", "learner.nms_method must be one of 'auto', 'cluster', 'batched', got 'fast'"),
    ("learner.model.channels=0", "learner.model.channels must be >= 1, got 0"),
    ("learner.model.min_scale=0", "learner.model.min_scale must be > 0, got 0"),
    ("learner.model.max_scale=0.1", "learner.model.max_scale must be >= 0.2, got 0.1"),
    ("learner.model.final_stride=16", "learner.model.final_stride must be one of 4, 8, got 16"),
    ("learner.model.aspect_ratios=[2,-3]", "learner.model.aspect_ratios must be > 0, got -3"),
])
def test_bad_learner_values_name_key_and_range(override, message):
    """Value checks in ``__post_init__``: one ConfigError naming the key, the range and the file."""
    from incdet.engine.config import load_config
    from incdet.errors import ConfigError

    cfg = Path(__file__).resolve().parents[1] / "configs" / "blitznet" / "shapes_15+5.yaml"
    with pytest.raises(ConfigError) as e:
        load_config(cfg, [override])
    assert message in str(e.value) and str(cfg) in str(e.value)


@pytest.mark.parametrize("kw", [dict(fusion="resskip"), dict(fusion="plain"), dict(fusion="hourglass"),
                                dict(backbone="resnet50", backbone_width=16, input_size=96)])
def test_fold_batchnorm_same_outputs(kw):
    """Folding every BN into its convolution leaves the eval-mode outputs unchanged (float
    rounding) and no BatchNorm2d behind; BN statistics and affine made non-trivial first."""
    from blitznet.model import fold_batchnorm

    m = tiny(**kw)
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    with pytest.raises(ConfigError, match="training mode"):
        fold_batchnorm(m)
    m.eval()
    x = torch.randn(2, 3, m.config.input_size, m.config.input_size, generator=g)
    with torch.no_grad():
        ref = m(x)
        fold_batchnorm(m)
        got = m(x)
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())
    assert ref.keys() == got.keys()
    for k, v in ref.items():
        if isinstance(v, torch.Tensor):
            assert torch.allclose(v, got[k], rtol=1e-4, atol=1e-4 * float(v.abs().max())), k
