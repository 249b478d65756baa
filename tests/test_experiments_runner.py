"""tools/_common.run_queue: the experiment queue shared by the incdet and BlitzNet tools
(skip finished, wait for init_from, resume, record command.txt / wall.json, go on after a failure)."""
import json
from pathlib import Path

from conftest import load_tool


def _finish(run: Path, n_tasks: int = 1, done: bool = True) -> None:
    run.mkdir(parents=True, exist_ok=True)
    row = [0.5] * n_tasks
    if not done:
        row[-1] = None
    (run / "results.json").write_text(json.dumps({"tasks": [f"t{i}" for i in range(n_tasks)],
                                                  "matrix": [[0.5] * n_tasks] * (n_tasks - 1) + [row]}))


def test_run_queue(tmp_path, capsys):
    c = load_tool("_common")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("x: 1\n")
    out = tmp_path / "out"
    calls = []

    def train(config, overrides=None, run_dir=None, resume_dir=None, quiet=False, device="cpu"):
        calls.append((Path(run_dir or resume_dir).name, "resume" if resume_dir else "fresh", overrides))
        if Path(run_dir or resume_dir).name == "bad":
            raise RuntimeError("boom")
        _finish(Path(run_dir or resume_dir), 2)

    _finish(out / "done")
    (out / "half").mkdir(parents=True)
    for f in ("checkpoint.pt", "config.yaml"):
        (out / "half" / f).write_text("")
    (out / "half" / "wall.json").write_text(json.dumps({"seconds": 100.0}))
    _finish(out / "partial", 2, done=False)  # last cell not evaluated: not finished, started fresh
    need = out / "a" / "checkpoints" / "task0.pt"
    runs = [c.QueuedRun("done", cfg, [], ["x", "done"]),
            c.QueuedRun("b", cfg, ["k=1"], ["x", "b"], needs=need),  # waits for a
            c.QueuedRun("a", cfg, ["k=2"], ["x", "a"]),
            c.QueuedRun("bad", cfg, [], ["x", "bad"]),
            c.QueuedRun("half", cfg, [], ["x", "half"]),
            c.QueuedRun("partial", cfg, [], ["x", "partial"]),
            c.QueuedRun("nocfg", tmp_path / "missing.yaml", [], ["x"])]
    rc = c.run_queue(runs, out, train, tag="t", threads=1, device="cpu", extra_wall={"profile": "p"})
    assert rc == 1  # "bad" failed, the others went on
    assert calls == [("a", "fresh", ["k=2"]), ("bad", "fresh", []), ("half", "resume", None),
                     ("partial", "fresh", [])]
    log = capsys.readouterr().out
    assert "[t] done: finished, skipped" in log and "[t] b: needs" in log and "[t] bad: FAILED: RuntimeError: boom" in log
    assert "[t] nocfg:" in log and "missing, skipped" in log and "[t] failed: bad" in log
    assert (out / "a" / "command.txt").read_text() == "x a\n"
    wall = json.loads((out / "a" / "wall.json").read_text())
    assert wall["profile"] == "p" and wall["device"] == "cpu" and wall["resumed"] is False and wall["threads"] == 1
    half = json.loads((out / "half" / "wall.json").read_text())
    assert half["resumed"] is True and half["seconds"] >= 100.0  # resumed parts add up
    assert not (out / "bad" / "wall.json").exists() and not (out / "b").exists()
    # once a's checkpoint exists, b runs; everything else is finished now, except "bad" again
    need.parent.mkdir(parents=True)
    need.write_text("")
    calls.clear()
    c.run_queue(runs[:3], out, train, tag="t", threads=1, device="cpu")
    assert calls == [("b", "fresh", ["k=1"])]


def test_tools_use_the_shared_runner(monkeypatch, tmp_path):
    """Both experiment tools hand their queues to run_queue with the run_training signature."""
    import incdet.engine.trainer as trainer

    for name, args in (("incdet_experiments", (["15+5_distill", "15+5_naive"], tmp_path / "i", 1, "cpu")),
                       ("blitznet_experiments", (["inc15+5_distill", "inc15+5_naive"], tmp_path / "b", "quick", 1,
                                                 "cpu"))):
        m = load_tool(name)
        got = {}
        monkeypatch.setattr(m, "run_queue", lambda runs, out, train, **kw: got.update(runs=runs, train=train, kw=kw) or 0)
        monkeypatch.chdir(tmp_path)
        assert m.run(*args) == 0
        assert got["train"] is trainer.run_training and [r.name for r in got["runs"]] == args[0]
        first, second = got["runs"]
        assert first.needs is None and second.needs == args[1] / first.name / "checkpoints" / "task0.pt"
        assert f"tasks.init_from={second.needs}" in second.overrides and second.config.is_file()
        assert second.command[:3] == [name.split("_")[0], "train", str(second.config.relative_to(m.ROOT))]


def test_run_queue_bad_device_runs_nothing(tmp_path, capsys):
    c = load_tool("_common")
    calls = []
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("x: 1\n")
    rc = c.run_queue([c.QueuedRun("a", cfg, [], ["x"])], tmp_path / "out", lambda *a, **k: calls.append(a),
                     tag="t", threads=1, device="banana")
    assert rc == 2 and calls == [] and not (tmp_path / "out").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("[t] error: ") and "banana" in err[0]
