"""``incdet eval-detections`` end to end: VOC folder and COCO json ground truth, --json output, bad input."""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from incdet.cli import main

XML = """<annotation><filename>{stem}.jpg</filename>
<size><width>100</width><height>80</height><depth>3</depth></size>
{objects}</annotation>"""
OBJ = ("<object><name>{name}</name><difficult>{d}</difficult><truncated>0</truncated>"
       "<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>")

# 1-based XML boxes
GT = {
    "000001": [("cat", (1, 1, 10, 10), 0), ("cat", (21, 1, 30, 10), 0), ("dog", (41, 1, 50, 10), 1)],
    "000002": [("dog", (5, 5, 24, 24), 0)],
    "000003": [],
}


def _write_voc(root: Path, images: bool = True) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    for stem, objs in GT.items():
        body = "".join(OBJ.format(name=n, d=d, b=b) for n, b, d in objs)
        (voc / "Annotations" / f"{stem}.xml").write_text(XML.format(stem=stem, objects=body))
    (voc / "ImageSets" / "Main" / "test.txt").write_text("\n".join(GT) + "\n")
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("000003\n")
    if images:
        from PIL import Image

        (voc / "JPEGImages").mkdir()
        for stem in GT:
            Image.new("RGB", (100, 80), (90, 120, 30)).save(voc / "JPEGImages" / f"{stem}.jpg")
    return voc


def _xywh(b):  # 1-based inclusive XML box -> COCO xywh with x2 = x + w
    return [b[0], b[1], b[2] - b[0], b[3] - b[1]]


def _dets():
    return [
        # cat (npos 2): .9 exact TP, .8 far FP, .7 exact TP
        {"image_id": "000001", "category_id": "cat", "bbox": _xywh((1, 1, 10, 10)), "score": 0.9},
        {"image_id": "000003", "category_id": 8, "bbox": [50, 50, 9, 9], "score": 0.8},
        {"image_id": 1, "category_id": "cat", "bbox": _xywh((21, 1, 30, 10)), "score": 0.7},
        # dog (npos 1, the difficult one is excluded): .95 on the difficult box -> ignored, .6 exact TP
        {"image_id": "000001", "category_id": 12, "bbox": _xywh((41, 1, 50, 10)), "score": 0.95},
        {"image_id": 2, "category_id": "dog", "bbox": _xywh((5, 5, 24, 24)), "score": 0.6},
    ]


def _run(argv):
    err = io.StringIO()
    out = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("images", [True, False], ids=["VOCDetection", "annotations-only"])
def test_voc_gt_end_to_end(tmp_path, images):
    voc = _write_voc(tmp_path, images=images)
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(_dets()))
    out_json = tmp_path / "out" / "res.json"
    rc, out, err = _run(["eval-detections", "--gt", str(tmp_path / "VOCdevkit"), "--dets", str(dets),
                         "--metric", "voc", "--json", str(out_json)])
    assert rc == 0, err
    res = json.loads(out_json.read_text())
    # cat: rec [.5,.5,1], prec [1,.5,2/3] -> AP = .5*1 + .5*2/3 = 5/6 ; dog: AP 1 ; mAP = 11/12
    assert res["per_class"]["cat"] == pytest.approx(5 / 6, abs=1e-12)
    assert res["per_class"]["dog"] == pytest.approx(1.0, abs=1e-12)
    assert res["per_class"]["horse"] is None  # no gt -> excluded
    assert res["mAP"] == pytest.approx(11 / 12, abs=1e-12)
    assert res["npos"]["cat"] == 2 and res["npos"]["dog"] == 1
    assert res["options"]["split"] == "test" and res["options"]["iou_rule"] == "ge"
    assert "cat" in out and "mAP" in out and "0.833333" in out

    # 11-point: t = 0 .. .5 -> 1 (6 points); t = .6 .. 1 -> 2/3 (5 points) -> (6 + 10/3) / 11 = 28/33
    rc, _, err = _run(["eval-detections", "--gt", str(voc), "--dets", str(dets), "--metric", "voc07",
                       "--json", str(out_json)])
    assert rc == 0, err
    res = json.loads(out_json.read_text())
    assert res["per_class"]["cat"] == pytest.approx(28 / 33, abs=1e-12)
    assert res["mAP"] == pytest.approx((28 / 33 + 1) / 2, abs=1e-12)


