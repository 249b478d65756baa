"""FastRCNNPredictor and `incdet predict` on a checkpoint of a tiny shapes run."""
import json
from pathlib import Path

import pytest
import torch

from conftest import INCDET_CONFIG, INCDET_TINY, tiny_overrides
from incdet.cli import main
from incdet.errors import CheckpointError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from incdet.engine.trainer import run_training

    tmp = tmp_path_factory.mktemp("pred")
    overrides = tiny_overrides(INCDET_TINY, tmp / "shapes", "tasks.shapes={n_train: 24, n_val: 0, n_test: 4, size: 64}",
                               "learner.max_proposals=100", "learner.model.score_thresh=0.0",
                               "train.first_task.iterations=2")
    run_training(INCDET_CONFIG, overrides, run_dir=tmp / "run", device="cpu", quiet=True)
    return tmp


def test_predictor_classes_and_outputs(run):
    from incdet.models.predict import FastRCNNPredictor

    p = FastRCNNPredictor(run / "run" / "checkpoints" / "task1.pt", device="cpu", proposals="sliding_window")
    assert len(p.classes) == 20 and p.classes[0] == "solid_circle"
    a = FastRCNNPredictor(run / "run" / "checkpoints" / "task0.pt", device="cpu", proposals="sliding_window")
    assert a.classes == p.classes[:15]
    img = sorted((run / "shapes" / "JPEGImages").glob("test_*.jpg"))[0]
    out = p.predict([img, str(img)])
    assert len(out) == 2
    for o in out:
        assert o["boxes"].shape[1] == 4 and o["boxes"].shape[0] == o["labels"].shape[0] == o["scores"].shape[0]
        assert o["labels"].numel() > 0 and 1 <= int(o["labels"].min()) and int(o["labels"].max()) <= 20
    torch.testing.assert_close(out[0]["boxes"], out[1]["boxes"])
    # given proposals: an empty set gives no detections, never a crash
    empty = p.predict([img], proposals=[torch.zeros((0, 4))])[0]
    assert empty["boxes"].shape == (0, 4)


def test_cli_predict_writes_json_and_overlay(run, tmp_path, capsys):
    img = sorted((run / "shapes" / "JPEGImages").glob("test_*.jpg"))[0]
    rc = main(["predict", "--checkpoint", str(run / "run" / "checkpoints" / "task1.pt"), str(img),
               "--out", str(tmp_path / "o"), "--proposals", "sliding_window", "--device", "cpu"])
    assert rc == 0
    dets = json.loads((tmp_path / "o" / f"{img.stem}.json").read_text())
    assert dets and {"image_id", "category_id", "category", "bbox", "score"} <= set(dets[0])
    assert (tmp_path / "o" / f"{img.stem}_overlay.jpg").read_bytes()[:2] == b"\xff\xd8"


def test_bad_checkpoint_and_image(run, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["predict", "--checkpoint", str(bad), "x.jpg", "--out", str(tmp_path)]) == 2
    with pytest.raises(CheckpointError, match="bad.pt"):
        from incdet.models.predict import FastRCNNPredictor

        FastRCNNPredictor(bad)
    rc = main(["predict", "--checkpoint", str(run / "run" / "checkpoints" / "task1.pt"), str(tmp_path / "missing.jpg"),
               "--out", str(tmp_path / "o"), "--proposals", "sliding_window"])
    assert rc == 2


def test_showcase_pictures(run, tmp_path):
    """tools/showcase.py: the README's detection grid and heatmap from a run's checkpoints."""
    import importlib.util
    import sys

    from PIL import Image

    spec = importlib.util.spec_from_file_location("showcase", Path(__file__).resolve().parents[1] / "tools" / "showcase.py")
    m = importlib.util.module_from_spec(spec)
    sys.modules["showcase"] = m
    spec.loader.exec_module(m)
    ck = run / "run" / "checkpoints"
    assert m.main(["incdet", "--a", str(ck / "task0.pt"), "--naive", str(ck / "task1.pt"), "--distill",
                   str(ck / "task1.pt"), "--data", str(run / "shapes"), "--n", "2", "--out", str(tmp_path / "g.jpg")]) == 0
    g = Image.open(tmp_path / "g.jpg")
    assert g.width > 4 * 128 and g.height > 2 * 128  # 4 columns x 2 rows of 2x-scaled 64 px tiles
    assert m.main(["heatmap", "--run", str(run / "run"), "--out", str(tmp_path / "h.png")]) == 0
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------ bad input: one line, exit 2, no output
def _predict_argv(run, out, *images, device="cpu"):
    return ["predict", "--checkpoint", str(run / "run" / "checkpoints" / "task1.pt"), *map(str, images),
            "--out", str(out), "--proposals", "sliding_window", "--device", device]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("incdet: error: "), err
    return err[0]


