"""Fast R-CNN network, RoI sampling and distillation losses (tiny models, CPU)."""
from __future__ import annotations

import copy

import pytest
import torch

from incdet.models.fastrcnn import FastRCNN
from incdet.models.losses.distill import (
    candidate_pool,
    ce_distillation,
    distillation_loss,
    l2_distillation,
    select_distillation_rois,
)
from incdet.models.sampling import BoxCoder, SamplerConfig, sample_rois
from torchvision.ops import box_iou

from test_incdet_helpers import SynthBoxes, tiny_model_config


def _inputs(n=2, k=20, seed=0):
    ds = SynthBoxes(n, seed=seed)
    g = torch.Generator().manual_seed(seed)
    images, props, targets = [], [], []
    for s in ds.items:
        jit = s.boxes.repeat(k // len(s.boxes) + 1, 1)[:k] + torch.randn((k, 4), generator=g) * 3
        jit[:, 2:] = torch.maximum(jit[:, 2:], jit[:, :2] + 2)
        images.append(s.image)
        props.append(jit.clamp(0, 63))
        targets.append({"boxes": s.boxes, "labels": s.labels})
    return images, props, targets


def test_train_and_eval_outputs():
    torch.manual_seed(0)
    m = FastRCNN(tiny_model_config(), num_classes=3)
    images, props, targets = _inputs()
    m.train()
    losses = m(images, props, targets)
    assert set(losses) == {"loss_cls", "loss_box"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    assert m.last_stats["num_fg"] > 0
    losses, (lg, dl) = m(images, props, targets, distill_rois=[p[:5] for p in props])
    assert lg.shape == (10, 4) and dl.shape == (10, 12)
    m.eval()
    dets = m(images, props)
    assert len(dets) == 2
    for d, im in zip(dets, images):
        assert d["boxes"].shape[1] == 4 and d["boxes"].shape[0] == d["labels"].shape[0] == d["scores"].shape[0]
        if d["boxes"].numel():
            assert d["labels"].min() >= 1 and d["labels"].max() <= 3
            assert d["boxes"][:, 2].max() <= im.shape[-1] - 1 and d["boxes"].min() >= 0
    # outputs are in the input image's coordinates, whatever the internal resize
    m.cfg.score_thresh = 0.0
    a = m.score_proposals(images[:1], props[:1])[0]
    assert a[0].shape == (20, 4) and a[1].shape == (20, 12)


def test_inference_nms_and_cap():
    torch.manual_seed(0)
    m = FastRCNN(tiny_model_config(score_thresh=0.0, detections_per_img=7), num_classes=2).eval()
    images, props, _ = _inputs(1, k=30)
    d = m(images, props)[0]
    assert d["boxes"].shape[0] <= 7
    for c in d["labels"].unique():
        b = d["boxes"][d["labels"] == c]
        iou = box_iou(b, b)
        iou.fill_diagonal_(0)
        assert (iou <= 0.3 + 1e-5).all()


def test_add_classes_keeps_old_outputs_bit_identical():
    torch.manual_seed(0)
    m = FastRCNN(tiny_model_config(), num_classes=2).eval()
    images, props, _ = _inputs(1)
    l0, d0 = m.score_proposals(images, props)[0]
    m.add_classes(3)
    assert m.num_classes == 5 and m.class_chunks == [2, 3]
    l1, d1 = m.score_proposals(images, props)[0]
    assert l1.shape == (20, 6) and d1.shape == (20, 20)
    assert torch.equal(l1[:, :3], l0) and torch.equal(d1[:, :8], d0)
    new_w = m.cls_score.chunks[1].weight
    assert 0.003 < new_w.std() < 0.03 and m.bbox_pred.chunks[1].weight.std() < 0.003
    # state dicts with more chunks load into a fresh model
    fresh = FastRCNN(tiny_model_config(), num_classes=2)
    fresh.load_state_dict(m.state_dict())
    assert fresh.class_chunks == [2, 3]


def test_sampling_fg_fraction_and_iou_thresholds():
    g = torch.Generator().manual_seed(0)
    gt = torch.tensor([[10.0, 10, 40, 40], [50, 50, 90, 80]])
    labels = torch.tensor([3, 1])
    xy = torch.rand((500, 2), generator=g) * 80
    wh = torch.rand((500, 2), generator=g) * 40 + 5
    props = torch.cat([xy, xy + wh], 1)
    props = torch.cat([props, gt.repeat(20, 1) + torch.randn((40, 4), generator=g).clamp(-2, 2)], 0)
    cfg = SamplerConfig(rois_per_image=64, fg_fraction=0.25, fg_iou=0.5, bg_iou_hi=0.5, bg_iou_lo=0.1)
    s = sample_rois(props, gt, labels, BoxCoder(), cfg, generator=g)
    iou = box_iou(s.rois, gt).max(1).values
    fg = s.labels > 0
    assert s.rois.shape[0] == 64 and int(fg.sum()) == 16
    assert (iou[fg] >= 0.5).all() and (iou[~fg] < 0.5).all() and (iou[~fg] >= 0.1).all()
    # a foreground RoI takes the label of its best-overlapping box and a zero target for bg
    best = box_iou(s.rois[fg], gt).argmax(1)
    assert torch.equal(s.labels[fg], labels[best])
    assert (s.targets[~fg] == 0).all()
    # decoding the targets recovers the matched gt
    dec = BoxCoder().decode(s.targets[fg], s.rois[fg])[:, 0]
    assert torch.allclose(dec, gt[best], atol=1e-3)
    # no gt at all -> background only; gt as proposals -> at least one exact positive
    s2 = sample_rois(props, torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.long), BoxCoder(), cfg)
    assert (s2.labels == 0).all() and s2.rois.shape[0] == 64
    far = torch.tensor([[0.0, 0, 5, 5]])
    cfg3 = SamplerConfig(add_gt_as_proposals=True)
    s3 = sample_rois(far, gt, labels, BoxCoder(), cfg3)
    assert s3.num_fg == 2


def test_gt_jitter_adds_positive_candidates():
    from incdet.models.sampling import jitter_boxes

    g = torch.Generator().manual_seed(0)
    gt = torch.tensor([[10.0, 10, 50, 40], [60, 20, 90, 80]])
    j = jitter_boxes(gt, 8, 0.15, generator=g)
    assert j.shape == (16, 4)
    assert (j[:, 2] > j[:, 0]).all() and (j[:, 3] > j[:, 1]).all()
    iou = box_iou(j, gt)
    assert (iou.argmax(1) == torch.arange(2).repeat_interleave(8)).all()
    assert (iou.max(1).values > 0.3).float().mean() > 0.8 and (iou.max(1).values < 0.999).all()
    far = torch.tensor([[0.0, 0, 5, 5]])
    cfg = SamplerConfig(rois_per_image=64, fg_fraction=0.5, gt_jitter=8)
    s = sample_rois(far, gt, torch.tensor([3, 1]), BoxCoder(), cfg, generator=g)
    assert s.num_fg >= 8  # the jittered copies with IoU >= 0.5 became positives
    assert jitter_boxes(gt, 0, 0.15).shape == (0, 4)


def _teacher_student(center_logits=None):
    torch.manual_seed(0)
    a = FastRCNN(tiny_model_config(), num_classes=2).eval()
    b = copy.deepcopy(a)
    b.add_classes(1)
    b.eval()
    return a, b


def test_distillation_zero_for_identical_networks_and_positive_after_perturbation():
    a, b = _teacher_student()
    images, props, _ = _inputs(1)
    with torch.no_grad():
        ta, da = a.score_proposals(images, props)[0]
        sb, db = b.score_proposals(images, props)[0]
    loss = l2_distillation(sb, db, ta, da)
    assert loss["loss_distill_cls"].item() == pytest.approx(0.0, abs=1e-10)
    assert loss["loss_distill_box"].item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        b.backbone.conv1.weight.add_(0.05 * torch.randn_like(b.backbone.conv1.weight))
        sb2, db2 = b.score_proposals(images, props)[0]
    loss2 = l2_distillation(sb2, db2, ta, da)
    assert loss2["loss_distill_cls"] > 1e-8 and loss2["loss_distill_box"] > 1e-10
    assert l2_distillation(sb2, db2, ta, da, box=False)["loss_distill_box"] == 0


def test_distillation_centring_semantics():
    torch.manual_seed(0)
    t = torch.randn(6, 3)  # background + 2 old classes
    td = torch.randn(6, 8)
    s = torch.cat([t + 5.0, torch.randn(6, 2)], 1)  # shifted by a constant, plus 2 new classes
    sd = torch.cat([td, torch.randn(6, 8)], 1)
    # a per-RoI constant shift of the old logits does not change the softmax: no loss
    assert l2_distillation(s, sd, t, td)["loss_distill_cls"].item() == pytest.approx(0.0, abs=1e-10)
    # the new-class logits do not enter the comparison with center="old"...
    s_new = s.clone()
    s_new[:, 3:] += 10.0
    assert l2_distillation(s_new, sd, t, td)["loss_distill_cls"].item() == pytest.approx(0.0, abs=1e-10)
    # ...but they do with the released code's centring over all student logits
    assert l2_distillation(s_new, sd, t, td, center="all")["loss_distill_cls"] > 1.0
    # explicit formula (norm="thesis", eq. 3.2): sums over RoIs and the 1 + n_old columns / the
    # old classes' deltas, divided by N |C_A| (the released code's means: test_incdet_distill_norm)
    s3 = torch.randn(6, 5)
    tb = t - t.mean(1, keepdim=True)
    sb = s3[:, :3] - s3[:, :3].mean(1, keepdim=True)
    got = l2_distillation(s3, sd, t, td)["loss_distill_cls"]
    assert torch.allclose(got, ((sb - tb) ** 2).sum() / (6 * 2))
    got_box = l2_distillation(s3, sd, t, td)["loss_distill_box"]
    assert torch.allclose(got_box, ((sd[:, :8] - td) ** 2).sum() / (6 * 2))
    # cross-entropy distillation is minimised by matching the teacher's distribution
    ce_same = ce_distillation(torch.cat([t, torch.full((6, 2), -30.0)], 1), t)
    ce_other = ce_distillation(torch.cat([-t, torch.full((6, 2), -30.0)], 1), t)
    assert ce_same < ce_other
    assert distillation_loss(s3, sd, t, td, kind="ce")["loss_distill_cls"] > 0


def test_distillation_roi_selection():
    torch.manual_seed(0)
    logits = torch.randn(300, 4)
    logits[:50, 0] = -10.0  # 50 clearly non-background proposals
    pool = candidate_pool(logits, 128, biased=True)
    bg = torch.softmax(logits, 1)[:, 0]
    assert pool.numel() == 128 and bg[pool].max() <= bg[~torch.isin(torch.arange(300), pool)].min()
    assert set(range(50)) <= set(pool.tolist())
    sel = select_distillation_rois(logits, 64, 128, biased=True)
    assert sel.numel() == 64 and sel.unique().numel() == 64 and torch.isin(sel, pool).all()
    unb = select_distillation_rois(logits, 64, 128, biased=False)
    assert unb.numel() == 64 and not torch.isin(unb, pool).all()
    few = select_distillation_rois(logits[:10], 64, 128)
    assert few.numel() == 10


def test_norm_modes_and_frozen_stem():
    for norm in ("gn", "bn", "frozen_bn"):
        m = FastRCNN(tiny_model_config(norm=norm, freeze_at=2), num_classes=1)
        assert not any(p.requires_grad for p in m.backbone.layer1.parameters())
        assert all(p.requires_grad for p in m.backbone.layer2.parameters())
    from torchvision.ops.misc import FrozenBatchNorm2d

    m = FastRCNN(tiny_model_config(norm="frozen_bn"))
    assert isinstance(m.backbone.bn1, FrozenBatchNorm2d)


def test_loads_torchvision_resnet_weights(tmp_path):
    import torchvision

    tv = torchvision.models.resnet18(weights=None)
    p = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), p)
    m = FastRCNN(tiny_model_config(width=64, weights=str(p)), num_classes=1)
    # thesis 3.4.2: all layers fine-tuned (only the frozen BatchNorm fixed), also with weights
    assert m.cfg.resolved_norm == "frozen_bn" and m.cfg.resolved_freeze_at == 0
    assert all(p.requires_grad for p in m.backbone.parameters())
    assert torch.equal(m.backbone.layer3[0].conv1.weight, tv.layer3[0].conv1.weight)
    from incdet.errors import CheckpointError

    torch.save({"conv1.weight": torch.zeros(3)}, p)
    with pytest.raises(CheckpointError, match="r18.pth"):
        FastRCNN(tiny_model_config(width=64, weights=str(p)))


def test_few_iterations_reduce_the_loss():
    torch.manual_seed(0)
    m = FastRCNN(tiny_model_config(), num_classes=2).train()
    images, props, targets = _inputs(2, k=24, seed=3)
    opt = torch.optim.SGD(m.parameters(), lr=0.02, momentum=0.9)
    first = None
    for _ in range(30):
        torch.manual_seed(1)  # same RoI sample each iteration
        loss = sum(m(images, props, targets).values())
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.6 * first
