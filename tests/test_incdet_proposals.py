"""Proposal generation, files and bad-input handling."""
from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from incdet.errors import DataError
from incdet.models.cli import main as models_main
from incdet.models.dataset import ProposalDetectionDataset
from incdet.models.proposals import (
    ProposalSource,
    filter_proposals,
    load_detectron2_pkl,
    save_npz,
    selective_search,
    sliding_window_proposals,
    validate_boxes,
)

from test_incdet_helpers import SynthBoxes


def test_selective_search_on_a_small_image():
    s = SynthBoxes(1, size=64, seed=5).items[0]
    img = s.image.permute(1, 2, 0).numpy().copy()
    boxes = selective_search(img, max_proposals=50)
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert 0 < len(boxes) <= 50
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes[:, 2].max() <= 63 and boxes[:, 3].max() <= 63
    # the drawn rectangle is found (IoU >= 0.7 with some proposal)
    from torchvision.ops import box_iou

    assert box_iou(s.boxes, torch.from_numpy(boxes)).max() >= 0.7


def test_sliding_window_fallback_is_deterministic():
    a = sliding_window_proposals(60, 80, max_proposals=300)
    b = sliding_window_proposals(60, 80, max_proposals=300)
    assert np.array_equal(a, b) and 0 < len(a) <= 300
    assert a[:, 2].max() <= 79 and a[:, 3].max() <= 59


def test_npz_roundtrip_and_filters(tmp_path):
    p = tmp_path / "props.npz"
    save_npz(p, {"a": np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 40]], np.float32), "b": np.zeros((0, 4))},
             meta={"method": "test"})
    src = ProposalSource(str(p), nms_iou=0.7)
    a = src.get("a", (50, 50))
    assert a.shape == (2, 4)  # the second box overlaps the first at IoU > 0.7
    assert src.get("b", (50, 50)).shape == (0, 4)
    assert ProposalSource(str(tmp_path)).get("a").shape == (3, 4)  # a directory of files
    assert filter_proposals(torch.tensor([[0.0, 0, 0.5, 10]]), min_size=1).shape == (0, 4)


@pytest.mark.parametrize(
    "boxes, msg",
    [
        (np.zeros((3, 5), np.float32), "shape"),
        (np.array([[0, 0, np.nan, 4]], np.float32), "NaN"),
        (np.array([[0, 0, 4, 4], [5, 5, 2, 9]], np.float32), "inverted"),
    ],
)
def test_bad_proposals_name_the_image(tmp_path, boxes, msg):
    p = tmp_path / "bad.npz"
    np.savez(p, img_007=boxes, ok=np.zeros((1, 4), np.float32) + [0, 0, 3, 3])
    src = ProposalSource(str(p))
    with pytest.raises(DataError, match=rf"img_007.*{msg}|{msg}.*img_007") as e:
        src.get("img_007", (20, 20))
    assert "bad.npz" in str(e.value)
    assert src.get("ok", (20, 20)).shape == (1, 4)


def test_missing_image_and_missing_file(tmp_path):
    p = tmp_path / "p.npz"
    save_npz(p, {"x": np.zeros((1, 4)) + [0, 0, 5, 5]})
    with pytest.raises(DataError, match="no proposals for image 'y'"):
        ProposalSource(str(p)).get("y")
    with pytest.raises(DataError, match="nope.npz"):
        ProposalSource(str(tmp_path / "nope.npz"))
    with pytest.raises(DataError, match="shape"):
        validate_boxes(np.zeros((4,)), "z", "here")


def test_detectron2_pkl_without_detectron2(tmp_path):
    # build a pickle whose bbox_mode is detectron2's BoxMode enum, then load it without detectron2
    import enum

    mod = types.ModuleType("detectron2.structures.boxes")

    class BoxMode(enum.IntEnum):
        XYXY_ABS = 0
        XYWH_ABS = 1

    BoxMode.__module__ = "detectron2.structures.boxes"
    BoxMode.__qualname__ = "BoxMode"
    mod.BoxMode = BoxMode
    for name in ("detectron2", "detectron2.structures", "detectron2.structures.boxes"):
        sys.modules.setdefault(name, mod if name.endswith("boxes") else types.ModuleType(name))
    try:
        data = {"ids": [7, 9], "boxes": [np.array([[1, 2, 3, 4], [0, 0, 10, 10]], np.float32), np.zeros((0, 4))],
                "objectness_logits": [np.array([0.1, 0.9]), np.zeros(0)], "bbox_mode": BoxMode.XYWH_ABS}
        with open(tmp_path / "d2.pkl", "wb") as f:
            pickle.dump(data, f)
    finally:
        for name in ("detectron2.structures.boxes", "detectron2.structures", "detectron2"):
            sys.modules.pop(name, None)
    got = load_detectron2_pkl(tmp_path / "d2.pkl")
    assert list(got) == ["7", "9"]
    # sorted by objectness, XYWH converted to XYXY
    assert np.allclose(got["7"], [[0, 0, 10, 10], [1, 2, 4, 6]])
    src = ProposalSource(str(tmp_path / "d2.pkl"))
    assert src.get(7, (20, 20)).shape == (2, 4)


