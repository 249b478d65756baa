"""tools/incdet_bg_share.py: the old-object count worked out by hand, and the tool on tiny
shapes-voc tasks (every background RoI it counts is one the learner's sampler would draw)."""
import json

import pytest
import torch

from conftest import INCDET_CONFIG, INCDET_TINY, load_tool, tiny_overrides


@pytest.fixture(scope="module")
def tool():
    return load_tool("incdet_bg_share")


def test_old_object_share_by_hand(tool):
    old = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    rois = torch.tensor([[0.0, 0.0, 10.0, 10.0],    # IoU 1
                         [0.0, 0.0, 10.0, 5.0],     # IoU 0.5: counts (>=)
                         [0.0, 0.0, 10.0, 4.0],     # IoU 0.4
                         [20.0, 20.0, 30.0, 30.0]])  # IoU 0
    assert tool.old_object_share(rois, old) == 2
    assert tool.old_object_share(rois, old, iou=0.3) == 3
    assert tool.old_object_share(rois[:0], old) == 0 and tool.old_object_share(rois, old[:0]) == 0


def test_tool_on_tiny_tasks(tool, tmp_path, capsys):
    """Proposals = every ground-truth box of the image (old, new and later classes) and RoIs enough
    to sample them all: each old object is then exactly one background RoI on an old object (less
    where an old box overlaps a new one at IoU >= 0.5 and turns foreground), and the background RoIs
    on later classes' objects are not counted."""
    from incdet.data import VOCDetection
    from incdet.data.shapes import ensure_shapes
    from incdet.models.proposals import save_npz

    shapes = tmp_path / "shapes"
    ensure_shapes(str(shapes), n_train=24, n_val=0, n_test=8, size=64)
    ds = VOCDetection(shapes, "train")
    save_npz(tmp_path / "gt.npz", {str(ds.annotation(i).image_id): ds.annotation(i).boxes.numpy() for i in range(len(ds))})
    sets = tiny_overrides(INCDET_TINY, shapes, "tasks.split=15+1x5", f"learner.proposals={tmp_path / 'gt.npz'}",
                          "learner.proposal_nms=null", "learner.model.gt_jitter=0")
    rows = tool.measure(str(INCDET_CONFIG), sets, draws=2)
    assert [r["task"] for r in rows] == ["16", "17", "18", "19", "20"]
    old = sum(r["old_objects_per_image"] * r["images"] for r in rows)
    on_old = sum(r["bg_on_old_per_image"] * r["images"] for r in rows)
    for r in rows:
        assert r["bg_on_old_per_image"] <= r["old_objects_per_image"] + 1e-9
        assert r["bg_on_old_per_image"] <= r["bg_rois_per_image"] + 1e-9 and 0.0 <= r["share_bg_on_old"] <= 1.0
    assert old > 0 and on_old >= 0.8 * old
    assert any(r["bg_on_old_per_image"] < r["bg_rois_per_image"] for r in rows)  # later classes' objects
    out = tmp_path / "share.json"
    argv = [str(INCDET_CONFIG), "--draws", "1", "--json", str(out)]
    for s in sets:
        argv += ["--set", s]
    assert tool.main(argv) == 0
    assert "share of bg RoIs on an old object" in capsys.readouterr().out
    assert len(json.loads(out.read_text())["rows"]) == 5
    with pytest.raises(SystemExit):
        tool.main([str(INCDET_CONFIG), "--draws", "0"])
