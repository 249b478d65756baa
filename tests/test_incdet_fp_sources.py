"""tools/incdet_fp_sources.py: detection categories and the unseen-object mask, worked out by hand."""
import torch

from conftest import load_tool

T = load_tool("incdet_fp_sources")


def test_categorize_by_hand():
    # objects: class 1 at A, class 2 at B (both seen, n_seen = 2), class 3 at C (unseen)
    A, B, C = [0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]
    gt = torch.tensor([A, B, C], dtype=torch.float)
    gl = torch.tensor([1, 2, 3])
    boxes = torch.tensor([A, A, B, C, [0, 0, 10, 4], [100, 100, 110, 110], [20, 0, 30, 10]], dtype=torch.float)
    labels = torch.tensor([1, 1, 1, 2, 1, 2, 2])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.95])
    got = T.categorize(boxes, labels, scores, gt, gl, n_seen=2)
    # 0.9 on A, class 1: correct; 0.8 on A again: duplicate; 0.7 class 1 on B (class 2): other seen class;
    # 0.6 on C (class 3, unseen): unseen class; 0.5 IoU 0.4 with A: localisation; 0.4 far away: background;
    # 0.95 class 2 on B: correct (matched first, being the highest score)
    assert got == ["correct", "duplicate", "other seen class", "unseen class", "localisation", "background", "correct"]
    assert T.categorize(boxes[:0], labels[:0], scores[:0], gt, gl, 2) == []
    assert T.categorize(boxes[:1], labels[:1], scores[:1], gt[:0], gl[:0], 2) == ["background"]


def test_on_unseen_by_hand():
    A, C = [0, 0, 10, 10], [5, 0, 15, 10]  # IoU(A, C) = 50 / 150 = 1/3
    gt = torch.tensor([A, C], dtype=torch.float)
    gl = torch.tensor([1, 3])
    boxes = torch.tensor([C, A, [4, 0, 14, 10], [50, 50, 60, 60]], dtype=torch.float)
    # C itself: only the unseen object; A: the seen one; [4,0,14,10]: IoU 0.82 with C and 0.43 with A
    mask = T.on_unseen(boxes, gt, gl, n_seen=2)
    assert mask.tolist() == [True, False, True, False]
    assert T.on_unseen(boxes, gt[:1], gl[:1], 2).tolist() == [False] * 4


def test_not_a_run_dir(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="not a run directory"):
        T.main([str(tmp_path)])


def test_measure_on_a_tiny_demo_run(tmp_path):
    import pytest
    from incdet.demo import run_demo

    out = tmp_path / "run"
    run_demo(data=str(tmp_path / "shapes"), out=str(out), quick=True, device="cpu", iters_a=2, iters_b=1,
             proposals="sliding_window", max_proposals=100, echo=lambda *a: None)
    run = out / "distill"  # starts from the A run's checkpoint (tasks.init_from)
    r0, r1 = T.measure(run, task=0, score=0.0), T.measure(run, task=1, score=0.0)
    assert (r0["task"], r0["n_seen"], r1["task"], r1["n_seen"]) == ("1-15", 15, "16-20", 20)
    assert r1["unseen_objects"] == 0  # after the last task every class is seen
    for r in (r0, r1):
        assert r["detections"] == sum(r["counts"].values())
        assert set(r["counts"]) == set(T.CATEGORIES)
        assert 0.0 <= r["map"] <= 100.0 and 0.0 <= r["map_without_unseen_hits"] <= 100.0
    # nothing is dropped after the last task, so the oracle changes nothing there
    assert {k: str(v) for k, v in r1["ap_without_unseen_hits"].items()} == {k: str(v) for k, v in r1["ap"].items()}
    with pytest.raises(SystemExit, match="has tasks 0..1"):
        T.measure(run, task=2)
