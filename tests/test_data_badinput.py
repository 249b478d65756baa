"""Every bad-input case of the data layer gives a DataError naming the file and the problem."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from incdet.data import VOCDetection, load_rgb
from incdet.data.images import load_index_mask
from incdet.data.vocwriter import annotation_xml, write_image_set, write_voc_item
from incdet.errors import DataError

GOOD = [{"name": "cat", "bbox": (2, 3, 20, 15)}]


def _layout(tmp_path, ids=("ok", "bad")):
    root = tmp_path / "VOC"
    img = np.random.default_rng(0).integers(0, 255, (16, 24, 3), dtype=np.uint8)
    for i in ids:
        write_voc_item(str(root), i, img, GOOD)
    write_image_set(str(root), "trainval", list(ids))
    return root


def _expect(root, fname, msg, caplog=None):
    """Raise mode names the file; skip mode leaves that id out, warns and counts."""
    with pytest.raises(DataError, match=msg) as e:
        VOCDetection(root)
    assert fname in str(e.value)
    with caplog.at_level(logging.WARNING):
        ds = VOCDetection(root, on_error="skip")
    assert ds.ids == ["ok"] and ds.skipped == 1 and fname in caplog.text
    assert ds.skipped_files[0][0] == "bad"


def _xml(root, text):
    (root / "Annotations" / "bad.xml").write_text(text)


@pytest.mark.parametrize("obj,msg", [
    ({"name": "cat", "bbox": (2, 3, 25, 15)}, "outside the 24x16 image"),   # xmax > width
    ({"name": "cat", "bbox": (0, 3, 20, 15)}, "outside"),                    # 0 is not a 1-based coordinate
    ({"name": "cat", "bbox": (2, 3, 20, 17)}, "outside"),                    # ymax > height
    ({"name": "cat", "bbox": (5, 3, 5, 15)}, "zero or negative box size"),   # zero width
    ({"name": "cat", "bbox": (5, 9, 20, 4)}, "zero or negative box size"),   # negative height
    ({"name": "unicorn", "bbox": (2, 3, 20, 15)}, "unknown class name 'unicorn'"),
])
def test_bad_boxes_and_names(tmp_path, caplog, obj, msg):
    root = _layout(tmp_path)
    _xml(root, annotation_xml("bad.jpg", (16, 24), [GOOD[0], obj]))
    _expect(root, "bad.xml", msg, caplog)


def test_box_touching_border_is_valid(tmp_path):
    root = _layout(tmp_path, ids=("ok",))
    (root / "Annotations" / "ok.xml").write_text(annotation_xml("ok.jpg", (16, 24), [{"name": "cat", "bbox": (1, 1, 24, 16)}]))
    assert VOCDetection(root)[0].boxes.tolist() == [[0, 0, 23, 15]]


def test_malformed_xml(tmp_path, caplog):
    root = _layout(tmp_path)
    _xml(root, "<annotation><object><name>cat</name></annotation>")
    _expect(root, "bad.xml", "malformed XML", caplog)


@pytest.mark.parametrize("cut,msg", [
    ("<name>cat</name>", "missing <name>"),
    ("<xmin>2</xmin>", "missing <xmin>"),
])
def test_missing_fields(tmp_path, caplog, cut, msg):
    root = _layout(tmp_path)
    _xml(root, annotation_xml("bad.jpg", (16, 24), GOOD).replace(cut, ""))
    _expect(root, "bad.xml", msg, caplog)


def test_missing_bndbox_and_bad_number(tmp_path, caplog):
    root = _layout(tmp_path)
    text = annotation_xml("bad.jpg", (16, 24), GOOD)
    start, end = text.index("<bndbox>"), text.index("</bndbox>") + len("</bndbox>")
    _xml(root, text[:start] + text[end:])
    _expect(root, "bad.xml", "missing <bndbox>", caplog)
    _xml(root, text.replace("<xmax>20</xmax>", "<xmax>twenty</xmax>"))
    _expect(root, "bad.xml", "not a number", caplog)


def test_missing_size_falls_back_to_image_header(tmp_path):
    root = _layout(tmp_path, ids=("ok",))
    text = annotation_xml("ok.jpg", (16, 24), GOOD)
    start, end = text.index("<size>"), text.index("</size>") + len("</size>")
    (root / "Annotations" / "ok.xml").write_text(text[:start] + text[end:])
    assert VOCDetection(root).annotation(0).orig_size == (16, 24)


@pytest.mark.parametrize("which,fname", [("Annotations/bad.xml", "bad.xml"), ("JPEGImages/bad.jpg", "bad.jpg")])
def test_listed_id_missing_file(tmp_path, caplog, which, fname):
    root = _layout(tmp_path)
    (root / which).unlink()
    _expect(root, fname, "does not exist", caplog)


def test_missing_image_set_and_root(tmp_path):
    root = _layout(tmp_path)
    with pytest.raises(DataError, match="test.txt"):
        VOCDetection(root, split="test")
    with pytest.raises(DataError, match="nowhere"):
        VOCDetection(tmp_path / "nowhere")


# ---- images ---------------------------------------------------------------------------
def test_unreadable_and_truncated_images(tmp_path, caplog):
    root = _layout(tmp_path)
    bad = root / "JPEGImages" / "bad.jpg"
    bad.write_bytes(b"this is not a jpeg at all")
    ds = VOCDetection(root)  # annotations are fine; the image fails when decoded
    with pytest.raises(DataError, match="cannot read image") as e:
        ds[1]
    assert "bad.jpg" in str(e.value)
    assert ds[0].image.shape == (3, 16, 24)
    # check_images=True finds it at construction, so skip mode can leave it out
    with pytest.raises(DataError, match="bad.jpg"):
        VOCDetection(root, check_images=True)
    with caplog.at_level(logging.WARNING):
        ds = VOCDetection(root, check_images=True, on_error="skip")
    assert ds.ids == ["ok"] and ds.skipped == 1 and "bad.jpg" in caplog.text
    # truncated JPEG
    good = (root / "JPEGImages" / "ok.jpg").read_bytes()
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="bad.jpg"):
        load_rgb(str(bad))


def test_image_size_differs_from_xml(tmp_path):
    root = _layout(tmp_path)
    Image.new("RGB", (30, 16)).save(root / "JPEGImages" / "bad.jpg")
    with pytest.raises(DataError, match="bad.jpg.*30x16.*24x16"):
        VOCDetection(root)[1]


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA", "LA", "CMYK"])
def test_mode_conversion_to_rgb(tmp_path, mode):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[:, :4] = (200, 30, 90)
    im = Image.fromarray(rgb).convert(mode)
    path = tmp_path / ("x.jpg" if mode in ("L", "CMYK") else "x.png")
    im.save(path)
    t = load_rgb(str(path))
    assert t.dtype == torch.uint8 and tuple(t.shape) == (3, 6, 8)
    ref = np.array(Image.open(path).convert("RGB"))
    assert np.array_equal(t.permute(1, 2, 0).numpy(), ref)
    if mode == "L":
        assert torch.equal(t[0], t[1]) and torch.equal(t[1], t[2])


def test_grayscale_and_rgba_through_the_reader(tmp_path):
    root = _layout(tmp_path)
    Image.new("L", (24, 16), 77).save(root / "JPEGImages" / "ok.jpg")
    Image.new("RGBA", (24, 16), (10, 20, 30, 0)).save(root / "JPEGImages" / "bad.jpg", format="PNG")
    ds = VOCDetection(root)
    g, a = ds[0].image, ds[1].image
    assert g.shape == a.shape == (3, 16, 24)
    assert (g == 77).all() and a[:, 0, 0].tolist() == [10, 20, 30]


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_bit_depth_rejected(tmp_path, mode):
    path = tmp_path / ("deep.png" if mode == "I;16" else "deep.tif")
    arr = (np.arange(48).reshape(6, 8) * 1000)
    if mode == "I;16":
        Image.fromarray(arr.astype(np.uint16)).save(path)
    elif mode == "I":
        Image.fromarray(arr.astype(np.int32)).save(path)
    else:
        Image.fromarray(arr.astype(np.float32)).save(path)
    assert Image.open(path).mode.startswith(mode.split(";")[0])
    with pytest.raises(DataError, match="deep.*bits per channel"):
        load_rgb(str(path))


def test_missing_image_file():
    with pytest.raises(DataError, match="nothere.jpg.*does not exist"):
        load_rgb("/nonexistent/nothere.jpg")


# ---- masks ----------------------------------------------------------------------------
def test_mask_problems(tmp_path):
    root = _layout(tmp_path)
    mdir = root / "SegmentationClass"
    Image.fromarray(np.zeros((10, 24), np.uint8)).save(mdir / "bad.png")
    ds = VOCDetection(root)
    with pytest.raises(DataError, match="bad.png.*mask is 24x10.*image is 24x16"):
        ds[1]
    Image.new("RGB", (24, 16), (128, 0, 0)).save(mdir / "bad.png")
    with pytest.raises(DataError, match="bad.png.*mode 'RGB'"):
        ds[1]
    m = np.zeros((16, 24), np.uint8)
    m[0, 0] = 42
    Image.fromarray(m).save(mdir / "bad.png")
    with pytest.raises(DataError, match=r"bad.png.*\[42\]"):
        ds[1]
    with pytest.raises(DataError, match="bad.png"):
        VOCDetection(root, check_images=True)
    assert VOCDetection(root, keep_masks=False)[1].mask is None
    with pytest.raises(DataError, match="bad.png"):
        load_index_mask(str(mdir / "missing_bad.png"))