def test_det_origin_and_iou(tmp_path):
    voc = _write_voc(tmp_path)
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": "000001", "category_id": "cat", "bbox": [1, 1, 9, 9], "score": 1.0}]))
    out_json = tmp_path / "r.json"
    base = ["eval-detections", "--gt", str(voc), "--dets", str(dets), "--iou", "0.7", "--json", str(out_json)]
    # 1-based frame (default): exact match with XML (1,1,10,10) -> TP; cat has 2 gt -> AP = 1/2
    assert _run(base)[0] == 0
    assert json.loads(out_json.read_text())["per_class"]["cat"] == pytest.approx(0.5)
    # read as 0-based, the box is one pixel off gt (0,0,9,9): IoU = 81 / 119 = 0.68 < 0.7 -> FP
    assert _run(base + ["--det-origin", "0"])[0] == 0
    assert json.loads(out_json.read_text())["per_class"]["cat"] == 0.0
    # the same shifted detection is found again with --det-origin 0
    dets.write_text(json.dumps([{"image_id": "000001", "category_id": "cat", "bbox": [0, 0, 9, 9], "score": 1.0}]))
    assert _run(base + ["--det-origin", "0"])[0] == 0
    assert json.loads(out_json.read_text())["per_class"]["cat"] == pytest.approx(0.5)


def test_split_and_classes_options(tmp_path):
    voc = _write_voc(tmp_path)
    (voc / "ImageSets" / "Main" / "mini.txt").write_text("000002\n")
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": "000002", "category_id": 2, "bbox": [5, 5, 19, 19], "score": 1.0}]))
    out_json = tmp_path / "r.json"
    rc, _, err = _run(["eval-detections", "--gt", str(voc), "--dets", str(dets), "--split", "mini",
                       "--classes", "cat,dog", "--json", str(out_json)])
    assert rc == 0, err
    res = json.loads(out_json.read_text())
    assert set(res["per_class"]) == {"cat", "dog"}
    assert res["per_class"]["dog"] == 1.0 and res["per_class"]["cat"] is None and res["mAP"] == 1.0


def test_voc_gt_coco_metric(tmp_path):
    voc = _write_voc(tmp_path)
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(_dets()))
    out_json = tmp_path / "r.json"
    rc, out, err = _run(["eval-detections", "--gt", str(voc), "--dets", str(dets), "--metric", "coco",
                         "--max-dets", "1", "10", "200", "--json", str(out_json)])
    assert rc == 0, err
    res = json.loads(out_json.read_text())
    # every true positive is an exact box (IoU 1 at all thresholds); the same PR curves as above but COCO's
    # 101-point interpolation: cat: precision 1 for recall <= .5 (51 points), 2/3 above (50 points)
    assert res["per_class"]["cat"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)
    assert res["per_class"]["dog"] == pytest.approx(1.0)
    assert "AR@200" in res["stats"] and res["options"]["max_dets"] == [1, 10, 200]


def _coco_json(tmp_path):
    data = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 100, "height": 100},
                   {"id": 9, "file_name": "b.jpg", "width": 100, "height": 100}],
        "categories": [{"id": 3, "name": "car"}, {"id": 5, "name": "bus"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [0, 0, 9, 9], "area": 81, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [20, 0, 9, 9], "area": 81, "iscrowd": 0},
            {"id": 3, "image_id": 9, "category_id": 5, "bbox": [0, 0, 9, 9], "area": 81, "iscrowd": 0},
        ],
    }
    p = tmp_path / "gt.json"
    p.write_text(json.dumps(data))
    return p


def test_coco_gt_voc_metric_plus_one_and_rules(tmp_path):
    gt = _coco_json(tmp_path)
    dets = tmp_path / "d.json"
    # car: [0,0,9,4] vs gt [0,0,9,9]: with x2 = x + w and +1 areas: 10*5 / (10*10) = 0.5 exactly
    dets.write_text(json.dumps([
        {"image_id": 7, "category_id": 3, "bbox": [0, 0, 9, 4], "score": 0.9},
        {"image_id": "b", "category_id": "bus", "bbox": [0, 0, 9, 9], "score": 0.5},
    ]))
    out_json = tmp_path / "r.json"
    base = ["eval-detections", "--gt", str(gt), "--dets", str(dets), "--json", str(out_json)]

    def ap(extra):
        rc, _, err = _run(base + extra)
        assert rc == 0, err
        return json.loads(out_json.read_text())["per_class"]

    # ge (default): TP; car npos 2 -> rec [.5], prec [1] -> AP .5
    assert ap([]) == {"car": 0.5, "bus": 1.0}
    assert ap(["--iou-rule", "gt"])["car"] == 0.0
    # continuous areas: 9*4 / 81 = 0.444 -> FP
    assert ap(["--no-plus-one"])["car"] == 0.0
    # x2 = x + w - 1 and +1 areas = continuous w*h areas: 36/81 -> FP
    assert ap(["--xywh", "x+w-1"])["car"] == 0.0


