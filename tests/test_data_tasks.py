"""Class-incremental split semantics on a tiny synthetic VOC layout written here."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from incdet.data import VOC_CLASSES, ClassSplit, VOCDetection
from incdet.data.tasks import parse_sizes
from incdet.data.vocwriter import write_image_set, write_voc_item
from incdet.errors import ConfigError

V = {c: i + 1 for i, c in enumerate(VOC_CLASSES)}  # VOC label of each class


@pytest.fixture
def tiny_voc(tmp_path):
    """5 images 40x30: objects chosen to exercise the 15+5 / 19+1 splits.

    a: cat + sheep (old 'cat'=8, new 'sheep'=17)      mask: cat, sheep, void
    b: sheep only                                      mask: sheep
    c: person (difficult) + tvmonitor                   no mask
    d: aeroplane                                       mask: aeroplane
    e: no objects                                      no mask
    """
    root = tmp_path / "VOC"
    rng = np.random.default_rng(0)
    img = lambda: rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)  # noqa: E731
    m_a = np.zeros((30, 40), np.uint8)
    m_a[0:10, 0:10] = V["cat"]
    m_a[10:20, 20:30] = V["sheep"]
    m_a[29, :] = 255
    m_b = np.zeros((30, 40), np.uint8)
    m_b[5:15, 5:15] = V["sheep"]
    m_d = np.zeros((30, 40), np.uint8)
    m_d[1:5, 1:5] = V["aeroplane"]
    write_voc_item(str(root), "a", img(), [{"name": "cat", "bbox": (1, 1, 10, 10)},
                                           {"name": "sheep", "bbox": (21, 11, 30, 20)}], m_a)
    write_voc_item(str(root), "b", img(), [{"name": "sheep", "bbox": (6, 6, 15, 15)}], m_b)
    write_voc_item(str(root), "c", img(), [{"name": "person", "bbox": (2, 2, 8, 8), "difficult": 1},
                                           {"name": "tvmonitor", "bbox": (20, 5, 40, 30)}])
    write_voc_item(str(root), "d", img(), [{"name": "aeroplane", "bbox": (2, 2, 5, 5)}], m_d)
    write_voc_item(str(root), "e", img(), [])
    write_image_set(str(root), "trainval", list("abcde"))
    return VOCDetection(root)


def test_parse_shorthands():
    assert parse_sizes("15+1x5") == [15, 1, 1, 1, 1, 1] == parse_sizes("15+1+1+1+1+1")
    for spec, sizes in [("19+1", [19, 1]), ("10+10", [10, 10]), ("15+5", [15, 5])]:
        sp = ClassSplit.parse(spec, VOC_CLASSES)
        assert [len(g) for g in sp.groups] == sizes
        assert sp.class_order == list(VOC_CLASSES)  # VOC shorthands keep VOC order: label == VOC index
    sp = ClassSplit.parse("15+1x5", VOC_CLASSES)
    assert sp.n_tasks == 6 and sp.group_names(5) == ["tvmonitor"] and sp.group_names(1) == ["pottedplant"]
    assert [sp.n_seen(t) for t in range(6)] == [15, 16, 17, 18, 19, 20]
    assert sp.group_labels(2) == [17] and sp.task_name(0) == "1-15" and sp.task_name(3) == "18"
    coco = [f"c{i}" for i in range(80)]
    sp = ClassSplit.parse("40+40", coco)
    assert sp.groups[0] == coco[:40] and sp.groups[1] == coco[40:] and sp.n_seen(1) == 80
    with pytest.raises(IndexError):
        sp.n_seen(2)


@pytest.mark.parametrize("spec", ["15+4", "15+6", "20+1", "abc", "15+", "0+20", "10x0+20", ""])
def test_parse_errors(spec):
    with pytest.raises(ConfigError):
        ClassSplit.parse(spec, VOC_CLASSES)


def test_explicit_groups_and_errors():
    sp = ClassSplit([["dog", "cat"], ["aeroplane"]], VOC_CLASSES)
    assert sp.class_order == ["dog", "cat", "aeroplane"] and sp.n_seen(0) == 2 and sp.n_seen(1) == 3
    with pytest.raises(ConfigError, match="unknown class names \\['unicorn'\\]"):
        ClassSplit([["dog", "unicorn"]], VOC_CLASSES)
    with pytest.raises(ConfigError, match="more than once"):
        ClassSplit([["dog", "cat"], ["dog"]], VOC_CLASSES)
    with pytest.raises(ConfigError, match="more than once"):
        ClassSplit([["dog", "dog"]], VOC_CLASSES)
    with pytest.raises(ConfigError, match="empty"):
        ClassSplit([["dog"], []], VOC_CLASSES)
    with pytest.raises(ConfigError):
        ClassSplit(["dog", "cat"], VOC_CLASSES)  # strings, not lists


def test_train_subset_15_5(tiny_voc):
    sp = ClassSplit.parse("15+5", VOC_CLASSES)
    t0 = sp.train_subset(tiny_voc, 0)
    assert t0.ids == ["a", "c", "d"]  # cat / difficult person / aeroplane; b (sheep) and e excluded
    assert t0.classes == list(VOC_CLASSES[:15])
    s = t0[0]  # a: sheep dropped, cat kept
    assert s.labels.tolist() == [V["cat"]] and s.boxes.tolist() == [[0, 0, 9, 9]]
    assert set(s.mask.unique().tolist()) == {0, V["cat"], 255}
    assert (s.mask[10:20, 20:30] == 0).all()  # sheep pixels -> background
    c = t0.annotation(1)  # c: tvmonitor dropped, difficult person kept (and flagged)
    assert c.labels.tolist() == [V["person"]] and c.difficult.tolist() == [True]

    t1 = sp.train_subset(tiny_voc, 1)
    assert t1.ids == ["a", "b", "c"] and t1.classes == list(VOC_CLASSES)
    s = t1[0]
    assert s.labels.tolist() == [V["sheep"]] and s.boxes.tolist() == [[20, 10, 29, 19]]
    assert set(s.mask.unique().tolist()) == {0, V["sheep"], 255}  # old class 'cat' -> background
    assert t1.annotation(2).labels.tolist() == [V["tvmonitor"]]
    assert t1[2].mask is None


def test_difficult_only_image_counts_unless_dropped(tiny_voc):
    sp = ClassSplit([["person"], ["tvmonitor"]], VOC_CLASSES)
    assert sp.train_subset(tiny_voc, 0).ids == ["c"]
    no_diff = VOCDetection(tiny_voc.root, use_difficult=False)
    assert sp.train_subset(no_diff, 0).ids == []


def test_eval_subset(tiny_voc):
    sp = ClassSplit.parse("15+5", VOC_CLASSES)
    e0 = sp.eval_subset(tiny_voc, 0)
    assert e0.ids == list("abcde") and len(e0) == 5
    assert [e0.annotation(i).labels.tolist() for i in range(5)] == [[V["cat"]], [], [V["person"]], [V["aeroplane"]], []]
    m = e0[1].mask
    assert (m == 0).all()  # only sheep in b: unseen -> background
    assert e0[1].boxes.shape == (0, 4)
    e1 = sp.eval_subset(tiny_voc, 1)
    assert [e1.annotation(i).labels.tolist() for i in range(5)] == [[V["cat"], V["sheep"]], [V["sheep"]],
                                                                     [V["person"], V["tvmonitor"]], [V["aeroplane"]], []]
    full = tiny_voc[0].mask
    assert torch.equal(e1[0].mask, full)  # everything seen: mask unchanged


def test_permuted_order_relabels(tiny_voc):
    sp = ClassSplit([["sheep", "tvmonitor"], ["cat", "person", "aeroplane"]], VOC_CLASSES)
    t0 = sp.train_subset(tiny_voc, 0)
    assert t0.ids == ["a", "b", "c"] and t0.classes == ["sheep", "tvmonitor"]
    a = t0[0]
    assert a.labels.tolist() == [1] and set(a.mask.unique().tolist()) == {0, 1, 255}
    assert t0.annotation(2).labels.tolist() == [2]  # tvmonitor -> position 2
    e1 = sp.eval_subset(tiny_voc, 1)
    assert e1.classes == ["sheep", "tvmonitor", "cat", "person", "aeroplane"]
    a = e1[0]
    assert a.labels.tolist() == [3, 1]  # cat -> 3, sheep -> 1 (object order preserved)
    assert a.mask[0, 0] == 3 and a.mask[15, 25] == 1 and a.mask[29, 0] == 255
    # explicit groups may cover only part of the classes: the rest is never seen
    e = ClassSplit([["cat"]], VOC_CLASSES).eval_subset(tiny_voc, 0)
    assert [e.annotation(i).labels.tolist() for i in range(5)] == [[1], [], [], [], []]


def test_subsets_filter_without_decoding(tiny_voc, monkeypatch):
    def boom(i):
        raise AssertionError("image decoded during filtering")

    monkeypatch.setattr(type(tiny_voc), "__getitem__", lambda self, i: boom(i))
    sp = ClassSplit.parse("19+1", VOC_CLASSES)
    assert sp.train_subset(tiny_voc, 1).ids == ["c"]
    assert len(sp.eval_subset(tiny_voc, 0)) == 5


def test_split_classes_missing_from_dataset(tiny_voc):
    sp = ClassSplit.parse("40+40", [f"c{i}" for i in range(80)])
    with pytest.raises(Exception, match="does not have"):
        sp.train_subset(tiny_voc, 0)


def test_dataset_without_annotation_method(tiny_voc):
    class Plain:  # only the minimal Dataset protocol: __len__, __getitem__, classes
        classes = tiny_voc.classes

        def __len__(self):
            return len(tiny_voc)

        def __getitem__(self, i):
            return tiny_voc.annotation(i)

    sp = ClassSplit.parse("19+1", VOC_CLASSES)
    sub = sp.train_subset(Plain(), 1)
    assert len(sub) == 1 and sub.annotation(0).labels.tolist() == [20] and sub[0].labels.tolist() == [20]