def test_same_stem_refused_not_overwritten(run, tmp_path, capsys):
    img = sorted((run / "shapes" / "JPEGImages").glob("test_*.jpg"))[0]
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "same.jpg").write_bytes(img.read_bytes())
    out = tmp_path / "o"
    assert main(_predict_argv(run, out, tmp_path / "a" / "same.jpg", tmp_path / "b" / "same.jpg")) == 2
    assert "same.json" in _one_error_line(capsys) and not out.exists()
    # case-insensitive file systems collide too, and so does the summary file's name
    (tmp_path / "b" / "SAME.png").write_bytes(img.read_bytes())
    assert main(_predict_argv(run, out, tmp_path / "a" / "same.jpg", tmp_path / "b" / "SAME.png")) == 2
    _one_error_line(capsys)
    (tmp_path / "predictions.jpg").write_bytes(img.read_bytes())
    assert main(_predict_argv(run, out, tmp_path / "predictions.jpg")) == 2
    assert "predictions.json" in _one_error_line(capsys) and not out.exists()


def test_too_large_image_and_late_failure_leave_no_output(run, tmp_path, capsys):
    from PIL import Image

    img = sorted((run / "shapes" / "JPEGImages").glob("test_*.jpg"))[0]
    huge = tmp_path / "huge.png"
    Image.new("RGB", (2, 70000)).save(huge)
    out = tmp_path / "o"
    assert main(_predict_argv(run, out, img, huge)) == 2
    assert "65500" in _one_error_line(capsys) and not out.exists()
    # a file that fails only when decoded (truncated after its header): the first image's outputs
    # are not left behind either, in an existing folder with an unrelated file
    out.mkdir()
    (out / "keep.txt").write_text("x")
    bad = tmp_path / "truncated.jpg"
    data = img.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    from incdet.data.images import image_size

    assert image_size(str(bad)) == image_size(str(img))  # the header is intact: fails at decode time
    assert main(_predict_argv(run, out, img, bad)) == 2
    assert "truncated.jpg" in _one_error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("device", ["banana", "cuda:x", "cuda"])
def test_bad_device_is_one_line(run, tmp_path, capsys, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    img = sorted((run / "shapes" / "JPEGImages").glob("test_*.jpg"))[0]
    assert main(_predict_argv(run, tmp_path / "o", img, device=device)) == 2
    assert "device" in _one_error_line(capsys) and not (tmp_path / "o").exists()


def test_staged_outputs_all_or_nothing(tmp_path):
    from incdet.errors import DataError
    from incdet.vis import StagedOutputs

    with StagedOutputs(tmp_path / "o") as st:
        st.add("a.json", b"1")
        st.add("b.json", b"2")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.json", "b.json"]
    with pytest.raises(RuntimeError):
        with StagedOutputs(tmp_path / "o") as st:
            st.add("a.json", b"new")
            st.add("c.json", b"3")
            raise RuntimeError("boom")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.json", "b.json"]
    assert (tmp_path / "o" / "a.json").read_bytes() == b"1"
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="existing file"):
        with StagedOutputs(tmp_path / "file"):
            pass
    (tmp_path / "o" / "d.json").mkdir()
    with pytest.raises(DataError, match="existing folder"):
        with StagedOutputs(tmp_path / "o") as st:
            st.add("d.json", b"4")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.json", "b.json", "d.json"]


@pytest.mark.parametrize("opt, value", [("--score-thresh", "1.5"), ("--vis-thresh", "-1"), ("--max-proposals", "0")])
def test_bad_thresholds_are_one_line(run, tmp_path, capsys, opt, value):
    img = sorted((run / "shapes" / "JPEGImages").glob("test_*.jpg"))[0]
    assert main(_predict_argv(run, tmp_path / "o", img) + [opt, value]) == 2
    assert opt in _one_error_line(capsys) and not (tmp_path / "o").exists()
