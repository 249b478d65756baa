"""Hostile / inconsistent JSON in every reader: one DataError naming the file (exit 2 from the
CLIs), never a traceback, never a silently wrong result (duplicate or dangling COCO ids)."""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from incdet.cli import main
from incdet.data.coco import COCODetection
from incdet.data.safeload import load_json
from incdet.errors import DataError

DEEP = "[" * 100_000 + "]" * 100_000


def _run(argv):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _gt(n_img=2):
    return {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 50, "height": 40} for i in range(1, n_img + 1)],
        "categories": [{"id": 3, "name": "car"}, {"id": 5, "name": "bus"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 5, "bbox": [20, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0},
        ],
    }


def _perfect(gt):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt["annotations"]]


def _write(p: Path, obj) -> Path:
    p.write_bytes(obj if isinstance(obj, bytes) else (obj if isinstance(obj, str) else json.dumps(obj)).encode())
    return p


def _imgs(tmp_path, gt):
    d = tmp_path / "imgs"
    d.mkdir(exist_ok=True)
    for im in gt["images"]:
        if isinstance(im, dict) and isinstance(im.get("file_name"), str):
            Image.new("RGB", (50, 40)).save(d / im["file_name"])
    return d


# --------------------------------------------------------------------------- safeload
@pytest.mark.parametrize("content,msg", [(DEEP, "nests too deeply"), ("[" * 150 + "]" * 150, "nests too deeply"),
                                         (b"\xff\xfe[1]", "not UTF-8"), ("{", "cannot parse"), ("", "cannot parse")])
def test_load_json_refuses(tmp_path, content, msg):
    p = _write(tmp_path / "x.json", content)
    with pytest.raises(DataError, match=msg) as e:
        load_json(p, "test")
    assert str(p) in str(e.value) and len(str(e.value)) < 300


def test_load_json_depth_limit_and_bom(tmp_path):
    ok = _write(tmp_path / "ok.json", "[" * 100 + "]" * 100)
    load_json(ok)
    bom = _write(tmp_path / "bom.json", b"\xef\xbb\xbf{\"a\": 1}")
    assert load_json(bom) == {"a": 1}
    with pytest.raises(DataError, match="missing.json.*does not exist"):
        load_json(tmp_path / "missing.json")


# --------------------------------------------------------------------------- COCO checks
def _mut(fn):
    gt = _gt()
    fn(gt)
    return gt


BAD_COCO = [
    ("dup-ann-id", lambda g: g["annotations"][2].update(id=1), "annotation id 1 listed twice"),
    ("dup-image-id", lambda g: g["images"][1].update(id=1), "image id 1 listed twice"),
    ("dup-category-id", lambda g: g["categories"][1].update(id=3), "category id 3 listed twice"),
    ("dangling-image", lambda g: g["annotations"][0].update(image_id=99), "image_id 99 is not in 'images'"),
    ("dangling-category", lambda g: g["annotations"][0].update(category_id=99), "unknown category_id 99"),
    ("iscrowd-no", lambda g: g["annotations"][0].update(iscrowd="no"), "iscrowd must be 0 or 1"),
    ("list-image-id", lambda g: g["images"][0].update(id=[1]), "id must be an integer or a string"),
    ("list-ann-image-id", lambda g: g["annotations"][0].update(image_id=[1]), "is not in 'images'"),
    ("str-category-id", lambda g: g["categories"][0].update(id="x"), "id must be an integer"),
    ("mixed-image-ids", lambda g: g["images"][1].update(id="2"), "mixes strings and integers"),
    ("images-dict", lambda g: g.update(images={"1": {}}), "'images' must be a list"),
    ("ann-not-object", lambda g: g["annotations"].append(5), "annotations\\[3\\] must be an object"),
    ("negative-area", lambda g: g["annotations"][0].update(area=-1), "area must be"),
]


