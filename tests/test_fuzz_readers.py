"""Property-based fuzzing of the readers of user files (hypothesis).

Documents are small valid ones (a VOC annotation XML, a COCO instances json, a COCO results
list, a detectron2 proposal pickle, small PNG/JPEG/BMP images) changed by random structural edits (a node replaced by a random value of any type, deleted,
duplicated, a tag renamed, a text changed to "nan" / "1e400" / junk ...) and by random byte edits.
Property: the reader returns a result that satisfies its documented invariants, or raises
:class:`DataError` whose message names the file; any other exception fails the test.

Default run: a small fixed budget per reader (derandomized, so the run is reproducible).
``-m slow`` runs the long variant. Each reader also has a known-bad case: a validation step is
monkeypatched away and the same property test must then report a non-DataError.
"""
from __future__ import annotations

import copy
import json
import math
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from incdet.errors import DataError

FAST = int(os.environ.get("INCDET_FUZZ_FAST", 100))
SLOW = int(os.environ.get("INCDET_FUZZ_SLOW", 3000))


class NotDataError(AssertionError):
    """The reader raised something other than DataError (or DataError without the file name)."""


def _settings(n: int, shrink: bool = True):
    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, phases=phases,
                    suppress_health_check=list(HealthCheck))


def _expect_data_error_or(fn, path, check):
    try:
        out = fn()
    except DataError as e:
        if str(path) not in str(e):
            raise NotDataError(f"DataError does not name {path}: {e}") from e
        if "\n" in str(e).strip() or len(str(e)) > 2000:
            raise NotDataError(f"DataError message is not one short line: {str(e)[:300]!r}...") from e
        return None
    except Exception as e:  # noqa: BLE001 - this is the property
        raise NotDataError(f"{type(e).__name__}: {e}") from e
    check(out)
    return out


# --------------------------------------------------------------------------- mutation strategies
INTERESTING_TEXT = ["", " ", "0", "1", "-1", "2", "3.5", "nan", "NaN", "inf", "-inf", "1e400", "1e30", "99999999999",
                    "cat", "dog", "\u00e9", "x" * 300, "0x10", "1_0", "true", "None", "<", "&amp;", "\x00"]
JSON_ATOMS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 60), st.integers(), st.sampled_from([10 ** 400, -(10 ** 30)]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(INTERESTING_TEXT), st.text(max_size=8),
)
JSON_VALUES = st.recursive(JSON_ATOMS, lambda c: st.one_of(st.lists(c, max_size=5),
                                                           st.dictionaries(st.sampled_from(
                                                               ["id", "image_id", "category_id", "bbox", "area",
                                                                "iscrowd", "name", "file_name", "width", "height",
                                                                "segmentation", "score", "x"]), c, max_size=5)),
                           max_leaves=12)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _get(node, path):
    for p in path:
        node = node[p]
    return node


@st.composite
def mutated_json(draw, seed_doc):
    doc = copy.deepcopy(seed_doc)
    for _ in range(draw(st.integers(0, 4))):
        paths = list(_paths(doc))
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "delete", "duplicate", "add", "wrap"]))
        if not path:
            if op == "replace":
                doc = draw(JSON_VALUES)
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        if op == "replace":
            parent[key] = draw(JSON_VALUES)
        elif op == "delete":
            del parent[key]
        elif op == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        elif op == "add" and isinstance(parent[key], dict):
            parent[key][draw(st.sampled_from(["id", "iscrowd", "area", "bbox", "width", "x"]))] = draw(JSON_VALUES)
        elif op == "add" and isinstance(parent[key], list):
            parent[key].append(draw(JSON_VALUES))
        elif op == "wrap":
            parent[key] = [parent[key]]
    text = json.dumps(doc).encode()
    return _byte_edits(draw, text)