def test_coco_gt_matches_padilla_reference_on_coco_tiny(tmp_path, coco_tiny_root):
    """VOC AP with COCO xywh gt+dets, IoU >= t, +1 areas == the review_object_detection_metrics rules."""
    from test_eval_coco import _perturbed_dets
    from test_eval_voc import _padilla_ap

    ann = coco_tiny_root / "annotations" / "instances_val2017.json"
    data = json.loads(ann.read_text())
    dets = _perturbed_dets(data, seed=3)
    rng = np.random.default_rng(0)
    for d in dets:  # integer boxes and coarse scores: exact IoU ties and score ties happen
        d["bbox"] = [float(round(v)) for v in d["bbox"]]
        d["score"] = round(d["score"], 2)
    rng.shuffle(dets)
    dpath = tmp_path / "dets.json"
    dpath.write_text(json.dumps(dets))
    gtc = json.loads(ann.read_text())
    for a in gtc["annotations"]:
        a["bbox"] = [float(round(v)) for v in a["bbox"]]
    gpath = tmp_path / "gt.json"
    gpath.write_text(json.dumps(gtc))
    names = {c["id"]: c["name"] for c in data["categories"]}
    for metric, eleven in (("voc", False), ("voc07", True)):
        out_json = tmp_path / f"{metric}.json"
        rc, _, err = _run(["eval-detections", "--gt", str(gpath), "--dets", str(dpath), "--metric", metric,
                           "--use-difficult", "--json", str(out_json)])
        assert rc == 0, err
        res = json.loads(out_json.read_text())
        refs = []
        for cid, name in names.items():
            g = [(a["image_id"], a["bbox"]) for a in gtc["annotations"] if a["category_id"] == cid]
            if not g:
                assert res["per_class"][name] is None
                continue
            dd = [(d["image_id"], d["score"], d["bbox"]) for d in dets if d["category_id"] == cid]
            ref = _padilla_ap(g, dd, 0.5, eleven)
            refs.append(ref)
            assert res["per_class"][name] == pytest.approx(ref, abs=1e-9), name
        assert res["mAP"] == pytest.approx(float(np.mean(refs)), abs=1e-9)


def test_coco_metric_cli_equals_pycocotools(tmp_path, coco_tiny_root):
    from test_eval_coco import STAT_KEYS, _perturbed_dets, _pycoco_stats

    ann = coco_tiny_root / "annotations" / "instances_val2017.json"
    data = json.loads(ann.read_text())
    dets = _perturbed_dets(data, seed=5)
    dpath = tmp_path / "dets.json"
    dpath.write_text(json.dumps(dets))
    out_json = tmp_path / "r.json"
    rc, out, err = _run(["eval-detections", "--gt", str(ann), "--dets", str(dpath), "--metric", "coco",
                         "--json", str(out_json)])
    assert rc == 0, err
    res = json.loads(out_json.read_text())
    E = _pycoco_stats(ann, dets)
    for k, v in zip(STAT_KEYS, E.stats):
        assert (res["stats"][k] is None) if v == -1 else res["stats"][k] == pytest.approx(v, abs=1e-12)
    assert res["mAP"] == pytest.approx(E.stats[0], abs=1e-12)


@pytest.mark.parametrize("case,content,message", [
    ("missing", None, "detections file does not exist"),
    ("malformed", "[{\"image_id\": ", "cannot parse detections JSON"),
    ("not-a-list", "{\"a\": 1}", "expected a COCO results list"),
    ("unknown-category", [{"image_id": "000001", "category_id": "horse2", "bbox": [1, 1, 2, 2], "score": 1}],
     "unknown category_id 'horse2'"),
    ("category-index", [{"image_id": "000001", "category_id": 21, "bbox": [1, 1, 2, 2], "score": 1}],
     "unknown category_id 21"),
    ("unknown-image", [{"image_id": "999", "category_id": "cat", "bbox": [1, 1, 2, 2], "score": 1}],
     "unknown image_id '999'"),
    ("negative-wh", [{"image_id": "000001", "category_id": "cat", "bbox": [1, 1, -2, 2], "score": 1}],
     "negative width or height"),
    ("nan-score", "[{\"image_id\": \"000001\", \"category_id\": \"cat\", \"bbox\": [1, 1, 2, 2], \"score\": NaN}]",
     "score must be a finite number"),
    ("missing-key", [{"image_id": "000001", "bbox": [1, 1, 2, 2], "score": 1}], "missing category_id"),
])
def test_bad_detections(tmp_path, case, content, message):
    voc = _write_voc(tmp_path)
    dets = tmp_path / "dets.json"
    if content is not None:
        dets.write_text(content if isinstance(content, str) else json.dumps(content))
    rc, _, err = _run(["eval-detections", "--gt", str(voc), "--dets", str(dets)])
    assert rc == 2
    assert str(dets) in err and message in err, err