@pytest.mark.parametrize("name,mutate,msg", BAD_COCO, ids=[b[0] for b in BAD_COCO])
def test_coco_reader_refuses(tmp_path, name, mutate, msg):
    gt = _mut(mutate)
    img_dir = _imgs(tmp_path, _gt())
    p = _write(tmp_path / "inst.json", gt)
    for on_error in ("raise", "skip"):  # a file-level problem is never skipped
        with pytest.raises(DataError, match=msg) as e:
            COCODetection(p, img_dir, on_error=on_error)
        assert str(p) in str(e.value)


@pytest.mark.parametrize("metric", ["coco", "voc"])
@pytest.mark.parametrize("name,mutate,msg", BAD_COCO, ids=[b[0] for b in BAD_COCO])
def test_eval_gt_refuses(tmp_path, name, mutate, msg, metric):
    gt = _mut(mutate)
    p = _write(tmp_path / "gt.json", gt)
    d = _write(tmp_path / "dets.json", [])
    rc, _, err = _run(["eval-detections", "--gt", str(p), "--dets", str(d), "--metric", metric])
    assert rc == 2 and str(p) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert __import__("re").search(msg, err), err


@pytest.mark.parametrize("field", ["area", "iscrowd", "id"])
def test_coco_metric_needs_area_iscrowd_id(tmp_path, field):
    gt = _gt()
    for a in gt["annotations"]:
        del a[field]
    p = _write(tmp_path / "gt.json", gt)
    d = _write(tmp_path / "dets.json", _perfect(_gt()))
    rc, _, err = _run(["eval-detections", "--gt", str(p), "--dets", str(d), "--metric", "coco"])
    assert rc == 2 and str(p) in err and f"no '{field}'" in err, err
    if field != "id":  # the VOC metric does not read area/iscrowd
        rc, _, err = _run(["eval-detections", "--gt", str(p), "--dets", str(d), "--metric", "voc"])
        assert rc == 0, err


def test_duplicate_annotation_ids_were_a_silent_wrong_ap(tmp_path):
    """The prober's case: perfect detections scored 0.995 by pycocotools. Now refused; the fixed
    file scores 1.0."""
    gt = _gt()
    gt["annotations"][2]["id"] = 1
    d = _write(tmp_path / "dets.json", _perfect(gt))
    p = _write(tmp_path / "gt.json", gt)
    rc, _, err = _run(["eval-detections", "--gt", str(p), "--dets", str(d), "--metric", "coco"])
    assert rc == 2 and "listed twice" in err
    gt["annotations"][2]["id"] = 3
    _write(p, gt)
    out = tmp_path / "r.json"
    rc, _, err = _run(["eval-detections", "--gt", str(p), "--dets", str(d), "--metric", "coco", "--json", str(out)])
    assert rc == 0, err
    assert json.loads(out.read_text())["mAP"] == pytest.approx(1.0)


