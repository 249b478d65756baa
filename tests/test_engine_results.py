"""Forgetting metrics on matrices worked out by hand; results files."""
import json
import math

import numpy as np
import pytest

from incdet.engine.results import (
    ResultsMatrix,
    average_accuracy,
    average_forgetting,
    backward_transfer,
    forgetting_per_task,
    summary,
)

NAN = float("nan")
# R[i][j]: after task i, on task j
R = [
    [80.0, NAN, NAN],
    [60.0, 90.0, NAN],
    [70.0, 50.0, 85.0],
]


def test_average_accuracy_by_hand():
    assert average_accuracy(R, 0) == 80.0
    assert average_accuracy(R, 1) == 75.0            # (60 + 90) / 2
    assert average_accuracy(R) == pytest.approx(205 / 3)  # (70 + 50 + 85) / 3


def test_forgetting_by_hand():
    # task 0: max(80, 60) - 70 = 10 ; task 1: max(90) - 50 = 40
    assert forgetting_per_task(R) == [10.0, 40.0]
    assert average_forgetting(R) == 25.0


def test_backward_transfer_by_hand():
    # ((70 - 80) + (50 - 90)) / 2 = -25
    assert backward_transfer(R) == -25.0


def test_lower_is_better_flips_signs():
    L = [[1.0, NAN], [1.5, 0.5]]  # e.g. bpp: task 0 got worse (1.0 -> 1.5)
    assert forgetting_per_task(L, higher_is_better=False) == [0.5]   # 1.5 - min(1.0)
    assert backward_transfer(L, higher_is_better=False) == -0.5      # -(1.5 - 1.0)
    # and the max, not the first value, is the reference when higher is better
    H = [[50.0, NAN, NAN], [70.0, 10.0, NAN], [40.0, 10.0, 5.0]]
    assert forgetting_per_task(H) == [30.0, 0.0]


def test_single_task_and_partial_matrix():
    assert math.isnan(average_forgetting([[3.0]]))
    assert math.isnan(backward_transfer([[3.0]]))
    s = summary([[80.0, NAN, NAN], [60.0, 90.0, NAN], [NAN, NAN, NAN]])
    assert s["tasks_done"] == 2
    assert s["average_forgetting"] == 20.0 and s["backward_transfer"] == -20.0
    with pytest.raises(ValueError):
        average_accuracy([[1.0, 2.0]])


def test_results_files(tmp_path):
    r = ResultsMatrix(["a", "b"], "accuracy", True)
    r.set(0, 0, {"accuracy": 80.0, "error": 20.0})
    d = r.to_dict()
    assert d["matrix"] == [[80.0, None], [None, None]]  # NaN -> null
    r.set(1, 0, {"accuracy": 60.0, "error": 40.0})
    r.set(1, 1, {"accuracy": 90.0, "error": 10.0})
    r.write(tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert {"metric", "higher_is_better", "tasks", "matrix", "summary"} <= set(data)
    assert data["summary"]["average_forgetting"] == 20.0
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert "| b | 60.00 | 90.00 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.csv").read_text().splitlines()[0] == "after_task,a,b"
    back = ResultsMatrix.from_dict(data)
    np.testing.assert_array_equal(back.R, r.R)


def test_nan_metric_round_trips_through_json_and_set():
    """A class with no ground truth gives AP NaN -> null in JSON; re-recording that dict
    (as ``init_from`` does when a task starts from an earlier run) must not crash."""
    r = ResultsMatrix(["a"], "map", True)
    r.set(0, 0, {"map": 50.0, "ap/cat": NAN})
    data = json.loads(json.dumps(r.to_dict()))
    assert data["all_metrics"][0][0]["ap/cat"] is None
    back = ResultsMatrix.from_dict(data)
    r2 = ResultsMatrix(["a", "b"], "map", True)
    r2.set(0, 0, back.all_metrics[0][0])
    assert r2.R[0, 0] == 50.0 and math.isnan(r2.all_metrics[0][0]["ap/cat"])
    r2.set(0, 1, {"map": None})
    assert math.isnan(r2.R[0, 1])
