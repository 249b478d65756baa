"""tools/codec_detector_experiments.py: the commands it runs, its checks, and the doc from a
fabricated eval directory (the chain itself is tested in test_codec_eval_detector.py)."""
import json

import pytest

from conftest import load_tool

de = load_tool("codec_detector_eval")


@pytest.fixture(scope="module")
def tool():
    return load_tool("codec_detector_experiments")


def _args(tool, out, *extra):
    return tool.parse_args(["train", "--out", str(out), *extra])


def test_commands_name_the_runs_and_checkpoints(tool, tmp_path):
    a = _args(tool, tmp_path / "r", "--lambdas", "0.002", "0.016", "--max-images", "7")
    tr = tool.train_cmd(a)
    assert tr[1].endswith("codec_experiments.py") and "--no-joint" in tr and "--no-check" in tr
    assert tr[tr.index("--config") + 1] == "configs/codec/shapes_cpu.yaml"
    assert tr[tr.index("--strategies") + 1: tr.index("--strategies") + 3] == ["cawf", "adapters"]
    ev = tool.eval_cmd(a)
    neural = [ev[i + 1] for i, x in enumerate(ev) if x == "--neural"]
    r = tmp_path / "r"
    # the codecs are the driver runs' task-end checkpoints
    ck = "checkpoints"
    assert neural == [f"source={r}/src_0.002/{ck}/task0.pt,{r}/src_0.016/{ck}/task0.pt",
                      f"CAwF={r}/cawf_0.002/{ck}/task1.pt,{r}/cawf_0.016/{ck}/task1.pt",
                      f"adapters={r}/adapters_0.002/{ck}/task1.pt,{r}/adapters_0.016/{ck}/task1.pt"]
    assert ev[ev.index("--max-images") + 1] == "7" and ev[ev.index("--compat") + 1] == "source:CAwF"


def test_missing_checkpoints_are_named_with_the_command_to_make_them(tool, tmp_path):
    a = _args(tool, tmp_path / "r", "--incdet", str(tmp_path / "nope.pt"))
    with pytest.raises(SystemExit, match="nope.pt: detector checkpoint not found; train it with `python tools/incdet"):
        tool.evaluate(a)
    det = tmp_path / "det.pt"
    det.write_bytes(b"x")
    a = _args(tool, tmp_path / "r", "--incdet", str(det), "--blitznet", str(det))
    with pytest.raises(SystemExit, match=r"src_0.002/checkpoints/task0.pt: codec checkpoint not found"):
        tool.evaluate(a)


def _rows():
    def pts(codec, bpps, maps, ious):
        return [{"codec": codec, "param": str(b), "bpp": b, "psnr": 20 + 10 * b, "encode_s_per_image": 0.0,
                 "decode_s_per_image": 0.0, "incdet/mAP": m, "blitznet/mIoU": i} for b, m, i in zip(bpps, maps, ious)]

    rows = [{"codec": "original", "param": "", "bpp": None, "psnr": None, "encode_s_per_image": 0.0,
             "decode_s_per_image": 0.0, "incdet/mAP": 40.0, "blitznet/mIoU": 50.0}]
    rows += pts("JPEG2000", [0.2, 0.4, 0.8], [20.0, 30.0, 40.0], [30.0, 40.0, 50.0])
    rows += pts("source", [0.2, 0.4, 0.8], [10.0, 20.0, 30.0], [20.0, 30.0, 40.0])
    rows += pts("CAwF", [0.1, 0.2, 0.4], [20.0, 30.0, 40.0], [30.0, 40.0, 50.0])  # JPEG2000 at half the rate
    return rows


def test_doc_states_the_verdict_from_the_results(tool, tmp_path):
    out = tmp_path / "r"
    (out / "eval").mkdir(parents=True)
    rows = [{k: (float("nan") if v is None else v) for k, v in r.items()} for r in _rows()]
    res = {"data": "data/shapes-voc", "split": "test", "images": 3, "command": "codec eval-detector ...",
           "detectors": [], "rows": _rows(), "compatibility": [],
           "bd_rate": {k: de.bd_rate_table(rows, k) for k in ("incdet/mAP", "blitznet/mIoU")},
           "rate_at_accuracy": {k: de.rate_at_accuracy_table(rows, k) for k in ("incdet/mAP", "blitznet/mIoU")}}
    (out / "eval" / "results.json").write_text(json.dumps(de.jsonable(res)))
    de.write_markdown(res, out / "eval" / "results.md")
    (out / "detector_timing.json").write_text(json.dumps({"eval_seconds": 120.0}))
    notes = tmp_path / "notes.md"
    notes.write_text("A hand-written note.")
    doc, pics = tmp_path / "docs" / "cd.md", tmp_path / "docs" / "cd"
    doc.parent.mkdir()
    assert tool.main(["doc", "--out", str(out), "--doc", str(doc), "--plots", str(pics), "--notes", str(notes)]) == 0
    text = doc.read_text()
    # CAwF reaches JPEG2000's accuracies at half its rate: BD-rate -50 %; 90 % of 40 mAP (36) at
    # 0.2 * 2^0.6 bpp = 0.303 against JPEG2000's 0.606
    assert "- incdet/mAP: CAwF vs JPEG2000: BD-rate -50.0 % (fewer bits at equal accuracy); bpp to reach 90 % " \
           "of the uncompressed accuracy 0.303 vs 0.606." in text
    assert "- incdet/mAP: CAwF vs source: BD-rate" in text and "vs n/a" in text  # source never reaches 36
    # CAwF's 0.4-bpp point (40 mAP) is below the source's highest rate (0.8) and above its best (30)
    dom = tool.dominates(_rows(), "incdet/mAP", "CAwF", "source")
    assert dom == ("CAwF at 0.400 bpp (40.00) is more accurate than every source point "
                   "(best 30.00 at 0.800 bpp, highest rate 0.800 bpp)")
    assert tool.dominates(_rows(), "incdet/mAP", "source", "CAwF") == ""
    assert "A hand-written note." in text and "![mAP / mIoU against bpp](cd/rate_accuracy.png)" in text
    assert (pics / "rate_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    # no eval results: a clear message, no traceback
    assert tool.main(["doc", "--out", str(tmp_path / "empty"), "--doc", str(doc)]) == 1