def test_coco_evaluate_api_refuses_duplicate_ids():
    from incdet.eval.coco import coco_evaluate

    gt = _gt()
    gt["annotations"][2]["id"] = 1
    with pytest.raises(DataError, match="ground truth: annotations\\[2\\]: annotation id 1 listed twice"):
        coco_evaluate(gt, _perfect(gt))
    with pytest.raises(DataError, match="detection 0: image_id \\[1\\]"):
        coco_evaluate(_gt(), [{"image_id": [1], "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1}])
    with pytest.raises(DataError, match="bad bbox"):
        coco_evaluate(_gt(), [{"image_id": 1, "category_id": 3, "bbox": "abcd", "score": 1}])


# --------------------------------------------------------------------------- detections
BAD_DETS = [
    ("deep", DEEP, "nests too deeply"),
    ("non-utf8", b"[\xff]", "not UTF-8"),
    ("list-image-id", [{"image_id": [1], "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1}],
     "image_id must be an integer or a string"),
    ("dict-category", [{"image_id": 1, "category_id": {}, "bbox": [0, 0, 1, 1], "score": 1}],
     "category_id must be"),
    ("huge-int-score", '[{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": ' + "9" * 400 + "}]",
     "score must be a finite number"),
    ("huge-int-bbox", '[{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, ' + "9" * 400 + '], "score": 1}]',
     "non-finite"),
    ("string-bbox", [{"image_id": 1, "category_id": 3, "bbox": ["0", 0, 1, 1], "score": 1}], "bbox must be"),
    ("dup-det-image-ids", {"images": [{"id": 1, "file_name": "1.jpg"}, {"id": 1, "file_name": "2.jpg"}],
                           "annotations": []}, "images\\[1\\]: id 1 listed twice"),
    ("unhashable-det-cat-id", {"categories": [{"id": [3], "name": "car"}], "annotations": []},
     "categories\\[0\\]: id must be"),
]


@pytest.mark.parametrize("name,content,msg", BAD_DETS, ids=[b[0] for b in BAD_DETS])
def test_detections_refused(tmp_path, name, content, msg):
    p = _write(tmp_path / "gt.json", _gt())
    d = _write(tmp_path / "dets.json", content)
    rc, _, err = _run(["eval-detections", "--gt", str(p), "--dets", str(d), "--metric", "coco"])
    assert rc == 2 and str(d) in err and "Traceback" not in err, err
    assert __import__("re").search(msg, err), err


def test_repeated_detections_warned_and_counted(tmp_path, caplog):
    gt = _gt()
    dets = _perfect(gt)
    dets += [dets[0], dets[0], dets[1]]
    p = _write(tmp_path / "gt.json", gt)
    d = _write(tmp_path / "dets.json", dets)
    from incdet.eval.cli import load_coco_gt, load_detections

    with caplog.at_level(logging.WARNING):
        out = load_detections(str(d), load_coco_gt(str(p), "x+w"), "x+w")
    assert len(out) == 6 and "3 detection(s) repeat an earlier one" in caplog.text


# --------------------------------------------------------------------------- incdet proposals
@pytest.mark.parametrize("content,msg", [
    ("null", "top level must be a JSON object"),
    ("[1, 2]", "top level must be a JSON object"),
    (json.dumps({"images": {"1": {"file_name": "a.jpg"}}}), "'images' must be a list"),
    (json.dumps({"images": [{"id": 1}]}), "images\\[0\\] has no 'file_name'"),
    (json.dumps({"images": [{"id": 1, "file_name": 5}]}), "file_name must be a string"),
    (json.dumps({"images": [{"id": [1], "file_name": "a.jpg"}]}), "id must be an integer or a string"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}]}), "listed twice"),
    (b"\xff\xfe\x00\x00", "not UTF-8"),
    (DEEP, "nests too deeply"),
])
def test_proposals_cli_on_bad_coco_json(tmp_path, content, msg):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    ann = _write(root / "annotations" / "instances_val.json", content)
    out = tmp_path / "p.npz"
    rc, _, err = _run(["proposals", "--data", str(root), "--split", "val", "--out", str(out),
                       "--method", "sliding_window", "--quiet", "--workers", "1"])
    assert rc == 2 and str(ann) in err and "Traceback" not in err, err
    assert __import__("re").search(msg, err), err
    assert not out.exists()


def test_proposals_cli_non_utf8_image_list(tmp_path):
    root = tmp_path / "voc"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    lst = _write(root / "ImageSets" / "Main" / "val.txt", b"\xff\xfe\n")
    rc, _, err = _run(["proposals", "--data", str(root), "--split", "val", "--out", str(tmp_path / "p.npz"),
                       "--method", "sliding_window", "--quiet", "--workers", "1"])
    assert rc == 2 and str(lst) in err, err


def test_shapes_manifest_deep_json_is_unreadable_not_a_crash(tmp_path):
    from incdet.data.shapes import MANIFEST, read_manifest

    _write(tmp_path / MANIFEST, DEEP)
    assert read_manifest(tmp_path) is None


# --------------------------------------------------------------------------- segmentation before pycocotools
@pytest.mark.parametrize("seg,msg", [
    ({"size": [30, 40], "counts": [5, 100000]}, "sum to 1200"),  # pycocotools' decode wrote past its buffer
    ({"size": [30, 40], "counts": "0" + "o" * 7}, "truncated"),
    ({"size": [30, 40], "counts": "0" + "_" * 9 + "0"}, "RLE count too long"),
    ({"size": [30, 40], "counts": "PPYo1"}, "sum to|truncated"),
    ({"size": [31, 40], "counts": [1200]}, "not the image size"),
    ([[1, 2, 3, 4, 5, 1e300]], "far outside"),
    ([[1, 2, 3]], "odd number"),
    ([["a", 1, 2, 3, 4, 5]], "not a list of numbers"),
    (5, "polygons or RLE"),
])
def test_bad_segmentation_is_refused_before_pycocotools(tmp_path, seg, msg):
    gt = _gt()
    gt["annotations"][0]["segmentation"] = seg
    for im in gt["images"]:
        im.update(width=40, height=30)
    p = _write(tmp_path / "inst.json", gt)
    ds = COCODetection(p, _imgs(tmp_path, gt))
    with pytest.raises(DataError, match=msg) as e:
        ds.semantic_mask(0)
    assert str(p) in str(e.value) and "annotation 1" in str(e.value)


def test_valid_rle_and_short_polygons(tmp_path):
    from pycocotools import mask as mu

    m = np.zeros((30, 40), np.uint8, order="F")
    m[3:9, 4:12] = 1
    rle = mu.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode()
    gt = _gt()
    for im in gt["images"]:
        im.update(width=40, height=30)
    gt["annotations"][0]["segmentation"] = rle
    gt["annotations"][1]["segmentation"] = [[20, 0, 29, 0]]  # a 2-point polygon: no usable segmentation
    p = _write(tmp_path / "inst.json", gt)
    mask = COCODetection(p, _imgs(tmp_path, gt)).semantic_mask(0)
    assert int((mask == 1).sum()) == 48 and (mask[0:10, 20:30] == 255).all()


@pytest.mark.parametrize("w,msg", [("40", "not integers"), (40.5, "not integers"), (10 ** 9, "more than")])
def test_bad_image_sizes(tmp_path, w, msg):
    gt = _gt()
    gt["images"][0]["width"] = w
    p = _write(tmp_path / "inst.json", gt)
    with pytest.raises(DataError, match=msg):
        COCODetection(p, _imgs(tmp_path, _gt()))


def test_eval_gt_category_names_optional(tmp_path):
    gt = _gt()
    for c in gt["categories"]:
        del c["name"]
    p = _write(tmp_path / "gt.json", gt)
    d = _write(tmp_path / "dets.json", _perfect(_gt()))
    out = tmp_path / "r.json"
    rc, _, err = _run(["eval-detections", "--gt", str(p), "--dets", str(d), "--metric", "coco", "--json", str(out)])
    assert rc == 0, err
    assert set(json.loads(out.read_text())["per_class"]) == {"3", "5"}
    with pytest.raises(DataError, match="categories\\[0\\] needs 'id' and 'name'"):
        COCODetection(p, _imgs(tmp_path, gt))


# --------------------------------------------------------------------------- XML entities
LAUGHS = ('<?xml version="1.0"?>\n<!DOCTYPE a [\n <!ENTITY l0 "lol">\n'
          + "".join(f' <!ENTITY l{i} "{("&l%d;" % (i - 1)) * 10}">\n' for i in range(1, 10))
          + ']>\n<annotation><object><name>&l9;</name></object></annotation>')
EXTERNAL = ('<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/hostname">]>\n'
            '<annotation><object><name>&e;</name></object></annotation>')


@pytest.mark.parametrize("text,msg", [(LAUGHS, "amplification"), (EXTERNAL, "malformed XML")],
                         ids=["billion-laughs", "external-entity"])
def test_xml_entities_are_not_expanded(tmp_path, text, msg):
    from incdet.data.voc import parse_voc_xml, read_voc_objects

    p = _write(tmp_path / "a.xml", text)
    for read in (lambda: parse_voc_xml(str(p), {"cat": 1}), lambda: read_voc_objects(str(p), {"cat": 1})):
        with pytest.raises(DataError, match=msg) as e:
            read()
        assert str(p) in str(e.value)
