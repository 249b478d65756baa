"""tools/bench_incdet.py on a tiny network: every step kind timed, the JSON written, bad device one line."""
import json

from conftest import load_tool


def test_bench_incdet_tiny(tmp_path, capsys):
    m = load_tool("bench_incdet")
    out = tmp_path / "b.json"
    rc = m.main(["--size", "64", "--depth", "18", "--width", "16", "--rois", "8", "--proposals", "300", "--iters", "1",
                 "--warmup", "0", "--images", "4", "--roi-size", "5", "--compare-old", "--json", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())
    for kind in ("plain", "live", "cached", "live_noreuse", "cached_noreuse"):
        r = d["results"][kind]
        assert len(r["times_s"]) == 1 and r["median_s"] > 0 and r["mean_proposals"] > 0
        assert len(r["reused_rois"]) == 1 and r["ratio"] > 0
    # the old path shares nothing; the plain step has no distillation RoIs to share
    for kind in ("plain", "live_noreuse", "cached_noreuse"):
        assert d["results"][kind]["mean_reused_rois"] == 0
    # CPU targets (issue 18): only the cached step has one
    assert d["results"]["plain"]["ratio"] == 1.0 and d["targets"] == {"cached": 1.5} and set(d["met"]) == {"cached"}
    assert d["results"]["parts"]["cached_floor_ratio"] >= 1.0 and d["results"]["parts"]["teacher_s"] > 0
    assert d["results"]["device"] == "cpu" and len(d["results"]["loadavg"]["before"]) == 3
    text = capsys.readouterr().out
    assert "median ms" in text and "cached-teacher step cannot cost less" in text and "load average" in text


def test_bench_incdet_bad_device(tmp_path, capsys):
    m = load_tool("bench_incdet")
    assert m.main(["--device", "banana", "--json", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "banana" in err[0] and not (tmp_path / "b.json").exists()


def test_synth_boxes_shared_with_the_tests():
    from test_incdet_helpers import SynthBoxes

    a = SynthBoxes(3, size=64, classes=(1, 2), seed=0)
    b = load_tool("bench_incdet").SynthBoxes(3, size=64, classes=(1, 2), seed=0)
    assert [s.image_id for s in a] == ["im000", "im001", "im002"]
    for x, y in zip(a, b):
        assert (x.image == y.image).all() and (x.boxes == y.boxes).all() and (x.labels == y.labels).all()
