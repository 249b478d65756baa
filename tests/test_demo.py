"""``incdet demo``: the whole shapes-voc 15+5 path (data, A, +B with and without distillation, table)."""
from __future__ import annotations

import argparse
import json
import math

import pytest

from incdet.demo import main_demo, make_table, register, run_demo


def _parse(argv):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    register(sub)
    return p.parse_args(argv)


def test_table_format():
    t = make_table([{"method": "A(1-15)", "old": 71.25, "new": None, "all": float("nan")},
                    {"method": "+B w distillation", "old": 60.0, "new": 40.04, "all": 55.0}])
    lines = t.splitlines()
    assert lines[0].startswith("| method | old (1-15)")
    assert lines[2] == "| A(1-15) | 71.2 | - | - |"
    assert lines[3] == "| +B w distillation | 60.0 | 40.0 | 55.0 |"


def test_cli_arguments():
    a = _parse(["demo", "--quick", "--data", "d", "--out", "o", "--iters-a", "3"])
    assert a.func is main_demo and a.quick and a.data == "d" and a.out == "o" and a.iters_a == 3
    assert a.threads == 1 and a.iters_b is None


def _check_result(res, out):
    assert [r["method"] for r in res["rows"]] == ["A(1-15)", "+B(16-20) w/o distillation", "+B(16-20) w distillation"]
    for r in res["rows"][1:]:
        for k in ("old", "new", "all"):
            assert r[k] is not None and (math.isnan(r[k]) or 0.0 <= r[k] <= 100.0)
    assert (out / "table.md").read_text().count("|") > 10
    assert json.loads((out / "table.json").read_text())["rows"] == json.loads(json.dumps(res["rows"]))
    assert (out / "A" / "checkpoints" / "task0.pt").is_file()
    assert "task0.pt" in (out / "distill" / "config.yaml").read_text()
    assert (out / "naive" / "results.json").is_file()
    naive_cfg = (out / "naive" / "config.yaml").read_text()
    assert "distill: none" in naive_cfg and "task0.pt" in naive_cfg


def test_demo_tiny(tmp_path):
    """A tiny version of the demo (quick data set, a few iterations, sliding-window proposals)."""
    out = tmp_path / "run"
    res = run_demo(data=str(tmp_path / "shapes"), out=str(out), quick=True, device="cpu", iters_a=2, iters_b=1,
                   proposals="sliding_window", max_proposals=100, echo=lambda *a: None)
    assert (tmp_path / "shapes-quick" / "shapes.json").is_file()
    assert res["iterations"] == {"A": 2, "B": 1} and res["quick"]
    _check_result(res, out)


@pytest.mark.slow
def test_demo_quick_cli(tmp_path, capsys):
    """``incdet demo --quick`` as a user runs it (selective search included)."""
    args = _parse(["demo", "--quick", "--data", str(tmp_path / "shapes"), "--out", str(tmp_path / "run"),
                   "--device", "cpu"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "[demo] 4/4" in printed and "w distillation" in printed
    _check_result(json.loads((tmp_path / "run" / "table.json").read_text()), tmp_path / "run")


@pytest.mark.parametrize("kw, words", [
    ({"device": "banana"}, ["unknown device 'banana'"]),
    ({"iters_a": -1}, ["incdet demo", "train.first_task.iterations must be >= 0 or null, got -1"]),
    ({"iters_b": -2}, ["train.iterations must be >= 0 or null, got -2"]),
    ({"threads": -1}, ["--threads must be >= 0"]),
])
def test_bad_options_are_refused_before_anything_is_built_or_deleted(tmp_path, kw, words):
    from incdet.errors import ConfigError

    out = tmp_path / "run"
    (out / "distill").mkdir(parents=True)  # an earlier demo's run: kept when the options are bad
    with pytest.raises(ConfigError) as e:
        run_demo(data=str(tmp_path / "shapes"), out=str(out), quick=True, echo=lambda *a: None, **kw)
    for w in words:
        assert w in str(e.value)
    assert (out / "distill").is_dir() and not (tmp_path / "shapes-quick").exists()


def test_out_is_a_file(tmp_path):
    from incdet.errors import ConfigError

    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        run_demo(data=str(tmp_path / "shapes"), out=str(f), quick=True, device="cpu", echo=lambda *a: None)
    assert f.read_text() == "x"
