"""VOC reader on ../shared/data/voc2012-100, cross-checked against an independent parse."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from incdet.data import VOC_CLASSES, Sample, VOCDetection, detection_collate
from incdet.data import voc as voc_module
from incdet.data.vocwriter import write_image_set, write_voc_item


def _regex_objects(xml_file: Path):
    """Independent, deliberately naive parse: (name, xmin, ymin, xmax, ymax, difficult) per object."""
    text = xml_file.read_text()
    out = []
    for obj in re.findall(r"<object>(.*?)</object>", text, flags=re.S):
        name = re.search(r"<name>\s*(\S+)\s*</name>", obj).group(1)
        coords = [float(re.search(rf"<{t}>\s*([-\d.]+)\s*</{t}>", obj).group(1)) for t in ("xmin", "ymin", "xmax", "ymax")]
        diff = re.search(r"<difficult>\s*(\d)\s*</difficult>", obj)
        out.append((name, *coords, int(diff.group(1)) if diff else 0))
    return out


def test_voc_classes_order():
    assert len(VOC_CLASSES) == 20
    assert list(VOC_CLASSES) == sorted(VOC_CLASSES)
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[14] == "person" and VOC_CLASSES[-1] == "tvmonitor"


def test_voc100_counts_match_independent_parse(voc100_root):
    ds = VOCDetection(voc100_root)
    ids = [ln.split()[0] for ln in (voc100_root / "ImageSets/Main/trainval.txt").read_text().splitlines() if ln.strip()]
    assert ds.ids == ids and len(ds) == 100 and ds.skipped == 0
    assert ds.classes == list(VOC_CLASSES)
    n_obj = n_diff = 0
    per_class = np.zeros(21, dtype=int)
    for i, img_id in enumerate(ids):
        ref = _regex_objects(voc100_root / "Annotations" / f"{img_id}.xml")
        s = ds.annotation(i)
        assert isinstance(s, Sample) and s.image is None and s.image_id == img_id
        assert s.boxes.dtype == torch.float32 and s.labels.dtype == torch.int64
        assert s.difficult.dtype == torch.bool and s.ignore.dtype == torch.bool and not s.ignore.any()
        assert s.num_objects == len(ref)
        exp_boxes = torch.tensor([r[1:5] for r in ref], dtype=torch.float32).reshape(-1, 4) - 1
        assert torch.equal(s.boxes, exp_boxes)
        assert s.labels.tolist() == [VOC_CLASSES.index(r[0]) + 1 for r in ref]
        assert s.difficult.tolist() == [bool(r[5]) for r in ref]
        n_obj += len(ref)
        n_diff += sum(r[5] for r in ref)
        for r in ref:
            per_class[VOC_CLASSES.index(r[0]) + 1] += 1
    assert n_obj == 273  # total from the XMLs (grep -c "<object>")
    got = np.bincount(torch.cat([ds.annotation(i).labels for i in range(len(ds))]).numpy(), minlength=21)
    assert (got == per_class).all()
    # use_difficult=False drops exactly the difficult objects
    nd = VOCDetection(voc100_root, use_difficult=False)
    assert sum(nd.annotation(i).num_objects for i in range(len(nd))) == n_obj - n_diff
    assert not any(nd.annotation(i).difficult.any() for i in range(len(nd)))


def test_voc100_known_sample(voc100_root):
    ds = VOCDetection(voc100_root)
    i = ds.ids.index("2007_000032")
    s = ds[i]
    assert s.image.dtype == torch.uint8 and tuple(s.image.shape) == (3, 281, 500)
    assert s.orig_size == (281, 500)
    # XML: aeroplane 104 78 375 183, aeroplane 133 88 197 123, person 195 180 213 229, person 26 189 44 238
    assert s.boxes.tolist() == [[103, 77, 374, 182], [132, 87, 196, 122], [194, 179, 212, 228], [25, 188, 43, 237]]
    assert s.labels.tolist() == [1, 1, 15, 15]
    assert s.mask is not None and s.mask.dtype == torch.uint8 and tuple(s.mask.shape) == (281, 500)
    assert set(s.mask.unique().tolist()) == {0, 1, 15, 255}
    # pixels inside the person boxes mostly belong to class 15 in the palette indices
    x1, y1, x2, y2 = [int(v) for v in s.boxes[2]]
    assert (s.mask[y1:y2 + 1, x1:x2 + 1] == 15).float().mean() > 0.3
    # the same pixels read as RGB colours would differ: we must be using the indices
    rgb = np.array(Image.open(voc100_root / "SegmentationClass/2007_000032.png").convert("RGB"))
    assert tuple(rgb[s.mask.numpy() == 15][0]) == (192, 128, 128)
    # image without a segmentation file
    j = ds.ids.index("2007_000027")
    assert ds[j].mask is None and not ds.has_mask(j) and ds.has_mask(i)
    batch = detection_collate([ds[i], ds[j]])
    assert isinstance(batch, list) and len(batch) == 2


def test_voc100_masks_values_and_sizes(voc100_root):
    ds = VOCDetection(voc100_root, split="val", image_set_dir="Segmentation")
    assert len(ds) == 50 and all(ds.has_mask(i) for i in range(len(ds)))
    allowed = set(range(21)) | {255}
    for i in range(0, len(ds), 5):
        s = ds[i]
        assert set(s.mask.unique().tolist()) <= allowed
        assert tuple(s.mask.shape) == tuple(s.image.shape[1:]) == s.orig_size
        present = set(s.mask.unique().tolist()) - {0, 255}
        assert present <= set(s.labels.tolist())  # every class painted has a box
    n_masks = len(list((voc100_root / "SegmentationClass").glob("*.png")))
    full = VOCDetection(voc100_root)
    assert sum(full.has_mask(i) for i in range(len(full))) == n_masks == 93
    assert not any(VOCDetection(voc100_root, keep_masks=False).has_mask(i) for i in range(100))


def test_annotation_does_not_open_images(voc100_root, monkeypatch):
    ds = VOCDetection(voc100_root)

    def boom(*a, **k):
        raise AssertionError("image decoded")

    monkeypatch.setattr(voc_module, "load_rgb", boom)
    monkeypatch.setattr(voc_module, "load_index_mask", boom)
    monkeypatch.setattr(voc_module.ET, "parse", boom)  # cached: no re-parse either
    for i in range(len(ds)):
        ds.annotation(i)


def test_split_as_id_list_and_custom_classes_file(tmp_path):
    root = tmp_path / "shapes"
    img = np.full((20, 30, 3), 128, np.uint8)
    write_voc_item(str(root), "a", img, [{"name": "star", "bbox": (1, 1, 30, 20)}],
                   mask=np.full((20, 30), 2, np.uint8))
    write_voc_item(str(root), "b", img, [{"name": "disc", "bbox": (3, 4, 10, 12), "difficult": 1}])
    write_image_set(str(root), "train", ["a", "b"])
    (root / "classes.txt").write_text("disc\nstar\n")
    ds = VOCDetection(root, split="train")
    assert ds.classes == ["disc", "star"]
    s = ds[0]
    assert s.labels.tolist() == [2] and s.boxes.tolist() == [[0, 0, 29, 19]]  # full image box
    assert (s.mask == 2).all()
    assert ds.annotation(1).difficult.tolist() == [True]
    only_b = VOCDetection(root, split=["b"], classes=["disc", "star"])
    assert only_b.ids == ["b"] and only_b.annotation(0).boxes.tolist() == [[2, 3, 9, 11]]
    # with the default VOC class list these names are unknown -> clear error
    with pytest.raises(Exception, match="unknown class name 'star'"):
        VOCDetection(root, split="train", classes=VOC_CLASSES)
