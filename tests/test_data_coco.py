"""COCO reader on ../shared/data/coco-tiny and on small hand-written json files."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from incdet.data import COCODetection
from incdet.errors import DataError


@pytest.fixture
def coco_val(coco_tiny_root):
    ann = coco_tiny_root / "annotations" / "instances_val2017.json"
    return ann, json.loads(ann.read_text()), COCODetection(ann, coco_tiny_root / "val2017")


def test_coco_tiny_counts_and_labels(coco_val):
    ann, data, ds = coco_val
    assert len(ds) == len(data["images"]) == 80
    assert ds.ids == sorted(im["id"] for im in data["images"])
    cats = sorted(data["categories"], key=lambda c: c["id"])
    assert ds.classes == [c["name"] for c in cats] and len(ds.classes) == 80
    assert ds.classes[0] == "person" and ds.classes[-1] == "toothbrush"
    label_of = {c["id"]: k + 1 for k, c in enumerate(cats)}
    by_img = {}
    for a in data["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    n = n_crowd = 0
    for i, img_id in enumerate(ds.ids):
        s = ds.annotation(i)
        ref = by_img.get(img_id, [])
        assert s.image is None and s.image_id == img_id and s.num_objects == len(ref)
        assert sorted(s.labels.tolist()) == sorted(label_of[a["category_id"]] for a in ref)
        assert int(s.ignore.sum()) == sum(a["iscrowd"] for a in ref)
        assert not s.difficult.any()
        n += s.num_objects
        n_crowd += int(s.ignore.sum())
    assert n == len(data["annotations"]) == 815 and n_crowd == 11
    all_labels = torch.cat([ds.annotation(i).labels for i in range(len(ds))])
    assert all_labels.min() >= 1 and all_labels.max() <= 80


def test_coco_tiny_known_box_and_mask(coco_val):
    ann, data, ds = coco_val
    a = data["annotations"][0]
    i = ds.ids.index(a["image_id"])
    s = ds[i]
    x, y, w, h = a["bbox"]
    match = (s.boxes - torch.tensor([x, y, x + w, y + h])).abs().sum(1) < 1e-3
    assert match.any()
    info = next(im for im in data["images"] if im["id"] == a["image_id"])
    assert s.orig_size == (info["height"], info["width"]) and tuple(s.image.shape) == (3, info["height"], info["width"])
    assert s.image.dtype == torch.uint8 and s.mask.dtype == torch.uint8 and tuple(s.mask.shape) == s.orig_size
    allowed = set(range(81)) | {255}
    crowd_imgs = {a["image_id"] for a in data["annotations"] if a["iscrowd"]}
    for j in range(0, len(ds), 8):
        sj = ds[j]
        vals = set(sj.mask.unique().tolist())
        assert vals <= allowed
        assert vals - {0, 255} <= set(sj.labels.tolist())
    for img_id in sorted(crowd_imgs)[:3]:
        assert (ds[ds.ids.index(img_id)].mask == 255).any()  # crowd regions are void


def test_coco_train_split_loads(coco_tiny_root):
    ann = coco_tiny_root / "annotations" / "instances_train2017.json"
    ds = COCODetection(ann, coco_tiny_root / "train2017", keep_masks=False)
    assert len(ds) == 80 and ds[0].mask is None


# ---- hand-made json -------------------------------------------------------------------
def _write(tmp_path, annotations, images=None, cats=None):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir(exist_ok=True)
    images = images or [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
                        {"id": 2, "file_name": "b.jpg", "width": 40, "height": 30}]
    for im in images:
        Image.new("RGB", (im["width"], im["height"]), (50, 60, 70)).save(img_dir / im["file_name"])
    cats = cats or [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    ann = tmp_path / "inst.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    return ann, img_dir


def _poly(x1, y1, x2, y2):
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def test_synthetic_masks_order_crowd_and_empty_images(tmp_path):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 30, 20], "area": 600.0, "iscrowd": 0,
         "segmentation": _poly(0, 0, 30, 20)},
        {"id": 2, "image_id": 1, "category_id": 18, "bbox": [5, 5, 10, 10], "area": 100.0, "iscrowd": 0,
         "segmentation": _poly(5, 5, 15, 15)},
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [32, 20, 8, 10], "area": 80.0, "iscrowd": 1,
         "segmentation": _poly(32, 20, 40, 30)},
    ]
    ann, img_dir = _write(tmp_path, anns)
    ds = COCODetection(ann, img_dir)
    assert ds.classes == ["person", "car", "dog"] and ds.cat_ids == [1, 3, 18]  # category-id order
    s = ds[0]
    assert s.boxes.tolist() == [[0, 0, 30, 20], [5, 5, 15, 15], [32, 20, 40, 30]]
    assert s.labels.tolist() == [1, 3, 2] and s.ignore.tolist() == [False, False, True]
    assert s.mask[10, 10] == 3  # small dog painted over the large person
    assert s.mask[2, 25] == 1 and s.mask[25, 5] == 0
    assert s.mask[25, 36] == 255  # crowd car -> void
    assert set(s.mask.unique().tolist()) == {0, 1, 2 + 1, 255}
    s2 = ds[1]  # image without annotations is kept
    assert s2.boxes.shape == (0, 4) and s2.labels.shape == (0,) and (s2.mask == 0).all()
    cls = COCODetection(ann, img_dir, crowd_mask="class")
    assert cls[0].mask[25, 36] == 2
    assert COCODetection(ann, img_dir, keep_masks=False)[0].mask is None


def test_synthetic_rle_and_missing_segmentation(tmp_path):
    from pycocotools import mask as mu

    m = np.zeros((30, 40), np.uint8, order="F")
    m[10:20, 20:30] = 1
    rle = mu.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode()
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [20, 10, 10, 10], "area": 100, "iscrowd": 0, "segmentation": rle},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0, "segmentation": []},
    ]
    ann, img_dir = _write(tmp_path, anns)
    s = COCODetection(ann, img_dir)[0]
    assert (s.mask[10:20, 20:30] == 2).all() and int((s.mask == 2).sum()) == 100
    assert (s.mask[0:4, 0:4] == 255).all()  # no segmentation: its box is void, not background


@pytest.mark.parametrize("bbox,msg", [([5, 5, 0, 10], "zero or negative box size"),
                                      ([5, 5, 10, -1], "zero or negative box size"),
                                      ([35, 5, 10, 10], "outside"),
                                      ([-3, 5, 10, 10], "outside")])
def test_bad_coco_boxes(tmp_path, caplog, bbox, msg):
    anns = [{"id": 7, "image_id": 2, "category_id": 1, "bbox": bbox, "area": 1, "iscrowd": 0, "segmentation": []}]
    ann, img_dir = _write(tmp_path, anns)
    with pytest.raises(DataError, match=msg) as e:
        COCODetection(ann, img_dir)
    assert "inst.json" in str(e.value) and "b.jpg" in str(e.value) and "annotation 7" in str(e.value)
    with caplog.at_level(logging.WARNING):
        ds = COCODetection(ann, img_dir, on_error="skip")
    assert ds.skipped == 1 and ds.ids == [1] and "b.jpg" in caplog.text


def test_bad_coco_files(tmp_path):
    ann, img_dir = _write(tmp_path, [])
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [')
    with pytest.raises(DataError, match="broken.json"):
        COCODetection(bad, img_dir)
    nokey = tmp_path / "nokey.json"
    nokey.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(DataError, match="nokey.json.*annotations"):
        COCODetection(nokey, img_dir)
    (img_dir / "b.jpg").unlink()
    with pytest.raises(DataError, match="b.jpg"):
        COCODetection(ann, img_dir)
    unk = [{"id": 9, "image_id": 1, "category_id": 99, "bbox": [1, 1, 2, 2], "iscrowd": 0}]
    ann2, _ = _write(tmp_path, unk)
    with pytest.raises(DataError, match="unknown category_id 99"):
        COCODetection(ann2, img_dir)
