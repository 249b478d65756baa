"""BlitzNet losses: SSD matching + multibox loss, segmentation cross-entropy, distillation.

Targets (one dict per image, as produced by :mod:`blitznet.augment`): ``boxes`` ``[G, 4]``
xyxy in network-input pixels, ``labels`` ``[G]`` (1-based), ``difficult``/``ignore`` ``[G]``
bool, ``mask`` ``[H, W]`` uint8 (255 void) or ``None``, ``has_det`` bool (the image carries
box annotations; segmentation-only images set it False and give no detection loss).

Matching (SSD): an anchor is positive for the ground truth it overlaps most when that IoU is
>= ``pos_iou`` (0.5); additionally every ground truth is forced onto its best anchor.
``ignore`` (crowd) boxes, and ``difficult`` boxes unless ``difficult_as_positive``, are never
matched: anchors overlapping them with IoU >= ``pos_iou`` that are not positive for another
box are ignored (neither positive nor negative), mirroring VOC evaluation where difficult
objects are neither hits nor misses.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from incdet.errors import DataError

VARIANCES = (0.1, 0.2)


def _cxcywh(b: Tensor) -> Tensor:
    return torch.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2,
                        b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]], -1)


def encode_boxes(gt: Tensor, anchors: Tensor, variances=VARIANCES) -> Tensor:
    """SSD encoding of xyxy ``gt`` w.r.t. xyxy ``anchors`` (same shape)."""
    g, a = _cxcywh(gt), _cxcywh(anchors)
    awh = a[..., 2:].clamp(min=1e-6)
    d_xy = (g[..., :2] - a[..., :2]) / (variances[0] * awh)
    d_wh = torch.log(g[..., 2:].clamp(min=1e-6) / awh) / variances[1]
    return torch.cat([d_xy, d_wh], -1)


def decode_boxes(deltas: Tensor, anchors: Tensor, variances=VARIANCES) -> Tensor:
    """Inverse of :func:`encode_boxes`; ``deltas`` ``[..., N, 4]``, ``anchors`` ``[N, 4]``."""
    a = _cxcywh(anchors)
    xy = a[..., :2] + deltas[..., :2] * variances[0] * a[..., 2:]
    wh = a[..., 2:] * torch.exp(deltas[..., 2:].clamp(max=10.0) * variances[1])
    return torch.cat([xy - wh / 2, xy + wh / 2], -1)


def match_anchors(anchors: Tensor, boxes: Tensor, labels: Tensor, unmatched: Optional[Tensor] = None,
                  pos_iou: float = 0.5):
    """SSD matching. Returns ``(anchor_labels [N], matched_boxes [N, 4])`` where label 0 is
    background, -1 ignored, k > 0 the class. ``unmatched`` marks boxes that must not be used as
    positives (crowd / difficult): they only turn overlapping negatives into ignored anchors."""
    N = anchors.shape[0]
    lab = torch.zeros(N, dtype=torch.long, device=anchors.device)
    matched = anchors.new_zeros((N, 4))
    if boxes.numel() == 0:
        return lab, matched
    if unmatched is None:
        unmatched = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    iou = box_iou(boxes, anchors)  # [G, N]
    use = ~unmatched
    if use.any():
        iu = iou[use]
        b_use, l_use = boxes[use], labels[use]
        best, idx = iu.max(0)
        forced = iu.argmax(1)  # best anchor of every ground truth
        best[forced] = 2.0
        idx[forced] = torch.arange(len(forced), device=idx.device)
        pos = best >= pos_iou
        lab[pos] = l_use[idx[pos]]
        matched = b_use[idx]
    if unmatched.any():
        ign = (iou[unmatched].max(0).values >= pos_iou) & (lab == 0)
        lab[ign] = -1
    return lab, matched


def detection_loss(cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor, targets: Sequence[dict],
                   neg_pos_ratio: float = 3.0, min_negatives: int = 0, pos_iou: float = 0.5,
                   difficult_as_positive: bool = False) -> Dict[str, Tensor]:
    """SSD multibox loss: smooth-L1 on positives + cross-entropy with hard negative mining
    (the ``neg_pos_ratio * n_pos`` highest-loss negatives of each image, at least
    ``min_negatives``); both summed and divided by the number of positives in the batch."""
    B, N, K = cls_logits.shape
    labels, loc_t = [], []
    for i, t in enumerate(targets):
        if not t.get("has_det", True):
            labels.append(torch.full((N,), -1, dtype=torch.long, device=anchors.device))
            loc_t.append(anchors.new_zeros((N, 4)))
            continue
        lb = t["labels"].to(anchors.device)
        if lb.numel() and (int(lb.max()) >= K or int(lb.min()) < 1):
            raise DataError(f"image {t.get('image_id', i)!r}: box label outside 1..{K - 1}")
        unm = t.get("ignore")
        unm = torch.zeros(len(lb), dtype=torch.bool, device=anchors.device) if unm is None else unm.to(anchors.device).bool()
        if not difficult_as_positive and t.get("difficult") is not None:
            unm = unm | t["difficult"].to(anchors.device).bool()
        l, m = match_anchors(anchors, t["boxes"].to(anchors), lb, unm, pos_iou)
        labels.append(l)
        loc_t.append(encode_boxes(m, anchors))
    labels = torch.stack(labels)
    loc_t = torch.stack(loc_t)
    pos = labels > 0
    n_pos_img = pos.sum(1)
    n_pos = n_pos_img.sum().clamp(min=1).to(cls_logits.dtype)
    loss_box = F.smooth_l1_loss(box_deltas[pos].float(), loc_t[pos].float(), reduction="sum", beta=1.0) / n_pos
    ce = F.cross_entropy(cls_logits.float().reshape(-1, K), labels.clamp(min=0).reshape(-1), reduction="none").view(B, N)
    cand = labels == 0
    with torch.no_grad():
        neg_loss = torch.where(cand, ce, torch.full_like(ce, -1.0))
        order = neg_loss.argsort(1, descending=True)
        rank = order.argsort(1)
        n_neg = torch.clamp(n_pos_img * neg_pos_ratio, min=min_negatives).long()
        n_neg = torch.minimum(n_neg, cand.sum(1))
        neg = (rank < n_neg.unsqueeze(1)) & cand
    loss_cls = ce[pos | neg].sum() / n_pos
    return {"loss_cls": loss_cls, "loss_box": loss_box}


def segmentation_loss(seg_logits: Tensor, targets: Sequence[dict]) -> Tensor:
    """Pixel cross-entropy (255 ignored) over the images that have a mask; the logits are
    upsampled bilinearly to the mask size. Zero (still part of the graph) without masks."""
    K = seg_logits.shape[1]
    idx = [i for i, t in enumerate(targets) if t.get("mask") is not None]
    if not idx:
        return seg_logits.sum() * 0.0
    total, count = seg_logits.new_zeros((), dtype=torch.float32), 0
    masks = [targets[i]["mask"].to(seg_logits.device).long() for i in idx]
    for i, m in zip(idx, masks):
        bad = (m >= K) & (m != 255)
        if bad.any():
            raise DataError(f"image {targets[i].get('image_id', i)!r}: mask label {int(m[bad].max())} outside 0..{K - 1} (255 = void)")
    same = all(m.shape == masks[0].shape for m in masks)
    if same:
        lg = F.interpolate(seg_logits[idx].float(), size=masks[0].shape, mode="bilinear", align_corners=False)
        m = torch.stack(masks)
        total = F.cross_entropy(lg, m, ignore_index=255, reduction="sum")
        count = int((m != 255).sum())
    else:
        for i, m in zip(idx, masks):
            lg = F.interpolate(seg_logits[i:i + 1].float(), size=m.shape, mode="bilinear", align_corners=False)
            total = total + F.cross_entropy(lg, m[None], ignore_index=255, reduction="sum")
            count += int((m != 255).sum())
    return total / max(count, 1)


def _centred(x: Tensor, dim: int = -1) -> Tensor:
    return x - x.mean(dim, keepdim=True)


def distillation_loss(student: Dict[str, Tensor], teacher: Dict[str, Tensor], n_old: int,
                      pool: int = 128, sample: int = 64, generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
    """Frozen-teacher distillation for class-incremental BlitzNet (thesis ch. 3 transposed).

    ``n_old`` = foreground classes of the teacher. Detection: per image the ``pool`` anchors
    with the lowest teacher background probability, of which ``sample`` are drawn at random;
    L2 (mean squared error) between the mean-centred logits over (background + old classes)
    of student and teacher, and between their box offsets. Segmentation: L2 between the
    centred (background + old) logits at every pixel.
    """
    out: Dict[str, Tensor] = {}
    k = n_old + 1
    if "cls_logits" in teacher and "cls_logits" in student:
        t_cls = teacher["cls_logits"].float()[..., :k]
        B, N, _ = t_cls.shape
        p = min(pool, N)
        bg = t_cls.softmax(-1)[..., 0]
        cand = (-bg).topk(p, dim=1).indices  # [B, p]
        s = min(sample, p)
        r = torch.rand(B, p, generator=generator).to(cand.device) if generator is not None else torch.rand(B, p, device=cand.device)
        sel = cand.gather(1, r.argsort(1)[:, :s])  # [B, s]
        gi = sel.unsqueeze(-1)
        s_cls = student["cls_logits"].float()[..., :k].gather(1, gi.expand(-1, -1, k))
        t_sel = t_cls.gather(1, gi.expand(-1, -1, k))
        out["loss_distill_cls"] = F.mse_loss(_centred(s_cls), _centred(t_sel))
        s_box = student["box_deltas"].float().gather(1, gi.expand(-1, -1, 4))
        t_box = teacher["box_deltas"].float().gather(1, gi.expand(-1, -1, 4))
        out["loss_distill_box"] = F.mse_loss(s_box, t_box)
    if "seg_logits" in teacher and "seg_logits" in student:
        out["loss_distill_seg"] = F.mse_loss(_centred(student["seg_logits"].float()[:, :k], 1),
                                             _centred(teacher["seg_logits"].float()[:, :k], 1))
    return out
