"""Driver options for sequences run in pieces: eval.future_tasks, tasks.stop_after,
eval.init_rows (the rows of tasks skipped by tasks.init_from) and the per-task summaries."""
import json
import math
from pathlib import Path

import pytest

from incdet.cli import main
from incdet.engine.results import summary

REPO = Path(__file__).resolve().parents[1]
TOY = str(REPO / "configs" / "toy.yaml")
QUICK = ["--set", "train.iterations=20", "--set", "train.first_task.iterations=30",
         "--set", "train.first_task.lr_steps=[20]", "--set", "train.lr_steps=[15]",
         "--set", "train.checkpoint_every=0", "--device", "cpu", "--quiet"]


def _res(run):
    return json.loads((run / "results.json").read_text())


def _evals(run):
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(x["after_task"], x["task"]) for x in lines if x.get("event") == "eval"]


def test_future_tasks_fill_the_upper_triangle_and_leave_the_summary(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", TOY, "--out", str(a), *QUICK]) == 0
    assert main(["train", TOY, "--out", str(b), *QUICK, "--set", "eval.future_tasks=true"]) == 0
    ra, rb = _res(a), _res(b)
    assert all(v is not None for row in rb["matrix"] for v in row)          # every cell measured
    assert ra["matrix"][0][1] is None and rb["matrix"][0][1] is not None
    # untrained classes: the toy model cannot recognise them yet (far below the trained tasks)
    assert rb["matrix"][0][2] < 50 < rb["matrix"][0][0]
    # the same training (evaluation draws no random numbers): same lower triangle, same summary
    for i in range(3):
        assert rb["matrix"][i][: i + 1] == ra["matrix"][i][: i + 1]
    for k in ("average_accuracy", "average_forgetting", "backward_transfer", "forgetting_per_task"):
        assert rb["summary"][k] == ra["summary"][k], k
    # summary() ignores j > i whatever they hold
    R = [[90.0, 1e9, -1e9], [10.0, 95.0, 1e9], [5.0, 20.0, 97.0]]
    R0 = [[90.0, math.nan, math.nan], [10.0, 95.0, math.nan], [5.0, 20.0, 97.0]]
    assert summary(R) == summary(R0)
    assert sorted(_evals(b)) == [(i, j) for i in range(3) for j in range(3)]


def test_stop_after_trains_the_first_tasks_and_records_task_summaries(tmp_path):
    run = tmp_path / "src"
    assert main(["train", TOY, "--out", str(run), *QUICK, "--set", "tasks.stop_after=1",
                 "--set", "eval.future_tasks=true"]) == 0
    res = _res(run)
    assert res["summary"]["tasks_done"] == 1
    assert [v is not None for v in res["matrix"][0]] == [True] * 3 and res["matrix"][1] == [None] * 3
    assert (run / "checkpoints" / "task0.pt").is_file() and not (run / "checkpoints" / "task1.pt").exists()
    ts = res["task_summaries"]
    assert ts[1] is None and ts[0]["trainable_params"] == ts[0]["params"] > 0 and ts[0]["trainable_fraction"] == 1.0
    # the rest of the sequence: resume with the limit lifted
    assert main(["train", "--resume", str(run), "--set", "tasks.stop_after=null", "--device", "cpu", "--quiet"]) == 0
    res = _res(run)
    assert res["summary"]["tasks_done"] == 3 and all(x is not None for x in res["task_summaries"])
    assert main(["train", TOY, "--out", str(tmp_path / "x"), *QUICK, "--set", "tasks.stop_after=4"]) == 2
    assert main(["train", TOY, "--out", str(tmp_path / "y"), *QUICK, "--set", "tasks.stop_after=0"]) == 2


def test_init_rows_copied_evaluated_or_refused(tmp_path, capsys):
    src = tmp_path / "src"
    common = [*QUICK, "--set", "eval.future_tasks=true"]
    assert main(["train", TOY, "--out", str(src), *common, "--set", "tasks.stop_after=1"]) == 0
    row0 = _res(src)["matrix"][0]
    init = ["--set", f"tasks.init_from={src}/checkpoints/task0.pt"]
    # measured the same way: row 0 copied (no evaluation after task 0 in this run)
    same = tmp_path / "same"
    assert main(["train", TOY, "--out", str(same), *common, *init]) == 0
    assert _res(same)["matrix"][0] == row0 and not any(i == 0 for i, _ in _evals(same))
    assert _res(same)["task_summaries"][0] == _res(src)["task_summaries"][0]
    # a learner option differs (the toy declares no eval_keys: every option counts): row 0
    # evaluated again with the loaded weights - the same numbers, measured here
    other = tmp_path / "other"
    assert main(["train", TOY, "--out", str(other), *common, *init, "--set", "learner.distill=1.0"]) == 0
    assert _res(other)["matrix"][0] == row0
    assert sorted(j for i, j in _evals(other) if i == 0) == [0, 1, 2]
    assert _res(other)["task_summaries"][0] == _res(src)["task_summaries"][0]  # what was trained: kept
    # eval.init_rows=evaluate: evaluated again even when it matches
    ev = tmp_path / "ev"
    assert main(["train", TOY, "--out", str(ev), *common, *init, "--set", "eval.init_rows=evaluate"]) == 0
    assert sorted(j for i, j in _evals(ev) if i == 0) == [0, 1, 2] and _res(ev)["matrix"][0] == row0
    # eval.init_rows=copy: a difference is refused, naming it
    capsys.readouterr()
    assert main(["train", TOY, "--out", str(tmp_path / "cp"), *common, *init, "--set", "eval.init_rows=copy",
                 "--set", "tasks.eval_per_class=32"]) == 2
    err = capsys.readouterr().err
    assert "eval.init_rows=copy" in err and "tasks.eval_per_class (64 there, 32 here)" in err
    # the source run without future tasks: the missing cells of row 0 are measured here
    src2 = tmp_path / "src2"
    assert main(["train", TOY, "--out", str(src2), *QUICK, "--set", "tasks.stop_after=1"]) == 0
    fut = tmp_path / "fut"
    assert main(["train", TOY, "--out", str(fut), *common, "--set", f"tasks.init_from={src2}/checkpoints/task0.pt"]) == 0
    assert sorted(j for i, j in _evals(fut) if i == 0) == [1, 2] and _res(fut)["matrix"][0] == row0


@pytest.mark.parametrize("item, words", [
    ("eval.init_rows=sometimes", ["eval.init_rows", "auto"]),
    ("eval.future_tasks=3", ["eval.future_tasks", "bool"]),
    ("tasks.stop_after=-1", ["tasks.stop_after", ">= 1"]),
])
def test_new_keys_checked(item, words):
    from incdet.engine.config import load_config
    from incdet.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config(TOY, [item])
    assert all(w in str(e.value) for w in words)


def test_engine_names_no_family():
    """The driver is general: no family's name in incdet/engine."""
    for p in sorted((REPO / "incdet" / "engine").glob("*.py")):
        text = p.read_text().lower()
        for word in ("codec", "blitznet", "cawf", "lmbda"):
            assert word not in text, f"{p.name} mentions {word!r}"