def test_training_set_skips_images_without_proposals_or_positives(tmp_path, caplog):
    ds = SynthBoxes(4, seed=0)
    props = {}
    for k, s in enumerate(ds.items):
        if k == 0:
            props[s.image_id] = np.zeros((0, 4), np.float32)  # no proposals
        elif k == 1:
            props[s.image_id] = np.array([[0, 0, 2, 2]], np.float32)  # no positive
        else:
            props[s.image_id] = s.boxes.numpy()
    save_npz(tmp_path / "p.npz", props)
    with caplog.at_level("INFO"):
        tr = ProposalDetectionDataset(ds, ProposalSource(str(tmp_path / "p.npz")), flip_prob=1.0)
    assert len(tr) == 2 and tr.skipped == {"no_proposals": 1, "few_positives": 1}
    assert "skipped 2 of 4" in caplog.text
    it = tr[0]
    s = ds.items[2]
    assert it["flipped"] and torch.equal(it["image"], s.image.flip(-1))
    assert torch.allclose(it["boxes"][:, 0], 63 - s.boxes[:, 2]) and torch.allclose(it["proposals"], it["boxes"])


def _voc_dir(root, n=3):
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    ds = SynthBoxes(n, seed=9)
    ids = []
    for s in ds.items:
        Image.fromarray(s.image.permute(1, 2, 0).numpy()).save(root / "JPEGImages" / f"{s.image_id}.jpg")
        ids.append(s.image_id)
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids) + "\n")
    return ids


def test_cli_proposals(tmp_path, capsys):
    ids = _voc_dir(tmp_path / "voc")
    out = tmp_path / "p.npz"
    rc = models_main(["proposals", "--data", str(tmp_path / "voc"), "--split", "train", "--out", str(out),
                      "--workers", "1", "--quiet", "--max-proposals", "100"])
    assert rc == 0
    with np.load(out) as z:
        assert set(z.files) == set(ids) | {"__meta__"}
        assert all(0 < len(z[i]) <= 100 and z[i].shape[1] == 4 for i in ids)
    assert "3 images" in capsys.readouterr().out
    rc = models_main(["proposals", "--data", str(tmp_path / "nowhere"), "--split", "train", "--out", str(out)])
    assert rc == 2


@pytest.mark.timeout(120)
def test_parallel_computation_after_torch_ops(tmp_path):
    """Proposals computed in a forked pool after the parent used torch's thread pool (this used
    to hang: forked children must not reuse the parent's OpenMP pool)."""
    from incdet.models.dataset import ensure_computed

    torch.set_num_threads(2)
    torch.nn.functional.conv2d(torch.randn(2, 8, 64, 64), torch.randn(8, 8, 3, 3)).sum()
    torch.randn(3, 300, 300).permute(1, 2, 0).contiguous()  # a parallel copy in the parent
    ds = SynthBoxes(12, size=256, seed=4)  # big enough for the children's copies to go parallel
    src = ProposalSource("sliding_window", max_proposals=40, cache=str(tmp_path / "c.npz"))
    ensure_computed(src, ds, workers=2, progress=False)
    assert set(src.computed()) == {s.image_id for s in ds.items}
    again = ProposalSource("sliding_window", max_proposals=40, cache=str(tmp_path / "c.npz"))
    assert set(again.computed()) == set(src.computed())  # reloaded from the cache file
    assert again.get(ds.items[0].image_id).shape[0] > 0


def test_selective_search_is_reproducible():
    """OpenCV ranks regions with a random factor; two calls must give the same boxes in the same order."""
    s = SynthBoxes(1, size=64, seed=7).items[0]
    img = s.image.permute(1, 2, 0).numpy().copy()
    a = selective_search(img, max_proposals=200)
    np.random.seed(1)
    b = selective_search(img, max_proposals=200)
    np.testing.assert_array_equal(a, b)
