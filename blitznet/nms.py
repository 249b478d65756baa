"""Capped fast NMS (thesis C.3.5).

Per class: keep scores > ``score_thresh`` (0.01), pre-select the ``pre_nms_top`` (400) best,
NMS at ``iou_thresh`` (0.45) keeping at most ``per_class`` (50); then the ``max_det`` (200)
best per image. Two vectorised implementations, both exactly greedy NMS (same kept boxes as
the per-class loop :func:`reference_capped_nms`):

- ``method="cluster"`` (default on CUDA): Cluster-NMS (Zheng et al., 2020) on the ``[C, K, K]`` IoU
  tensor of the capped candidates -- iterated matrix suppression that converges to the
  greedy result; all classes at once, no loop over classes or boxes.
- ``method="batched"`` (default on CPU): one ``torchvision.ops.nms`` call per image over all classes' capped
  candidates, classes separated by the coordinate-offset trick (``batched_nms``' own trick,
  called directly: on CPU ``batched_nms`` switches to a Python loop over classes above 1,000
  boxes).

Batches (issue 18): :func:`capped_nms` / :func:`capped_nms_flat` process the ``B`` images of a
batch in one go -- one top-k over ``[B, C, N]``, then one Cluster-NMS over ``[B, C, k, k]`` or
one ``torchvision.ops.nms`` call with boxes offset per (image, class) -- with no Python loop
over images (except the ``batched`` method on CPU, where torchvision's NMS kernel is quadratic
in the boxes of one call: there it runs one call per image, everything around it batched); :func:`capped_nms_per_image` is the per-image loop it replaces. Both give the same
detections per image (same boxes, scores, labels, order; ties in score aside). The offset
trick runs in float64 so that shifted widths stay exact and the IoUs do not depend on the
offsets (in float32, coordinates offset by tens of thousands would round).

:func:`uncapped_nms` is the baseline: ``torchvision.ops.batched_nms`` over every candidate
above the score threshold, then the best ``max_det``.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torchvision
from torch import Tensor

#: ``method="batched"`` on CPU: one NMS call per image (True) or one for the batch (False, what
#: CUDA does; same results, slower on CPU).
CPU_NMS_PER_IMAGE = True

Detections = Tuple[Tensor, Tensor, Tensor]  # boxes [K, 4], scores [K], labels [K] (0-based class)


def _pairwise_iou(boxes: Tensor) -> Tensor:
    """IoU between all pairs in ``[..., K, 4]`` -> ``[..., K, K]`` (torchvision's convention)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    area = (x2 - x1) * (y2 - y1)
    iw = (torch.minimum(x2[..., :, None], x2[..., None, :]) - torch.maximum(x1[..., :, None], x1[..., None, :])).clamp_(min=0)
    ih = (torch.minimum(y2[..., :, None], y2[..., None, :]) - torch.maximum(y1[..., :, None], y1[..., None, :])).clamp_(min=0)
    inter = iw.mul_(ih)
    union = (area[..., :, None] + area[..., None, :]).sub_(inter).clamp_(min=1e-12)
    return inter.div_(union)


def cluster_nms_keep(boxes: Tensor, iou_thresh: float) -> Tensor:
    """Greedy-NMS keep mask for score-sorted boxes ``[..., K, 4]`` (each leading index is an
    independent group), computed by Cluster-NMS matrix iterations."""
    K = boxes.shape[-2]
    if K == 0:
        return torch.zeros(boxes.shape[:-1], dtype=torch.bool, device=boxes.device)
    iou = _pairwise_iou(boxes).triu_(diagonal=1)  # iou[i, j]: higher-scored i may suppress j
    sup = iou
    keep = None
    for _ in range(K):
        keep = sup.amax(dim=-2) <= iou_thresh  # j kept if no kept higher box overlaps it
        nxt = iou * keep.unsqueeze(-1).to(iou.dtype)  # only kept boxes suppress
        if torch.equal(nxt, sup):
            break
        sup = nxt
    return keep


def _topk_candidates(boxes: Tensor, scores: Tensor, k: int):
    """Per-class top-k: scores ``[N, C]`` -> values/indices ``[C, k]`` and boxes ``[C, k, 4]``."""
    vals, idx = scores.t().topk(k, dim=1)  # sorted descending
    if boxes.dim() == 2:
        cand = boxes[idx]  # [C, k, 4]
    else:  # class-specific boxes [N, C, 4]
        cand = boxes.permute(1, 0, 2).gather(1, idx.unsqueeze(-1).expand(-1, -1, 4))
    return vals, idx, cand


def _rank_within_group(groups: Tensor) -> Tensor:
    """Position of each element among earlier elements of the same group (0-based)."""
    if groups.numel() == 0:
        return groups
    order = torch.argsort(groups, stable=True)
    g = groups[order]
    counts = torch.bincount(g)
    starts = torch.cumsum(counts, 0) - counts
    ranks_sorted = torch.arange(g.numel(), device=g.device) - starts[g]
    ranks = torch.empty_like(ranks_sorted)
    ranks[order] = ranks_sorted
    return ranks


def capped_nms_single(boxes: Tensor, scores: Tensor, score_thresh: float = 0.01, pre_nms_top: int = 400,
                      iou_thresh: float = 0.45, per_class: int = 50, max_det: int = 200,
                      method: str = "auto") -> Detections:
    """Capped NMS for one image. ``boxes`` ``[N, 4]`` (shared by classes) or ``[N, C, 4]``,
    ``scores`` ``[N, C]`` foreground probabilities. Returns detections sorted by score.
    ``method="auto"``: ``cluster`` on CUDA, ``batched`` on CPU (faster there)."""
    if method == "auto":
        method = "cluster" if scores.is_cuda else "batched"
    N, C = scores.shape
    k = min(pre_nms_top, N)
    if k == 0 or C == 0:
        e = scores.new_zeros((0,))
        return boxes.new_zeros((0, 4)), e, e.long()
    vals, _, cand = _topk_candidates(boxes, scores, k)  # [C, k], [C, k, 4]
    valid = vals > score_thresh
    if method == "cluster":
        keep = cluster_nms_keep(cand, iou_thresh) & valid
        keep &= torch.cumsum(keep, dim=1) <= per_class
        flat_scores = torch.where(keep, vals, torch.full_like(vals, -1.0)).reshape(-1)
        n = min(max_det, int(keep.sum()))
        top_s, top_i = flat_scores.topk(n)
        return cand.reshape(-1, 4)[top_i], top_s, top_i // k
    if method == "batched":
        cls = torch.arange(C, device=scores.device).unsqueeze(1).expand(C, k)
        b, s, c = cand[valid], vals[valid], cls[valid]
        if b.numel() == 0:
            return b.reshape(0, 4), s, c
        keep = _offset_nms(b, s, c, iou_thresh)  # sorted by score
        keep = keep[_rank_within_group(c[keep]) < per_class][:max_det]
        return b[keep], s[keep], c[keep]
    raise ValueError(f"unknown NMS method {method!r}; known: auto, cluster, batched")


def _offset_nms(b: Tensor, s: Tensor, group: Tensor, iou_thresh: float) -> Tensor:
    """``torchvision.ops.nms`` within groups (``batched_nms``' coordinate-offset trick), in
    float64: keep indices sorted by decreasing score."""
    b64 = b.double()
    lo, span = b64.min(), b64.max() - b64.min() + 1
    return torchvision.ops.nms(b64 + (group.double() * span - lo).unsqueeze(1), s.double(), iou_thresh)


def capped_nms_flat(boxes: Tensor, scores: Tensor, score_thresh: float = 0.01, pre_nms_top: int = 400,
                    iou_thresh: float = 0.45, per_class: int = 50, max_det: int = 200,
                    method: str = "auto") -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Capped NMS for a whole batch, no loop over images. ``boxes`` ``[B, N, 4]`` (shared by
    classes) or ``[B, N, C, 4]``, ``scores`` ``[B, N, C]``. Returns flat ``boxes [K, 4]``,
    ``scores [K]``, ``labels [K]`` (0-based class) and ``image [K]`` (index in the batch),
    grouped by image (ascending) and sorted by decreasing score within an image: per image,
    exactly what :func:`capped_nms_single` returns."""
    if method == "auto":
        method = "cluster" if scores.is_cuda else "batched"
    if method not in ("cluster", "batched"):
        raise ValueError(f"unknown NMS method {method!r}; known: auto, cluster, batched")
    B, N, C = scores.shape
    k = min(pre_nms_top, N)
    dev = scores.device
    if B == 0 or k == 0 or C == 0:
        e = scores.new_zeros((0,))
        return boxes.new_zeros((0, 4)), e, e.long(), e.long()
    vals, idx = scores.transpose(1, 2).topk(k, dim=2)  # [B, C, k], sorted descending
    if boxes.dim() == 3:
        cand = boxes.gather(1, idx.reshape(B, C * k, 1).expand(-1, -1, 4)).view(B, C, k, 4)
    else:  # class-specific boxes [B, N, C, 4]
        cand = boxes.permute(0, 2, 1, 3).gather(2, idx.unsqueeze(-1).expand(-1, -1, -1, 4))
    valid = vals > score_thresh
    if method == "cluster":
        keep = cluster_nms_keep(cand, iou_thresh) & valid
        keep &= torch.cumsum(keep, dim=2) <= per_class
        flat = torch.where(keep, vals, torch.full_like(vals, -1.0)).reshape(B, C * k)
        top_s, top_i = flat.topk(min(max_det, C * k), dim=1)  # [B, n]
        ok = keep.reshape(B, C * k).gather(1, top_i)  # the kept ones come first in every row
        top_b = cand.reshape(B, C * k, 4).gather(1, top_i.unsqueeze(-1).expand(-1, -1, 4))
        img = torch.arange(B, device=dev).unsqueeze(1).expand_as(top_i)
        return top_b[ok], top_s[ok], (top_i // k)[ok], img[ok]
    cls = torch.arange(C, device=dev).view(1, C, 1).expand(B, C, k)
    img = torch.arange(B, device=dev).view(B, 1, 1).expand(B, C, k)
    b, s, c, im = cand[valid], vals[valid], cls[valid], img[valid]
    if b.numel() == 0:
        return b.reshape(0, 4), s, c, im
    if b.is_cuda or B == 1 or not CPU_NMS_PER_IMAGE:
        keep = _offset_nms(b, s, im * C + c, iou_thresh)  # sorted by score over the whole batch
    else:
        # CPU: torchvision's CPU NMS compares every kept box with every later box, offsets or
        # not, so one call over B images costs ~B times the B per-image calls; candidates are
        # image-major here: one call per image's slice (sorted by score within each image).
        counts = torch.bincount(im, minlength=B).tolist()
        keeps, start = [], 0
        for n_i in counts:
            if n_i:
                sl = slice(start, start + n_i)
                keeps.append(_offset_nms(b[sl], s[sl], c[sl], iou_thresh) + start)
            start += n_i
        keep = torch.cat(keeps)
    keep = keep[_rank_within_group((im * C + c)[keep]) < per_class]
    keep = keep[_rank_within_group(im[keep]) < max_det]
    keep = keep[torch.argsort(im[keep], stable=True)]  # group by image, score order kept within
    return b[keep], s[keep], c[keep], im[keep]


def split_by_image(image: Tensor, n_images: int, *tensors: Tensor) -> List[Tuple[Tensor, ...]]:
    """Flat per-detection tensors grouped by ``image`` (ascending) -> one tuple per image."""
    counts = torch.bincount(image, minlength=n_images).tolist() if image.numel() else [0] * n_images
    parts = [t.split(counts) for t in tensors]
    return [tuple(p[i] for p in parts) for i in range(n_images)]


def capped_nms(boxes: Tensor, scores: Tensor, **kw) -> List[Detections]:
    """Batched capped NMS (:func:`capped_nms_flat`, one call for the batch): ``boxes``
    ``[B, N, 4]`` or ``[B, N, C, 4]``, ``scores`` ``[B, N, C]`` -> one detections tuple per
    image, equal to :func:`capped_nms_per_image`'s."""
    b, s, c, im = capped_nms_flat(boxes, scores, **kw)
    return split_by_image(im, scores.shape[0], b, s, c)


def capped_nms_per_image(boxes: Tensor, scores: Tensor, **kw) -> List[Detections]:
    """The per-image loop (:func:`capped_nms_single` on each image): reference for tests and
    benchmarks of :func:`capped_nms`."""
    return [capped_nms_single(boxes[i], scores[i], **kw) for i in range(scores.shape[0])]


def reference_capped_nms(boxes: Tensor, scores: Tensor, score_thresh: float = 0.01, pre_nms_top: int = 400,
                         iou_thresh: float = 0.45, per_class: int = 50, max_det: int = 200) -> Detections:
    """The capped NMS written as a plain loop over classes (reference for tests/benchmarks)."""
    out_b, out_s, out_c = [], [], []
    for c in range(scores.shape[1]):
        s = scores[:, c]
        m = s > score_thresh
        b, s = (boxes[m] if boxes.dim() == 2 else boxes[m, c]), s[m]
        s, order = s.sort(descending=True)
        b, s = b[order[:pre_nms_top]], s[:pre_nms_top]
        keep = torchvision.ops.nms(b, s, iou_thresh)[:per_class]
        out_b.append(b[keep]); out_s.append(s[keep]); out_c.append(torch.full_like(keep, c))
    b, s, c = torch.cat(out_b), torch.cat(out_s), torch.cat(out_c)
    s, order = s.sort(descending=True)
    order = order[:max_det]
    return b[order], s[:max_det], c[order]


def uncapped_nms(boxes: Tensor, scores: Tensor, score_thresh: float = 0.01, iou_thresh: float = 0.45,
                 max_det: int = 200) -> Detections:
    """Baseline: ``torchvision.ops.batched_nms`` over all candidates above the threshold."""
    N, C = scores.shape
    m = scores > score_thresh
    n_idx, c_idx = m.nonzero(as_tuple=True)
    b = boxes[n_idx] if boxes.dim() == 2 else boxes[n_idx, c_idx]
    s = scores[n_idx, c_idx]
    keep = torchvision.ops.batched_nms(b, s, c_idx, iou_thresh)[:max_det]
    return b[keep], s[keep], c_idx[keep]
