"""incdet.engine.checkpoint.write_atomic / write_atomic_path: the one atomic writer of the tree."""
import os
import threading

import numpy as np
import pytest

from incdet.engine import checkpoint
from incdet.engine.checkpoint import save_atomic, write_atomic, write_atomic_path


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_error_keeps_old_file_and_leaves_no_temp(tmp_path):
    out = tmp_path / "r.json"
    write_atomic(out, lambda f: f.write("old"))

    def boom(f):
        f.write("half")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        write_atomic(out, boom)
    assert out.read_text() == "old" and _names(tmp_path) == ["r.json"]


def test_error_on_new_target_creates_nothing(tmp_path):
    def boom(f):
        f.write(b"half")
        raise OSError("disk full")

    def boom_path(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(tmp_path / "new.bin", boom, binary=True)
    with pytest.raises(OSError, match="disk full"):
        write_atomic_path(tmp_path / "new.npz", boom_path)
    assert _names(tmp_path) == []


def test_failed_replace_leaves_no_temp(tmp_path, monkeypatch):
    out = tmp_path / "w.pt"
    save_atomic({"a": 1}, out)
    before = out.read_bytes()

    def no_replace(*a, **k):
        raise OSError("replace failed")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError, match="replace failed"):
        save_atomic({"a": 2}, out)
    assert out.read_bytes() == before and _names(tmp_path) == ["w.pt"]


@pytest.mark.parametrize("which", ["file", "path"])
def test_fsync_before_replace(tmp_path, monkeypatch, which):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    out = tmp_path / "x.txt"
    if which == "file":
        write_atomic(out, lambda f: f.write("hi"))
    else:
        write_atomic_path(out, lambda tmp: tmp.write_text("hi"))
    assert events == ["fsync", "replace"] and out.read_text() == "hi"


def test_path_writer(tmp_path):
    """np.savez appends .npz to any other name: the temp name ends with the given suffix."""
    arr = np.arange(8, dtype=np.float32).reshape(2, 4)
    seen = []

    def savez(tmp):
        seen.append(tmp)
        np.savez_compressed(tmp, boxes=arr)

    write_atomic_path(tmp_path / "p.npz", savez)
    write_atomic_path(tmp_path / "p.bin", savez, suffix=".npz")
    assert all(t.parent == tmp_path and t.name.startswith(".") and t.suffix == ".npz" for t in seen)
    for name in ("p.npz", "p.bin"):
        with np.load(tmp_path / name) as z:
            assert np.array_equal(z["boxes"], arr)
    assert _names(tmp_path) == ["p.bin", "p.npz"]


def test_path_writer_that_writes_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="created no temp file"):
        write_atomic_path(tmp_path / "p.bin", lambda tmp: None)
    assert _names(tmp_path) == []


def test_temp_names_unique_per_thread(tmp_path):
    """Threads writing files of one folder at once: each gets its own temp file."""
    names, barrier = [], threading.Barrier(4)

    def write(k):
        def w(f):
            names.append(os.path.basename(f.name))
            barrier.wait(timeout=10)  # all four temp files open at once
            f.write(str(k))
        write_atomic(tmp_path / f"s{k}.txt", w)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 4 and all(n.startswith(".s") and ".tmp-" in n for n in names)
    assert _names(tmp_path) == [f"s{k}.txt" for k in range(4)]
    assert [(tmp_path / f"s{k}.txt").read_text() for k in range(4)] == ["0", "1", "2", "3"]
    assert checkpoint._temp_path(tmp_path / "a").name == f".a.tmp-{os.getpid()}-{threading.get_ident()}"
