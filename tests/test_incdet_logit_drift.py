"""tools/incdet_logit_drift.py: the score-drift statistics worked out by hand, and the tool on a
tiny demo run."""
import math

import pytest
import torch

from conftest import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("incdet_logit_drift")


def test_drift_stats_by_hand(tool):
    # two RoIs, 2 old classes + 1 added: logits [bg, c1, c2, c3]
    lg = torch.tensor([[0.0, math.log(2.0), 0.0, 0.0],    # softmax 1/5, 2/5, 1/5, 1/5; own class 1
                       [math.log(3.0), 0.0, 0.0, 0.0]])   # softmax 3/6, 1/6, 1/6, 1/6; own class 2
    s = tool.drift_stats(lg, torch.tensor([1, 2]), n_old=2)
    assert s["p_bg"] == pytest.approx((1 / 5 + 3 / 6) / 2)
    assert s["p_own"] == pytest.approx((2 / 5 + 1 / 6) / 2)
    assert s["p_added"] == pytest.approx((1 / 5 + 1 / 6) / 2)
    assert s["logit_bg"] == pytest.approx(math.log(3.0) / 2)
    assert s["logit_own"] == pytest.approx(math.log(2.0) / 2)
    assert s["logit_added_max"] == pytest.approx(0.0)
    # no class added yet: nothing to steal probability; empty: NaN
    s0 = tool.drift_stats(lg[:, :3], torch.tensor([1, 2]), n_old=2)
    assert s0["p_added"] == 0.0 and math.isnan(s0["logit_added_max"])
    assert all(math.isnan(v) for v in tool.drift_stats(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 2).values())


def test_tool_on_a_tiny_demo_run(tool, tmp_path):
    from incdet.demo import run_demo

    out = tmp_path / "run"
    run_demo(data=str(tmp_path / "shapes"), out=str(out), quick=True, device="cpu", iters_a=2, iters_b=1,
             proposals="sliding_window", max_proposals=100, echo=lambda *a: None)
    rows = tool.measure(out / "distill", images=4, iou=0.5, ap=True)
    assert [r["after"] for r in rows] == ["1-15", "16-20"]
    for r in rows:
        assert r["rois"] > 0
        assert 0.0 <= r["p_bg"] <= 1.0 and 0.0 <= r["p_own"] <= 1.0 and r["p_bg"] + r["p_own"] + r["p_added"] <= 1.0 + 1e-6
        assert 0.0 <= r["map_old_thr0"] <= 100.0
    assert rows[0]["p_added"] == 0.0 and rows[1]["p_added"] > 0.0
    t = tool.table(rows).splitlines()
    assert t[0].endswith("| mAP old | mAP old, threshold 0 |") and len(t) == 4
    with pytest.raises(SystemExit):
        tool.main([str(out / "distill"), "--images", "0"])
