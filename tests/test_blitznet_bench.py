"""tools/bench_blitznet.py: a bad --device is one line and exit 2 (no traceback, no output file)."""
from conftest import load_tool


def test_bench_blitznet_bad_device(tmp_path, capsys):
    m = load_tool("bench_blitznet")
    assert m.main(["--device", "banana", "--out", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "banana" in err[0] and not (tmp_path / "b.json").exists()


def test_bench_blitznet_amp_on_cpu_is_one_line(tmp_path, capsys):
    m = load_tool("bench_blitznet")
    assert m.main(["--device", "cpu", "--amp", "bf16", "--out", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a CUDA device" in err[0] and not (tmp_path / "b.json").exists()


def test_bench_blitznet_freezing_needs_compile(tmp_path, capsys):
    m = load_tool("bench_blitznet")
    assert m.main(["--device", "cpu", "--freezing", "--quick", "--out", str(tmp_path / "b.json")]) == 2
    assert "--freezing applies to --compile" in capsys.readouterr().err


def test_bench_blitznet_compile_peer_needs_compile(tmp_path, capsys):
    m = load_tool("bench_blitznet")
    assert m.main(["--device", "cpu", "--compile-peer", "--quick", "--out", str(tmp_path / "b.json")]) == 2
    assert "--compile-peer applies to --compile" in capsys.readouterr().err and not (tmp_path / "b.json").exists()
