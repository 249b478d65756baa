"""tools/blitznet_experiments.py: tables and markdown from fabricated run directories."""
import functools
import json
from pathlib import Path

import pytest

from conftest import load_tool



@pytest.fixture(scope="module")
def tool():
    return load_tool("blitznet_experiments")


def _write(run: Path, rows, seconds=120.0, command=None, unit="%"):
    """rows[i][j]: metrics dict evaluated on task j after task i (None: not measured), given as
    fractions; ``aps`` inside a metrics dict is expanded to ``AP/<class>`` keys. ``unit="%"``
    writes what the tool records now (percentages, ``metric_unit`` in wall.json); ``"fraction"``
    a run recorded before the learner reported percentages (fractions, no ``metric_unit``)."""
    scale = 100.0 if unit == "%" else 1.0
    am = []
    for r in rows:
        out = []
        for c in r:
            if c is None:
                out.append(None)
                continue
            c = dict(c)
            aps = c.pop("aps", {})
            c = {**c, **{f"AP/{k}": v for k, v in aps.items()}}
            out.append({k: None if v is None else scale * v for k, v in c.items()})
        am.append(out)
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({
        "metric": "mAP", "higher_is_better": True, "tasks": [f"t{i}" for i in range(len(rows))],
        "matrix": [[None if c is None else 0.0 for c in r] for r in rows], "all_metrics": am}))
    wall = {"seconds": seconds, "threads": 1, "cpu": "test cpu", "device": "cpu", "torch": "x"}
    if unit == "%":
        wall["metric_unit"] = "%"
    (run / "wall.json").write_text(json.dumps(wall))
    if command:
        (run / "command.txt").write_text(command + "\n")


@pytest.fixture(params=["%", "fraction"])
def write(request):
    """``_write`` in both recorded units: the tables print the same numbers from either."""
    return functools.partial(_write, unit=request.param)


def test_c3_c8_tables(tool, tmp_path, write):
    out = tmp_path / "exp"
    write(out / "joint", [[{"mAP": 0.5, "mIoU": 0.25, "aps": {"a": 0.6, "b": 0.4}}]], seconds=90,
          command="blitznet train X --out joint")
    write(out / "det_only", [[{"mAP": 0.45, "mIoU": None}]])
    write(out / "seg_only", [[{"mAP": None, "mIoU": 0.2}]])
    lines = tool.c3_table(out).splitlines()
    assert lines[2] == "| detection only | 45.0 / not run / not run | 45.0 | - / not run / not run | - | 2.0 min |"
    assert lines[3] == "| segmentation only | - / not run / not run | - | 20.0 / not run / not run | 20.0 | 2.0 min |"
    assert lines[4] == "| detection + segmentation | 50.0 / not run / not run | 50.0 | 25.0 / not run / not run | 25.0 | 1.5 min |"
    c8 = tool.c8_table(out).splitlines()
    assert c8[2].endswith("| 50.0 | 25.0 | 1.5 min |") and all("not run" in c8[i] for i in (3, 4, 5))
    assert tool.voc_table(out) is None and tool.inc_table(out) is None


def test_c3_seeds_and_targets_by_hand(tool, tmp_path, write):
    """Three seeds: mean and sample std per row; the targets' lines from the means.
    joint mAP 50, 52, 54 (mean 52, std 2); detection only 51, 52, 56 (mean 53, std 2.65);
    joint mIoU 60, 62, 61 (mean 61)."""
    out = tmp_path / "exp"
    for k, (jm, ji, dm) in enumerate([(0.50, 0.60, 0.51), (0.52, 0.62, 0.52), (0.54, 0.61, 0.56)]):
        write(out / tool.seed_run("joint", k), [[{"mAP": jm, "mIoU": ji}]])
        write(out / tool.seed_run("det_only", k), [[{"mAP": dm, "mIoU": None}]])
    lines = tool.c3_table(out).splitlines()
    assert lines[2] == "| detection only | 51.0 / 52.0 / 56.0 | 53.0 (2.6) | - / - / - | - | 2.0 min |"
    assert lines[3] == "| segmentation only | not run | | | | |"
    assert lines[4] == "| detection + segmentation | 50.0 / 52.0 / 54.0 | 52.0 (2.0) | 60.0 / 62.0 / 61.0 | 61.0 (1.0) | 2.0 min |"
    t = tool.c3_targets(out)
    assert t[0] == "- mIoU of joint training: 61.0 % (mean of 3 seed(s)); target >= 60: **met**."
    assert t[1].startswith("- Detection mAP, joint minus detection only: -1.0 points (means of 3 and 3 seed(s); "
                           "the larger seed std is 2.6;") and t[1].endswith("**not met**.")


