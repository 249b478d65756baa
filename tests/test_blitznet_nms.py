"""Capped fast NMS: same kept boxes as a per-class loop, caps respected."""
from __future__ import annotations

import pytest
import torch

from blitznet.nms import capped_nms, capped_nms_single, cluster_nms_keep, reference_capped_nms, uncapped_nms


def _random_case(seed: int, N: int = 3000, C: int = 6, clustered: bool = True):
    g = torch.Generator().manual_seed(seed)
    if clustered:  # many overlapping boxes around a few centres, like dense anchor outputs
        centres = torch.rand(20, 2, generator=g) * 200
        xy = centres[torch.randint(0, 20, (N,), generator=g)] + torch.randn(N, 2, generator=g) * 8
    else:
        xy = torch.rand(N, 2, generator=g) * 200
    wh = torch.rand(N, 2, generator=g) * 40 + 4
    boxes = torch.cat([xy, xy + wh], 1)
    scores = (torch.randn(N, C + 1, generator=g) * 3).softmax(-1)[:, 1:]
    return boxes, scores


@pytest.mark.parametrize("method", ["cluster", "batched"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_capped_nms_equals_per_class_loop(method, seed):
    boxes, scores = _random_case(seed, clustered=seed != 2)
    kw = dict(score_thresh=0.01, pre_nms_top=400, iou_thresh=0.45, per_class=50, max_det=200)
    b, s, c = capped_nms_single(boxes, scores, method=method, **kw)
    rb, rs, rc = reference_capped_nms(boxes, scores, **kw)
    assert len(b) == len(rb)
    assert torch.equal(c, rc) and torch.equal(s, rs) and torch.equal(b, rb)


@pytest.mark.parametrize("method", ["cluster", "batched"])
def test_caps_respected(method):
    boxes, scores = _random_case(3, N=2000, C=5, clustered=False)
    b, s, c = capped_nms_single(boxes, scores, pre_nms_top=100, per_class=7, max_det=20, method=method)
    assert len(b) == 20
    assert torch.bincount(c, minlength=5).max() <= 7
    assert (s[:-1] >= s[1:]).all()
    b, s, c = capped_nms_single(boxes, scores, per_class=3, max_det=1000, method=method)
    assert torch.equal(torch.bincount(c, minlength=5), torch.full((5,), 3))
    # score threshold: nothing above it -> nothing kept
    b, s, c = capped_nms_single(boxes, scores * 0.001, method=method)
    assert len(b) == 0


def test_cluster_keep_is_greedy_nms():
    import torchvision

    boxes, _ = _random_case(4, N=300, C=1)
    keep = cluster_nms_keep(boxes, 0.5)  # boxes taken as already sorted
    ref = torchvision.ops.nms(boxes, torch.linspace(1, 0, len(boxes)), 0.5)
    assert torch.equal(keep.nonzero().flatten(), ref.sort().values)


def test_batched_wrapper_and_class_specific_boxes():
    boxes, scores = _random_case(5, N=500, C=3)
    out = capped_nms(torch.stack([boxes, boxes]), torch.stack([scores, scores]))
    assert len(out) == 2 and torch.equal(out[0][0], out[1][0])
    cs_boxes = boxes[:, None, :].expand(-1, 3, -1) + torch.arange(3.0).view(1, 3, 1)
    b, s, c = capped_nms_single(cs_boxes, scores)
    rb, rs, rc = reference_capped_nms(cs_boxes, scores)
    assert torch.equal(b, rb) and torch.equal(c, rc)


def test_uncapped_baseline_agrees_on_top_detections():
    boxes, scores = _random_case(6, N=1500, C=4)
    ub, us, uc = uncapped_nms(boxes, scores, max_det=200)
    cb, cs, cc = capped_nms_single(boxes, scores, max_det=200)
    # the strongest detections never depend on the caps
    assert torch.equal(ub[:20], cb[:20]) and torch.equal(uc[:20], cc[:20])
