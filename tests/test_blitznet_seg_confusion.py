"""tools/blitznet_seg_confusion.py: the split of a confusion matrix, worked out by hand."""
import math

import numpy as np
import pytest

from conftest import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("blitznet_seg_confusion")


def test_fg_summary_by_hand(tool):
    # rows: ground truth (bg, a, b); columns: prediction
    m = np.array([[80, 4, 6],    # background: 10 pixels called objects
                  [5, 9, 6],     # a: 5 missed, 15 found, 9 of them right
                  [5, 3, 2]])    # b: 5 missed, 5 found, 2 right
    s = tool.fg_summary(m)
    assert s["fg_recall"] == pytest.approx(20 / 30)        # (9+6+3+2) / (20+10)
    assert s["fg_precision"] == pytest.approx(20 / 30)     # 20 / (4+6+9+6+3+2)
    assert s["class_acc"] == pytest.approx(11 / 20)        # (9+2) / 20
    assert s["bg_iou"] == pytest.approx(80 / (90 + 90 - 80))


def test_fg_summary_empty_and_bad_shapes(tool):
    s = tool.fg_summary(np.array([[7, 0], [0, 0]]))
    assert math.isnan(s["fg_recall"]) and math.isnan(s["fg_precision"]) and math.isnan(s["class_acc"])
    assert s["bg_iou"] == 1.0
    with pytest.raises(ValueError, match="square confusion matrix"):
        tool.fg_summary(np.zeros((2, 3)))


def test_measure_matches_the_run_and_refuses_other_runs(tool, tmp_path):
    """On a tiny two-task shapes run, the tool's mIoU (background and every class) is the one the
    driver recorded after the last task over the classes seen (same predictions, same matrix)."""
    import json

    pytest.importorskip("incdet.data.shapes")
    from blitznet.cli import main
    from conftest import BLITZNET_CONFIG, BLITZNET_TINY, as_cli_sets, tiny_overrides

    run = tmp_path / "run"
    assert main(["train", str(BLITZNET_CONFIG), "--out", str(run), "--quiet", "--device", "cpu",
                 *as_cli_sets(tiny_overrides(BLITZNET_TINY, tmp_path / "shapes"))]) == 0
    r = tool.measure(run)
    recorded = json.loads((run / "results.json").read_text())["all_metrics"][-1][-1]["mIoU_seen"]
    assert r["mIoU"] == pytest.approx(recorded, abs=1e-6)
    assert set(r["iou"]) >= {"background"} and 0.0 <= r["bg_iou"] <= 100.0
    with pytest.raises(SystemExit, match="not a run directory"):
        tool.measure(tmp_path / "shapes")
    (run / "checkpoint.pt").rename(tmp_path / "moved.pt")
    with pytest.raises(SystemExit, match="needs config.yaml and checkpoint.pt"):
        tool.measure(run)
