"""shapes-voc generator: determinism, VOC layout, annotation/mask consistency, caching, CLI."""
from __future__ import annotations

import filecmp
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from incdet.data.shapes import SHAPES_CLASSES, ensure_shapes, make_shapes, read_manifest
from incdet.errors import ConfigError, DataError

TINY = dict(n_train=24, n_val=4, n_test=8, size=96)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shp") / "a", seed=0, **TINY)


def _files(root: Path):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def _objects(xml_path: Path):
    r = ET.parse(xml_path).getroot()
    out = []
    for o in r.findall("object"):
        bb = o.find("bndbox")
        box = [int(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
        out.append((o.find("name").text, box, int(o.find("difficult").text), int(o.find("truncated").text)))
    return r, out


def test_deterministic_and_seed_dependent(tiny, tmp_path):
    b = make_shapes(tmp_path / "b", seed=0, **TINY)
    assert _files(tiny) == _files(b)
    for f in _files(tiny):
        assert filecmp.cmp(tiny / f, b / f, shallow=False), f
    c = make_shapes(tmp_path / "c", seed=1, **TINY)
    assert not filecmp.cmp(tiny / "JPEGImages/train_000000.jpg", c / "JPEGImages/train_000000.jpg", shallow=False)


def test_parallel_same_files(tiny, tmp_path):
    b = make_shapes(tmp_path / "p", seed=0, workers=2, **TINY)
    for f in _files(tiny):
        assert filecmp.cmp(tiny / f, b / f, shallow=False), f


def test_layout_and_imagesets(tiny):
    assert (tiny / "classes.txt").read_text().split() == list(SHAPES_CLASSES)
    assert len(set(SHAPES_CLASSES)) == 20
    lists = {}
    for sub in ("Main", "Segmentation"):
        for s in ("train", "val", "trainval", "test"):
            lists[sub, s] = (tiny / "ImageSets" / sub / f"{s}.txt").read_text().split()
    assert len(lists["Main", "train"]) == 24 and len(lists["Main", "val"]) == 4 and len(lists["Main", "test"]) == 8
    assert lists["Main", "trainval"] == lists["Main", "train"] + lists["Main", "val"]
    assert not set(lists["Main", "trainval"]) & set(lists["Main", "test"])
    for s in ("train", "val", "trainval", "test"):
        assert lists["Main", s] == lists["Segmentation", s]
    for i in lists["Main", "trainval"] + lists["Main", "test"]:
        for d, ext in (("JPEGImages", "jpg"), ("Annotations", "xml"), ("SegmentationClass", "png"), ("SegmentationObject", "png")):
            assert (tiny / d / f"{i}.{ext}").is_file()


def test_annotations_and_masks_consistent(tiny):
    seen = set()
    for xml in sorted((tiny / "Annotations").glob("*.xml")):
        r, objs = _objects(xml)
        assert r.find("filename").text == xml.stem + ".jpg"
        w, h, d = (int(r.find("size").find(k).text) for k in ("width", "height", "depth"))
        img = Image.open(tiny / "JPEGImages" / r.find("filename").text)
        assert img.mode == "RGB" and img.size == (w, h) and d == 3
        seg = Image.open(tiny / "SegmentationClass" / f"{xml.stem}.png")
        inst = np.asarray(Image.open(tiny / "SegmentationObject" / f"{xml.stem}.png"))
        assert seg.mode == "P"
        seg = np.asarray(seg)
        assert objs, xml
        assert set(np.unique(seg)) <= set(range(21)) | {255}
        for j, (name, (x1, y1, x2, y2), diff, trunc) in enumerate(objs, 1):
            seen.add(name)
            k = SHAPES_CLASSES.index(name) + 1
            assert 1 <= x1 < x2 <= w and 1 <= y1 < y2 <= h
            ys, xs = np.nonzero(inst == j)
            if not diff:
                assert len(xs) >= 10
            if len(xs):  # every mask pixel of the object lies inside its box
                assert xs.min() >= x1 - 1 and xs.max() <= x2 - 1 and ys.min() >= y1 - 1 and ys.max() <= y2 - 1
                assert (seg[ys, xs] == k).all()
        # every class pixel belongs to some object of that class
        assert set(np.unique(inst)) <= set(range(len(objs) + 1)) | {255}
        assert ((seg == 0) | (seg == 255)).sum() == ((inst == 0) | (inst == 255)).sum()
    assert seen <= set(SHAPES_CLASSES)


def test_every_class_present_and_balanced(tmp_path):
    root = make_shapes(tmp_path / "bal", seed=3, n_train=120, n_val=0, n_test=4, size=64)
    per = read_manifest(root)["stats"]["train"]["per_class"]
    assert set(per) == set(SHAPES_CLASSES) and min(per.values()) >= 5
    names = [o[0] for x in (root / "Annotations").glob("train_*.xml") for o in _objects(x)[1]]
    assert {n: names.count(n) for n in SHAPES_CLASSES} == per


def test_cache_reuse_and_rebuild(tmp_path):
    out = tmp_path / "c"
    ensure_shapes(out, **TINY)
    stamp = (out / "shapes.json").stat().st_mtime_ns
    ino = out.stat().st_ino
    ensure_shapes(out, **TINY)
    assert (out / "shapes.json").stat().st_mtime_ns == stamp and out.stat().st_ino == ino
    ensure_shapes(out, **{**TINY, "n_test": 5})
    assert len((out / "ImageSets/Main/test.txt").read_text().split()) == 5
    assert read_manifest(out)["params"]["n_test"] == 5
    (out / "JPEGImages" / "train_000000.jpg").unlink()  # incomplete -> rebuilt
    ensure_shapes(out, **{**TINY, "n_test": 5})
    assert (out / "JPEGImages" / "train_000000.jpg").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_refuses_foreign_dir_and_bad_args(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="not a shapes-voc"):
        ensure_shapes(d, **TINY)
    assert (d / "keep.txt").is_file()
    with pytest.raises(ConfigError):
        ensure_shapes(tmp_path / "x", n_train=0)
    with pytest.raises(ConfigError):
        ensure_shapes(tmp_path / "x", size=10)


def test_cli(tmp_path, capsys):
    from incdet.cli import main

    out = tmp_path / "cli"
    args = ["data", "make-shapes", "--out", str(out), "--train", "6", "--val", "0", "--test", "3", "--size", "64", "--seed", "2"]
    assert main(args) == 0
    assert "train" in capsys.readouterr().out
    assert read_manifest(out)["params"]["seed"] == 2
    assert len(list((out / "JPEGImages").glob("*.jpg"))) == 9
    assert main(args + ["--force"]) == 0
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x").write_text("")
    assert main(["data", "make-shapes", "--out", str(bad), "--train", "2", "--test", "1", "--size", "64"]) == 2


def test_voc_reader_if_available(tiny):
    voc = pytest.importorskip("incdet.data.voc")
    ds = voc.VOCDetection(tiny, "test")
    assert list(ds.classes) == list(SHAPES_CLASSES)
    s = ds[0]
    assert s.image.shape[0] == 3 and s.boxes.shape[1] == 4 and s.mask is not None