def test_bad_ground_truth_and_options(tmp_path):
    dets = tmp_path / "dets.json"
    dets.write_text("[]")
    rc, _, err = _run(["eval-detections", "--gt", str(tmp_path / "nope"), "--dets", str(dets)])
    assert rc == 2 and "ground truth does not exist" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "annotations": [{"image_id": 1}], "categories": []}))
    rc, _, err = _run(["eval-detections", "--gt", str(bad), "--dets", str(dets)])
    assert rc == 2 and str(bad) in err and "annotations[0]" in err
    voc = _write_voc(tmp_path)
    (voc / "Annotations" / "000002.xml").write_text("<annotation><object><name>cat</name></object>")
    rc, _, err = _run(["eval-detections", "--gt", str(voc), "--dets", str(dets)])
    assert rc == 2 and "000002.xml" in err
    rc, _, err = _run(["eval-detections", "--gt", str(bad), "--dets", str(dets), "--metric", "coco", "--iou", "0.7"])
    assert rc == 2 and "--iou" in err
    # no detections at all is valid: every AP is 0
    gt = _coco_json(tmp_path)
    out_json = tmp_path / "r.json"
    rc, _, err = _run(["eval-detections", "--gt", str(gt), "--dets", str(dets), "--json", str(out_json)])
    assert rc == 0, err
    assert json.loads(out_json.read_text())["mAP"] == 0.0


def test_voc2012_100_matches_devkit_rules_on_raw_xml(tmp_path, voc100_root):
    """Noisy detections in the XML's 1-based frame vs a literal py-faster-rcnn voc_eval on raw XML values."""
    import xml.etree.ElementTree as ET

    from test_eval_voc import _pyfrcnn_voc_eval

    ids = [ln.split()[0] for ln in (voc100_root / "ImageSets" / "Main" / "trainval.txt").read_text().splitlines()
           if ln.strip()]
    recs = {}
    for i in ids:
        objs = []
        for o in ET.parse(voc100_root / "Annotations" / f"{i}.xml").findall("object"):
            bb = o.find("bndbox")
            objs.append((o.find("name").text.strip(), [float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")],
                         int(o.find("difficult").text) if o.find("difficult") is not None else 0))
        recs[i] = objs
    rng = np.random.default_rng(0)
    dets = []
    for i, objs in recs.items():
        for name, b, _ in objs:
            for _ in range(int(rng.integers(0, 3))):
                j = np.round(b + rng.normal(0, 6, 4))
                dets.append({"image_id": i, "category_id": name, "score": round(float(rng.random()), 3),
                             "bbox": [j[0], j[1], max(j[2] - j[0], 0.0), max(j[3] - j[1], 0.0)]})
    dpath = tmp_path / "dets.json"
    dpath.write_text(json.dumps(dets))
    out_json = tmp_path / "r.json"
    for metric in ("voc", "voc07"):
        rc, _, err = _run(["eval-detections", "--gt", str(voc100_root), "--dets", str(dpath), "--metric", metric,
                           "--iou-rule", "gt", "--json", str(out_json)])
        assert rc == 0, err
        res = json.loads(out_json.read_text())
        assert res["options"]["split"] == "trainval"
        refs = []
        for name in res["per_class"]:
            class_recs = {}
            for i, objs in recs.items():
                R = [(b, d) for n, b, d in objs if n == name]
                class_recs[i] = {"bbox": np.array([b for b, _ in R]).reshape(-1, 4),
                                 "difficult": np.array([d for _, d in R], bool), "det": [False] * len(R)}
            if sum(int((~r["difficult"]).sum()) for r in class_recs.values()) == 0:
                assert res["per_class"][name] is None
                continue
            dd = [d for d in dets if d["category_id"] == name]
            BB = np.array([[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]]
                           for d in dd]).reshape(-1, 4)
            ref = _pyfrcnn_voc_eval(class_recs, [d["image_id"] for d in dd], np.array([d["score"] for d in dd]),
                                    BB, 0.5, metric == "voc07")
            refs.append(ref)
            assert res["per_class"][name] == pytest.approx(ref, abs=1e-9), name
        assert res["mAP"] == pytest.approx(float(np.mean(refs)), abs=1e-9)
        assert 0.3 < res["mAP"] < 0.95