def test_c3_command_prints_table_and_targets(tool, tmp_path, capsys):
    out = tmp_path / "exp"
    _write(out / "joint", [[{"mAP": 0.5, "mIoU": 0.25}]])
    _write(out / "det_only", [[{"mAP": 0.45, "mIoU": None}]])
    assert tool.main(["c3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| detection + segmentation | 50.0 / not run / not run | 50.0 |" in text
    assert "joint minus detection only: +5.0 points" in text and "target >= 60: **not met**" in text
    assert tool.main(["c3", "--out", str(tmp_path / "none")]) == 0
    assert "no C.3 runs under" in capsys.readouterr().out


def test_table_reads_kept_records(tool, tmp_path):
    """``table`` copies finished runs to the records folder and writes the same page from there
    when the runs are gone; ``--records none`` reads only --out."""
    out, rec = tmp_path / "exp", tmp_path / "records"
    _write(out / "joint", [[{"mAP": 0.5, "mIoU": 0.25}]], command="blitznet train CFG --out J")
    md1, md2, md3 = (tmp_path / f"{i}.md" for i in range(3))
    assert tool.main(["table", "--out", str(out), "--md", str(md1), "--records", str(rec)]) == 0
    assert sorted(p.name for p in (rec / "joint").iterdir()) == ["command.txt", "results.json", "wall.json"]
    import shutil
    shutil.rmtree(out / "joint")
    assert tool.main(["table", "--out", str(out), "--md", str(md2), "--records", str(rec)]) == 0
    assert md1.read_text() == md2.read_text() and "| 50.0 / not run / not run |" in md2.read_text()
    assert tool.main(["table", "--out", str(out), "--md", str(md3), "--records", "none"]) == 0
    assert "50.0" not in md3.read_text()


def test_incremental_table_by_hand(tool, tmp_path, write):
    out = tmp_path / "exp"
    a = {"mAP": 0.3, "mIoU": 0.5, "aps": {"a": 0.4, "b": 0.2}}  # A(old) = 30
    # after B: eval on task 0 (old classes) and on task 1 (new classes; AP of all seen classes)
    write(out / "inc15+5_distill", [[a, None], [{"mAP": 0.27, "mIoU": 0.4, "aps": {"a": 0.36, "b": 0.18}},
                                                 {"mAP": 0.09, "mIoU": 0.3, "mIoU_seen": 0.35,
                                                  "aps": {"a": 0.36, "b": 0.18, "c": 0.09}}]])
    write(out / "inc15+5_naive", [[a, None], [{"mAP": 0.01, "mIoU": 0.1},
                                               {"mAP": 0.12, "mIoU": 0.3, "mIoU_seen": 0.2,
                                                "aps": {"a": 0.0, "b": 0.02, "c": 0.12}}]], seconds=60)
    write(out / "joint", [[{"mAP": 0.3, "mIoU": 0.6, "aps": {"a": 0.5, "b": 0.3, "c": 0.1}}]])
    lines = tool.inc_table(out).splitlines()
    assert lines[2] == "| A(1-15) | 30.0 | - | - | 50.0 | - | - | (in the next row) |"
    assert lines[3] == "| +B(16-20) with distillation | 27.0 | 9.0 | 21.0 | 40.0 | 30.0 | 35.0 | 2.0 min |"
    assert lines[4] == ("| +B(16-20) without distillation (naive fine-tuning) | 1.0 | 12.0 | 4.7 | 10.0 | 30.0 | "
                        "20.0 | 1.0 min |")
    assert lines[5] == "| joint training A(1-20) | 40.0 | 10.0 | 30.0 | - | - | 60.0 | 2.0 min |"


def test_unfinished_run_is_ignored_and_markdown(tool, tmp_path):
    out = tmp_path / "exp"
    _write(out / "voc100", [[None]])  # no evaluation yet: not finished
    assert tool.voc_table(out) is None
    _write(out / "joint", [[{"mAP": 0.5, "mIoU": 0.25}]], command="blitznet train CFG --out J")
    md = tmp_path / "docs" / "blitznet.md"
    text = tool.write_markdown(out, md, notes="## Notes\n\nhello")
    assert md.read_text() == text
    assert "test cpu" in text and "blitznet train CFG --out J" in text and text.rstrip().endswith("hello")
    assert text.count("Not run yet.") == 2  # VOC and 15+5 (needs its A run); C.3 and C.8 show the joint row
    assert "mIoU of joint training: 25.0 %" in text and "**not met**" in text
    # the command of a missing run is the one the tool would run
    assert "fusion_plain --quiet" in text and "learner.model.fusion=plain" in text


def test_cli_list_and_profiles(tool, capsys):
    assert tool.main(["list", "--profile", "quick", "--out", "X"]) == 0
    txt = capsys.readouterr().out
    assert "tasks.init_from=X/inc15+5_distill/checkpoints/task0.pt" in txt
    assert set(tool.RUN_ORDER) == set(tool.BY_NAME)
    for prof in tool.PROFILES.values():
        assert set(prof) == {"shapes", "inc", "voc"}


def test_gpu_script_names_are_experiments(tool):
    """Every name tools/gpu_experiments.sh passes to ``$B`` (directly or through its ``for n in``
    loop) is an experiment of this tool, and every C.3 seed run is among them."""
    import re

    text = (Path(__file__).resolve().parents[1] / "tools" / "gpu_experiments.sh").read_text()
    names = set()
    for loop in re.findall(r"for n in (.*?); do\s*\n\s*\$B \$n", text, flags=re.S):
        names |= set(loop.replace("\\", " ").split())
    for args in re.findall(r"\$B ([^$&>)\n]+)", text):
        names |= set(args.split())
    assert names <= set(tool.BY_NAME), sorted(names - set(tool.BY_NAME))
    assert {tool.seed_run(b, k) for b in tool.BASE_SETS for k in tool.SEEDS} <= names


def test_c3_at_5000_iterations(tool, tmp_path, capsys):
    """--schedule 5k reads joint_5k_seedK / det_only_5k_seedK (no seed 0 run) and leaves the
    2000-iteration runs alone."""
    assert [tool.seed_run("joint", k, "5k") for k in (0, 1)] == ["joint_5k_seed0", "joint_5k_seed1"]
    assert tool.seed_run("det_only", 0) == "det_only" and {"joint_5k_seed1", "det_only_5k_seed2"} <= set(tool.BY_NAME)
    out = tmp_path / "exp"
    _write(out / "joint", [[{"mAP": 0.5, "mIoU": 0.25}]])
    _write(out / "joint_5k_seed1", [[{"mAP": 0.71, "mIoU": 0.44}]])
    _write(out / "det_only_5k_seed1", [[{"mAP": 0.70, "mIoU": None}]])
    assert tool.main(["c3", "--out", str(out), "--schedule", "5k"]) == 0
    text = capsys.readouterr().out
    assert "wall time, first seed run |" in text
    assert "| detection + segmentation | not run / 71.0 / not run | 71.0 |" in text
    assert "joint minus detection only: +1.0 points (means of 1 and 1 seed(s)" in text


def test_percent_run_without_metric_unit_is_not_scaled(tool, tmp_path):
    """A run in % whose wall.json lacks ``metric_unit`` (started by hand) reads as it is, never
    x100; a fraction run (older records) is still scaled."""
    _write(tmp_path / "pct", [[{"mAP": 0.711, "mIoU": 0.438}]])
    w = json.loads((tmp_path / "pct" / "wall.json").read_text())
    del w["metric_unit"]
    (tmp_path / "pct" / "wall.json").write_text(json.dumps(w))
    m = tool._last(tool.load_run(tmp_path / "pct"))
    assert m["mAP"] == pytest.approx(71.1) and m["mIoU"] == pytest.approx(43.8)
    _write(tmp_path / "frac", [[{"mAP": 0.711, "mIoU": 0.438}]], unit="fraction")
    assert tool._last(tool.load_run(tmp_path / "frac"))["mAP"] == pytest.approx(71.1)


def test_c3_segw3_reads_the_probe_against_the_5k_detection_rows(tool, tmp_path, capsys):
    """--schedule 5k_segw3: the joint row is the segmentation-loss-x3 probe, the detection-only
    row the 5k run of the same seed (it has no segmentation loss to weight)."""
    assert tool.seed_run("joint", 2, "5k_segw3") == "joint_5k_segw3_seed2"
    assert tool.seed_run("det_only", 2, "5k_segw3") == "det_only_5k_seed2"
    assert {f"joint_5k_segw3_seed{k}" for k in tool.SEEDS} <= set(tool.BY_NAME)
    out = tmp_path / "exp"
    _write(out / "joint_5k_seed1", [[{"mAP": 0.60, "mIoU": 0.40}]])
    _write(out / "joint_5k_segw3_seed1", [[{"mAP": 0.71, "mIoU": 0.478}]])
    _write(out / "det_only_5k_seed1", [[{"mAP": 0.70, "mIoU": None}]])
    assert tool.main(["c3", "--out", str(out), "--schedule", "5k_segw3"]) == 0
    text = capsys.readouterr().out
    assert "| detection + segmentation | not run / 71.0 / not run | 71.0 |" in text
    assert "| not run / 47.8 / not run | 47.8 |" in text
    assert "joint minus detection only: +1.0 points" in text


def test_figures_of_a_schedule_draw_its_first_joint_seed(tool, tmp_path, monkeypatch):
    """figures --schedule 5k draws joint_5k_seed0 to joint_5k_shapes_test.png and nothing else."""
    import sys
    import types

    img = tmp_path / "a.jpg"
    img.write_bytes(b"x")
    monkeypatch.setitem(tool.FIGURES, "joint", ("joint_shapes_test.png", [str(img)]))
    out = tmp_path / "exp"
    for name in ("joint", "joint_5k_seed0", "joint_5k_seed1"):
        _write(out / name, [[{"mAP": 0.7, "mIoU": 0.4}]])
        (out / name / "checkpoint.pt").write_bytes(b"")
    drawn = []
    fake = types.ModuleType("showcase")
    fake.blitznet_tiles = lambda ck, imgs, png, min_score: drawn.append((Path(ck).parent.name, Path(png).name)) or png
    monkeypatch.setitem(sys.modules, "showcase", fake)
    assert tool.figures(out, tmp_path / "fig", schedule="5k") == [str(tmp_path / "fig" / "joint_5k_shapes_test.png")]
    assert drawn == [("joint_5k_seed0", "joint_5k_shapes_test.png")]
