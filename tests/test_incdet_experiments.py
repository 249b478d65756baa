"""tools/incdet_experiments.py: the old/new/all tables from run directories (fabricated results)."""
import json
from pathlib import Path

import pytest

from conftest import load_tool



@pytest.fixture(scope="module")
def tool():
    return load_tool("incdet_experiments")


def _write(run: Path, rows):
    """rows[i][j]: {class: AP} evaluated on task j after task i (None: not measured)."""
    tasks = [f"t{i}" for i in range(len(rows))]
    am = [[None if c is None else {**{f"AP/{k}": v for k, v in c.items()}, "mAP": 0.0} for c in r] for r in rows]
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({
        "metric": "mAP", "higher_is_better": True, "tasks": tasks,
        "matrix": [[None if c is None else 0.0 for c in r] for r in rows], "all_metrics": am}))
    (run / "wall.json").write_text(json.dumps({"seconds": 12.0, "threads": 1, "cpu": "test cpu"}))


def test_old_new_all_and_nan(tool):
    aps = {"a": 10.0, "b": float("nan"), "c": 30.0}
    s = tool.old_new_all(aps, ["a", "b"], ["c"])
    assert s == {"old": 10.0, "new": 30.0, "all": 20.0}


def test_split_table_by_hand(tool, tmp_path):
    out = tmp_path / "exp"
    a = {"a": 40.0, "b": 20.0}  # A(old) = 30
    # after B: the last row's evaluation on the last task covers all classes seen so far
    _write(out / "15+5_distill", [[a, None], [a, {"a": 36.0, "b": 18.0, "c": 9.0}]])
    _write(out / "15+5_naive", [[a, None], [a, {"a": 0.0, "b": 2.0, "c": 12.0}]])
    _write(out / "joint", [[{"a": 50.0, "b": 30.0, "c": 10.0}]])
    t = tool.split_table("15+5", out)
    lines = t.splitlines()
    assert lines[2].startswith("| A(2 old classes) | 30.0 |")
    assert "| +B distillation (biased sampling) | 27.0 | 9.0 | 21.0 | 12 s (CPU) |" in lines
    assert "| +B w/o distillation (naive fine-tuning) | 1.0 | 12.0 | 4.7 | 12 s (CPU) |" in lines
    assert "| +B distillation, unbiased sampling | not run | | | |" in lines
    assert "| joint training A(1-20) | 40.0 | 10.0 | 30.0 | 12 s (CPU) |" in lines


def test_steps_table_and_markdown(tool, tmp_path):
    out = tmp_path / "exp"
    a = {"a": 40.0, "b": 20.0}
    s1 = {"a": 30.0, "b": 20.0, "c": 10.0}
    s2 = {"a": 20.0, "b": 10.0, "c": 5.0, "d": 8.0}
    _write(out / "15+1x5_distill", [[a, None, None], [None, s1, None], [None, None, s2]])
    st = tool.steps_table("15+1x5_distill", out).splitlines()
    assert st[0] == "| after | old (1-2) | c | d | all seen |"
    assert st[2] == "| t0 | 30.0 |  |  | 30.0 |"
    assert st[3] == "| t1 | 25.0 | 10.0 |  | 20.0 |"
    assert st[4] == "| t2 | 15.0 | 5.0 | 8.0 | 10.8 |"
    md = tmp_path / "incdet.md"
    text = tool.write_markdown(out, md)
    assert md.read_text() == text and "test cpu" in text and "## 15+5" in text and "Not run yet." in text