def _mutate_bytes(draw, data: bytes, max_edits: int, inserts, keep_first: bool = False) -> bytes:
    """1..max_edits random flips, deletions, insertions (random bytes or one of ``inserts``) and
    truncations (at a position > 0 with ``keep_first``)."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, max_edits))):
        if not b:
            break
        i = draw(st.integers(0, len(b) - 1))
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if op == "flip":
            b[i] = draw(st.integers(0, 255))
        elif op == "delete":
            del b[i:i + draw(st.integers(1, 8))]
        elif op == "insert":
            b[i:i] = draw(st.binary(max_size=8) | st.sampled_from(inserts))
        elif i or not keep_first:
            del b[i:]
    return bytes(b)


def _byte_edits(draw, data: bytes) -> bytes:
    if not draw(st.integers(0, 4)) == 0:  # 4 in 5 documents keep their bytes
        return data
    return _mutate_bytes(draw, data, 3, [b"[" * 50000, b"\xff\xfe", b"\x00", b"NaN"])


# --------------------------------------------------------------------------- VOC XML
CLASSES = ["cat", "dog"]
VOC_SEED = """<annotation><folder>VOC</folder><filename>a.jpg</filename>
<size><width>50</width><height>40</height><depth>3</depth></size>
<object><name>cat</name><pose>Left</pose><truncated>0</truncated><difficult>0</difficult>
<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object>
<object><name>dog</name><truncated>1</truncated><difficult>1</difficult>
<bndbox><xmin>10</xmin><ymin>10</ymin><xmax>50</xmax><ymax>40</ymax></bndbox></object>
</annotation>"""
XML_TAGS = ["annotation", "object", "name", "bndbox", "xmin", "ymin", "xmax", "ymax", "size", "width", "height",
            "difficult", "truncated", "x"]
XML_HEADERS = [b"", b'<?xml version="1.0" encoding="utf-8"?>', b'<?xml version="1.0" encoding="latin-1"?>',
               b'<?xml version="1.0" encoding="utf-16"?>', b'<?xml version="1.0" encoding="utf-32"?>',
               b'<?xml version="1.0" encoding="bogus"?>', b"<!DOCTYPE a [<!ENTITY e SYSTEM \"file:///etc/passwd\">]>",
               b'<!DOCTYPE a [<!ENTITY x "xxxxxxxxxx"><!ENTITY y "&x;&x;&x;&x;&x;&x;&x;&x;&x;&x;">]>']


@st.composite
def mutated_xml(draw):
    root = ET.fromstring(VOC_SEED)
    for _ in range(draw(st.integers(0, 4))):
        elems = list(root.iter())
        el = draw(st.sampled_from(elems))
        op = draw(st.sampled_from(["text", "text", "delete", "duplicate", "add", "rename"]))
        parent = next((p for p in root.iter() if el in list(p)), None)
        if op == "text":
            el.text = draw(st.sampled_from(INTERESTING_TEXT + ["&x;", "&y;", "&e;"]) | st.text(max_size=6))
        elif op == "delete" and parent is not None:
            parent.remove(el)
        elif op == "duplicate" and parent is not None:
            parent.append(copy.deepcopy(el))
        elif op == "add":
            ET.SubElement(el, draw(st.sampled_from(XML_TAGS))).text = draw(st.sampled_from(INTERESTING_TEXT))
        elif op == "rename":
            el.tag = draw(st.sampled_from(XML_TAGS))
    try:
        body = ET.tostring(root, encoding="unicode")
    except ValueError:
        body = VOC_SEED
    body = body.replace("&amp;x;", "&x;").replace("&amp;y;", "&y;").replace("&amp;e;", "&e;")
    head = draw(st.sampled_from(XML_HEADERS))
    return _byte_edits(draw, head + body.encode("utf-8", "surrogatepass"))


def _check_voc(rec):
    h, w = rec["size"]
    b = rec["boxes"]
    assert isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0
    assert b.dtype == np.float32 and b.ndim == 2 and b.shape[1] == 4 and np.isfinite(b).all()
    assert (b[:, 0] < b[:, 2]).all() and (b[:, 1] < b[:, 3]).all()
    assert (b[:, :2] >= 0).all() and (b[:, 2] <= w - 1).all() and (b[:, 3] <= h - 1).all()
    n = len(b)
    assert rec["labels"].shape == (n,) and set(rec["labels"].tolist()) <= {1, 2}
    assert rec["difficult"].shape == (n,) and rec["truncated"].shape == (n,)


def _fuzz_voc(tmp, n, shrink=True):
    from incdet.data.voc import parse_voc_xml

    path = tmp / "a.xml"
    c2i = {c: i + 1 for i, c in enumerate(CLASSES)}

    @_settings(n, shrink)
    @given(mutated_xml())
    def prop(data):
        path.write_bytes(data)
        _expect_data_error_or(lambda: parse_voc_xml(str(path), c2i), path, _check_voc)

    prop()


# --------------------------------------------------------------------------- COCO json
COCO_SEED = {
    "images": [{"id": 1, "file_name": "1.jpg", "width": 40, "height": 30},
               {"id": 2, "file_name": "2.jpg", "width": 40, "height": 30}],
    "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "bus"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 10], "area": 100, "iscrowd": 0,
         "segmentation": [[1, 2, 11, 2, 11, 12, 1, 12]]},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [20, 5, 15, 20], "area": 300, "iscrowd": 1,
         "segmentation": [[20, 5, 35, 5, 35, 25, 20, 25]]},
        {"id": 5, "image_id": 2, "category_id": 3, "bbox": [0, 0, 40, 30], "area": 1200, "iscrowd": 0},
    ],
}


def _check_coco_dataset(ds, path):
    assert len(set(ds.ids)) == len(ds.ids)
    for i in range(len(ds)):
        s = ds.annotation(i)
        h, w = s.orig_size
        b = s.boxes
        assert b.ndim == 2 and b.shape[1] == 4 and bool(torch_isfinite(b))
        assert bool(((b[:, 2] - b[:, 0]) > 0).all()) and bool(((b[:, 3] - b[:, 1]) > 0).all())
        assert set(s.labels.tolist()) <= set(range(1, len(ds.classes) + 1))
        # masks are decoded lazily: a bad segmentation is a DataError then
        m = _expect_data_error_or(lambda: ds.semantic_mask(i), path, lambda m: None)
        assert m is None or tuple(m.shape) == (h, w)


def torch_isfinite(t):
    import torch

    return torch.isfinite(t).all()


def _coco_dir(tmp):
    d = tmp / "imgs"
    if not d.is_dir():
        d.mkdir()
        for f in ("1.jpg", "2.jpg"):
            Image.new("RGB", (40, 30), (10, 20, 30)).save(d / f)
    return d


def _fuzz_coco(tmp, n, shrink=True):
    from incdet.data.coco import COCODetection
    from incdet.eval.cli import load_coco_gt

    path = tmp / "inst.json"
    img_dir = _coco_dir(tmp)

    def check_gt(gt):
        for r in gt.records.values():
            assert np.isfinite(r["boxes"]).all() and r["boxes"].shape[1] == 4
            assert set(r["labels"].tolist()) <= set(range(1, len(gt.classes) + 1))

    @_settings(n, shrink)
    @given(mutated_json(COCO_SEED), st.sampled_from(["raise", "skip"]))
    def prop(data, on_error):
        path.write_bytes(data)
        _expect_data_error_or(lambda: COCODetection(path, img_dir, on_error=on_error), path,
                              lambda ds: _check_coco_dataset(ds, path))
        for metric in (None, "coco"):
            _expect_data_error_or(lambda: load_coco_gt(str(path), "x+w", metric=metric), path, check_gt)

    prop()


# --------------------------------------------------------------------------- detections
DETS_SEED = [
    {"image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 10], "score": 0.9},
    {"image_id": 2, "category_id": "bus", "bbox": [0, 0, 40, 30], "score": 0.5},
    {"image_id": "2", "category_id": 7, "bbox": [3, 3, 5.5, 4], "score": 1},
]
DETS_DICT_SEED = {"images": [{"id": 11, "file_name": "1.jpg"}], "categories": [{"id": 1, "name": "car"}],
                  "annotations": [{"image_id": 11, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.3}]}


def _fuzz_dets(tmp, n, shrink=True):
    from incdet.eval.cli import evaluate_detections, load_coco_gt, load_detections

    gpath = tmp / "gt.json"
    gpath.write_text(json.dumps(COCO_SEED))
    gt = load_coco_gt(str(gpath), "x+w", metric="coco")
    path = tmp / "dets.json"

    def check(dets):
        for d in dets:
            assert d["image_id"] in gt.records and 1 <= d["label"] <= len(gt.classes)
            assert math.isfinite(d["score"]) and np.isfinite(d["box"]).all() and len(d["bbox"]) == 4
        res = evaluate_detections(gt, dets, "voc")
        assert res["mAP"] is None or 0 <= res["mAP"] <= 1

    @_settings(n, shrink)
    @given(st.sampled_from([DETS_SEED, DETS_DICT_SEED]).flatmap(mutated_json))
    def prop(data):
        path.write_bytes(data)
        _expect_data_error_or(lambda: load_detections(str(path), gt, "x+w"), path, check)

    prop()


# --------------------------------------------------------------------------- detectron2 proposal pickles
def _pkl_seeds():
    import pickle

    d = {"ids": [1, "b"], "boxes": [np.array([[0, 0, 4, 4], [1, 1, 3, 9]], np.float32), np.zeros((0, 4), np.float32)],
         "objectness_logits": [np.array([0.5, 2.0], np.float32), np.zeros(0, np.float32)], "bbox_mode": 0}
    return [pickle.dumps(d, protocol=p) for p in (2, 4, 5)]


@st.composite
def mutated_pickle(draw):
    data = draw(st.sampled_from(_pkl_seeds()))
    return _mutate_bytes(draw, data, 4, [b"cos\nsystem\n", b"\x8c\x05posix\x8c\x06system\x93", b"r\xff\xff\xff\x3f"],
                         keep_first=True)


def _fuzz_pickle(tmp, n, shrink=True):
    from incdet.models.proposals import load_detectron2_pkl

    path = tmp / "p.pkl"

    def check(out):
        for k, v in out.items():
            assert isinstance(k, str) and v.dtype == np.float32 and v.ndim == 2 and v.shape[1] == 4

    @_settings(n, shrink)
    @given(mutated_pickle())
    def prop(data):
        path.write_bytes(data)
        _expect_data_error_or(lambda: load_detectron2_pkl(path), path, check)

    prop()


# --------------------------------------------------------------------------- images
def _image_seeds():
    import io

    rng = np.random.default_rng(0)
    out = []
    for fmt, mode in (("PNG", "RGB"), ("JPEG", "RGB"), ("PNG", "P"), ("PNG", "L"), ("BMP", "RGB")):
        im = Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).convert(mode)
        buf = io.BytesIO()
        im.save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


def _fuzz_images(tmp, n, shrink=True):
    from incdet.data.images import load_rgb

    path = tmp / "im.img"

    def check(t):
        assert t.dtype.is_floating_point is False and t.ndim == 3 and t.shape[0] == 3

    @_settings(n, shrink)
    @given(mutated_image(_image_seeds()))
    def prop(data):
        path.write_bytes(data)
        _expect_data_error_or(lambda: load_rgb(str(path)), path, check)

    prop()


@st.composite
def mutated_image(draw, seeds):
    b = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        if not b:
            break
        i = draw(st.integers(0, len(b) - 1))
        op = draw(st.sampled_from(["flip", "flip", "delete", "insert", "truncate"]))
        if op == "flip":
            b[i] = draw(st.integers(0, 255))
        elif op == "delete":
            del b[i:i + draw(st.integers(1, 8))]
        elif op == "insert":
            b[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif i:
            del b[i:]
    return bytes(b)


# --------------------------------------------------------------------------- tests
def test_seeds_read_correctly(tmp_path):
    from incdet.data.coco import COCODetection
    from incdet.data.voc import parse_voc_xml
    from incdet.eval.cli import load_coco_gt, load_detections

    (tmp_path / "a.xml").write_text(VOC_SEED)
    rec = parse_voc_xml(str(tmp_path / "a.xml"), {"cat": 1, "dog": 2})
    assert rec["boxes"].tolist() == [[0, 1, 19, 29], [9, 9, 49, 39]] and rec["labels"].tolist() == [1, 2]
    (tmp_path / "inst.json").write_text(json.dumps(COCO_SEED))
    ds = COCODetection(tmp_path / "inst.json", _coco_dir(tmp_path))
    assert ds.ids == [1, 2] and ds.annotation(0).boxes.tolist() == [[1, 2, 11, 12], [20, 5, 35, 25]]
    gt = load_coco_gt(str(tmp_path / "inst.json"), "x+w", metric="coco")
    (tmp_path / "d.json").write_text(json.dumps(DETS_SEED))
    dets = load_detections(str(tmp_path / "d.json"), gt, "x+w")
    assert [(d["image_id"], d["label"]) for d in dets] == [(1, 1), (2, 2), (2, 2)]


FUZZERS = {"voc-xml": _fuzz_voc, "coco-json": _fuzz_coco, "detections": _fuzz_dets, "proposal-pickle": _fuzz_pickle,
           "image": _fuzz_images}


@pytest.mark.parametrize("reader", list(FUZZERS))
def test_fuzz_readers(tmp_path, reader):
    FUZZERS[reader](tmp_path, FAST)


@pytest.mark.slow
@pytest.mark.parametrize("reader", list(FUZZERS))
def test_fuzz_readers_long(tmp_path, reader):
    FUZZERS[reader](tmp_path, SLOW)


def _bug_voc(monkeypatch):
    import incdet.data.voc as voc

    # the reader's number parsing without its ValueError handling: "<xmin>cat</xmin>" escapes
    monkeypatch.setattr(voc, "_number", lambda elem, tag, xml_path, what: float(elem.find(tag).text))


def _bug_coco(monkeypatch):
    import incdet.data.coco as coco

    # the COCO reader without the file-level check (ids, types, dangling references)
    monkeypatch.setattr(coco, "read_coco_json", lambda path, what, **kw: json.loads(open(path, "rb").read()))


def _bug_dets(monkeypatch):
    import incdet.eval.cli as cli

    # the detections loader without its bbox validation
    monkeypatch.setattr(cli, "_check_bbox", lambda b, where: [float(x) for x in b])


def _bug_pickle(monkeypatch):
    import pickle

    import incdet.models.proposals as proposals

    # the proposal loader on a plain unpickler without error handling (as before the allow-list)
    monkeypatch.setattr(proposals, "load_pickle", lambda path, what, extra=None: pickle.loads(open(path, "rb").read()))


def _bug_images(monkeypatch):
    import incdet.data.images as images

    # the image loader without its error handling
    def bare_open(path):
        im = Image.open(path)
        im.load()
        return im

    monkeypatch.setattr(images, "_open", bare_open)


@pytest.mark.parametrize("reader,bug", [("voc-xml", _bug_voc), ("coco-json", _bug_coco), ("detections", _bug_dets),
                                        ("proposal-pickle", _bug_pickle), ("image", _bug_images)])
def test_fuzz_checker_catches_a_reintroduced_bug(tmp_path, monkeypatch, reader, bug):
    bug(monkeypatch)
    with pytest.raises(NotDataError):
        FUZZERS[reader](tmp_path, FAST, shrink=False)
