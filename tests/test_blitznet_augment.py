"""SSD augmentation keeps image, boxes and mask consistent."""
from __future__ import annotations

import torch

from blitznet.augment import ResizeOnly, SSDAugment
from incdet.data import Sample


def _sample(H=90, W=120):
    img = torch.zeros(3, H, W, dtype=torch.uint8)
    mask = torch.zeros(H, W, dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 15, 49, 64], [70, 20, 109, 79]])
    for k, b in enumerate(boxes.long()):
        img[k, b[1]:b[3] + 1, b[0]:b[2] + 1] = 255
        mask[b[1]:b[3] + 1, b[0]:b[2] + 1] = k + 1
    return Sample(image=img, boxes=boxes, labels=torch.tensor([1, 2]), difficult=torch.tensor([False, True]),
                  mask=mask, image_id="a")


def test_ssd_augment_consistent():
    aug = SSDAugment(48, seed=0, photometric=False)
    s = _sample()
    seen_flip = seen_crop = False
    for i in range(40):
        aug.reseed(i)
        img, t = aug(s)
        assert img.shape == (3, 48, 48) and img.dtype == torch.uint8
        assert t["mask"].shape == (48, 48)
        assert len(t["boxes"]) == len(t["labels"]) == len(t["difficult"])
        for b, l, d in zip(t["boxes"], t["labels"], t["difficult"]):
            assert bool(d) == (int(l) == 2)  # per-box fields follow their box
            ys, xs = (t["mask"] == l).nonzero(as_tuple=True)
            assert len(xs)
            box_from_mask = torch.tensor([xs.min(), ys.min(), xs.max(), ys.max()], dtype=torch.float32)
            assert (box_from_mask - b).abs().max() <= 1.5, (i, b, box_from_mask)
            ch = int(l) - 1  # the object colour is in channel l-1
            cx, cy = int((b[0] + b[2]) / 2), int((b[1] + b[3]) / 2)
            assert img[ch, cy, cx] > 128 and t["mask"][cy, cx] == l
        if len(t["boxes"]) == 2 and t["boxes"][0, 0] > t["boxes"][1, 0]:
            seen_flip = True
        if len(t["boxes"]) < 2 or (t["mask"] == 255).any() or t["boxes"][:, 2:].sub(t["boxes"][:, :2]).max() > 30:
            seen_crop = True
    assert seen_flip and seen_crop


def test_resize_only_and_maskless_sample():
    s = _sample()
    s.mask = None
    img, t = ResizeOnly(60)(s)
    assert img.shape == (3, 60, 60) and t["mask"] is None and t["has_det"]
    assert torch.allclose(t["boxes"][0], torch.tensor([5.0, 10, 24.0, 42.3333]), atol=0.05)


def test_segmentation_only_sample_flagged():
    s = _sample()
    s2 = Sample(image=s.image, mask=s.mask, image_id="seg")
    _, t = ResizeOnly(32)(s2)
    assert t["has_det"] is False and len(t["boxes"]) == 0
