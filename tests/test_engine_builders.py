"""Task builders: class splits over VOC / shapes-voc / COCO data, the toy stream."""
import pytest

from incdet.data.builder import build_class_tasks, ClassTasksConfig
from incdet.engine.config import config_from_dict
from incdet.engine.toy import ToyTasksConfig, build_toy_tasks
from incdet.errors import ConfigError


def test_voc_15_plus_5(voc100_root):
    tasks = build_class_tasks(ClassTasksConfig(data="voc", root=str(voc100_root), train_split="trainval",
                                               eval_split="trainval", split="15+5", max_eval_images=7))
    assert [t.name for t in tasks] == ["1-15", "16-20"]
    assert tasks[1].new_classes == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    assert tasks[1].seen_classes[:2] == ["aeroplane", "bicycle"] and tasks[1].n_old == 15
    s = tasks[1].train_set[0]
    assert len(s.labels) and all(16 <= int(l) <= 20 for l in s.labels)  # only the new classes' boxes
    assert len(tasks[0].eval_set) == 7


def test_explicit_groups_and_errors(voc100_root, tmp_path):
    tasks = build_class_tasks(ClassTasksConfig(root=str(voc100_root), train_split="trainval", eval_split="trainval",
                                               split=[["cat", "dog"], ["person"]]))
    assert [t.new_classes for t in tasks] == [["cat", "dog"], ["person"]]
    assert tasks[1].seen_classes == ["cat", "dog", "person"]
    assert all(int(l) == 3 for i in range(min(3, len(tasks[1].train_set))) for l in tasks[1].train_set.annotation(i).labels)
    with pytest.raises(ConfigError, match="no such directory"):
        build_class_tasks(ClassTasksConfig(root=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="tasks.root must be set"):
        build_class_tasks(ClassTasksConfig())


def test_coco_split(coco_tiny_root):
    tasks = build_class_tasks(ClassTasksConfig(data="coco", root=str(coco_tiny_root), train_split="train2017",
                                               eval_split="val2017", split="40+40"))
    assert [t.name for t in tasks] == ["1-40", "41-80"] and len(tasks[1].seen_classes) == 80


def test_shapes_data_is_generated(tmp_path):
    pytest.importorskip("incdet.data.shapes")
    root = tmp_path / "shapes"
    tasks = build_class_tasks(ClassTasksConfig(data="shapes", root=str(root), train_split="train", eval_split="test",
                                               split="10+10", shapes={"n_train": 6, "n_val": 0, "n_test": 3, "size": 64}))
    assert (root / "classes.txt").is_file() and len(tasks) == 2
    assert len(tasks[0].eval_set) == 3


def test_toy_stream_and_config_validation():
    tasks = build_toy_tasks(ToyTasksConfig(n_tasks=2, classes_per_task=3, train_per_class=5))
    assert [t.name for t in tasks] == ["c0-2", "c3-5"] and len(tasks[1].train_set) == 15
    x, y = tasks[1].train_set[0]
    assert x.shape == (16,) and 3 <= int(y) <= 5
    bad = {"tasks": {"builder": "nope"}, "learner": {"name": "toy"}, "train": {"iterations": 1}}
    with pytest.raises(ConfigError, match="unknown task builder 'nope'.*toy"):
        config_from_dict(bad)
