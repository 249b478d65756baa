"""Proposal pickles are data: a pickle that would run code is refused before anything runs,
legitimate detectron2 proposal files (protocols 2-5, numpy 1.x and 2.x names) still load."""
from __future__ import annotations

import builtins
import os
import pickle
import sys
import types

import numpy as np
import pytest

from incdet.data.safeload import RestrictedUnpickler, load_pickle
from incdet.errors import DataError
from incdet.models.proposals import BoxModeStub, ProposalSource, load_detectron2_pkl


class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _Open:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


class _Eval:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (builtins.eval, (self.code,))


def _payloads(marker):
    return {
        "os.system": _System(f"touch {marker}"),
        "builtins.open": _Open(str(marker)),
        "builtins.eval": _Eval(f"open({str(marker)!r}, 'w')"),
    }


@pytest.mark.parametrize("kind,forbidden", [("os.system", os.system.__module__ + ".system"),
                                            ("builtins.open", "open"), ("builtins.eval", "builtins.eval")])
@pytest.mark.parametrize("where", ["top", "inside-valid-dict"])
def test_malicious_pickle_does_not_run(tmp_path, kind, forbidden, where):
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[kind]
    obj = payload if where == "top" else {
        "ids": [1], "boxes": [np.zeros((1, 4), np.float32)], "bbox_mode": payload}
    f = tmp_path / "evil.pkl"
    f.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(DataError) as e:
        load_detectron2_pkl(f)
    assert not marker.exists(), "the pickle ran its payload"
    msg = str(e.value)
    assert str(f) in msg and "forbidden global" in msg and forbidden in msg
    # also through the training-time entry point (learner.proposals=...)
    with pytest.raises(DataError, match="forbidden global"):
        ProposalSource(str(f))
    assert not marker.exists()


def test_plain_unpickler_would_run_it(tmp_path):
    """Control: the payload used above does run when unpickled without the allow-list."""
    marker = tmp_path / "pwned"
    data = pickle.dumps(_Open(str(marker)), protocol=2)
    pickle.loads(data).close()
    assert marker.exists()


def test_object_arrays_and_other_classes_refused(tmp_path):
    f = tmp_path / "obj.pkl"
    f.write_bytes(pickle.dumps({"ids": [1], "boxes": [np.array([None, 1], dtype=object)]}, protocol=4))
    with pytest.raises(DataError, match="obj.pkl.*dtype"):
        load_detectron2_pkl(f)
    g = tmp_path / "cls.pkl"
    g.write_bytes(pickle.dumps({"ids": [1], "boxes": [np.ma.masked_array(np.zeros((1, 4)))]}, protocol=4))
    with pytest.raises(DataError, match="cls.pkl.*(forbidden global|not allowed)"):
        load_detectron2_pkl(g)


@pytest.mark.parametrize("raw,msg", [(b"", "EOFError|cannot read"), (b"\x80\x05garbage", "cannot read"),
                                     (b"(" * 200000, "cannot read")])
def test_malformed_pickles(tmp_path, raw, msg):
    f = tmp_path / "bad.pkl"
    f.write_bytes(raw)
    with pytest.raises(DataError, match=msg) as e:
        load_pickle(f)
    assert str(f) in str(e.value)


def _d2_dict(mode=0):
    rng = np.random.default_rng(0)
    boxes = [np.array([[0, 0, 10, 10], [5, 5, 20, 30], [1, 2, 3, 4]], np.float32), np.zeros((0, 4), np.float32)]
    logits = [np.array([0.1, 2.0, -1.0], np.float32), np.zeros(0, np.float32)]
    return {"ids": [np.int64(7), "000012"], "boxes": boxes, "objectness_logits": logits,
            "bbox_mode": BoxModeStub(mode), "extra": {"note": rng.random(2), "t": (1, 2.5, None)}}


class _FakeBoxMode(int):
    """Pickles as ``detectron2.structures.boxes.BoxMode`` (detectron2 is not installed)."""

    def __reduce__(self):
        return (_d2_boxmode, (int(self),))


def _d2_boxmode(v):  # pragma: no cover - only its name is pickled
    return v


@pytest.fixture
def fake_d2(monkeypatch):
    mod = types.ModuleType("detectron2.structures.boxes")
    mod.BoxMode = _d2_boxmode
    _d2_boxmode.__module__ = "detectron2.structures.boxes"
    _d2_boxmode.__qualname__ = "BoxMode"
    for name in ("detectron2", "detectron2.structures", "detectron2.structures.boxes"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name) if name != mod.__name__ else mod)
    yield
    _d2_boxmode.__module__ = __name__
    _d2_boxmode.__qualname__ = "_d2_boxmode"


class _Numpy2Pickler(pickle.Pickler):
    """Writes arrays as numpy 2.x does (``numpy._core.multiarray._reconstruct``), whichever numpy runs."""

    def reducer_override(self, obj):
        if type(obj) is np.ndarray:
            return (_np2_reconstruct, (np.ndarray, (0,), b"b"), obj.__reduce__()[2])
        return NotImplemented


def _np2_reconstruct(*a):  # pragma: no cover - only its name is pickled
    raise AssertionError


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("numpy_names", ["numpy-running", "numpy2"])
@pytest.mark.parametrize("mode", [0, 1])
def test_detectron2_pickle_loads(tmp_path, fake_d2, monkeypatch, protocol, numpy_names, mode):
    d = _d2_dict(mode)
    d["bbox_mode"] = _FakeBoxMode(mode)
    f = tmp_path / "props.pkl"
    if numpy_names == "numpy2":
        fake = types.ModuleType("numpy._core.multiarray")
        fake._reconstruct = _np2_reconstruct
        monkeypatch.setattr(_np2_reconstruct, "__module__", "numpy._core.multiarray")
        monkeypatch.setattr(_np2_reconstruct, "__qualname__", "_reconstruct")
        monkeypatch.setitem(sys.modules, "numpy._core.multiarray", fake)
        with open(f, "wb") as fh:
            _Numpy2Pickler(fh, protocol=protocol).dump(d)
        monkeypatch.undo()
        assert b"numpy._core" in f.read_bytes()
    else:
        f.write_bytes(pickle.dumps(d, protocol=protocol))
    assert b"detectron2.structures.boxes" in f.read_bytes()
    out = load_detectron2_pkl(f)
    assert set(out) == {"7", "000012"}
    exp = d["boxes"][0][[1, 0, 2]]  # by decreasing objectness
    if mode == 1:
        exp = exp.copy()
        exp[:, 2:] += exp[:, :2]
    np.testing.assert_array_equal(out["7"], exp)
    assert out["000012"].shape == (0, 4)


def test_restricted_unpickler_keeps_plain_data():
    obj = {"a": [1, 2.5, "x", b"\x00\xff", None, True], "b": (np.float32(1.5), np.arange(6).reshape(2, 3)),
           "s": {1, 2}, "c": 1 + 2j}
    for p in range(2, 6):
        import io

        back = RestrictedUnpickler(io.BytesIO(pickle.dumps(obj, protocol=p))).load()
        assert back["a"] == obj["a"] and back["s"] == obj["s"] and back["c"] == obj["c"]
        np.testing.assert_array_equal(back["b"][1], obj["b"][1])
        assert back["b"][0] == np.float32(1.5)


@pytest.mark.parametrize("bad,msg", [({"ids": 5, "boxes": []}, "'ids' must be a list"),
                                     ({"ids": [1], "boxes": [np.zeros((2, 3))]}, "expected \\[K, 4\\]"),
                                     ({"ids": [[1]], "boxes": [np.zeros((0, 4))]}, "ids\\[0\\]"),
                                     ({"ids": [1, 1], "boxes": [np.zeros((0, 4))] * 2}, "appears twice"),
                                     ({"ids": [1], "boxes": [np.zeros((0, 4))], "bbox_mode": "x"}, "bbox_mode"),
                                     ({"ids": [1], "boxes": ["abc"]}, "not a numeric array")])
def test_malformed_detectron2_dicts(tmp_path, bad, msg):
    f = tmp_path / "p.pkl"
    f.write_bytes(pickle.dumps(bad, protocol=4))
    with pytest.raises(DataError, match=msg) as e:
        load_detectron2_pkl(f)
    assert str(f) in str(e.value)


def _npz_with_header(path, shape, descr="<f4", data=b"\0" * 64):
    import io
    import zipfile

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("7.npy", buf.getvalue() + data)
        good = io.BytesIO()
        np.save(good, np.array([[0, 0, 5, 5]], np.float32))
        zf.writestr("8.npy", good.getvalue())


@pytest.mark.parametrize("shape,descr,msg", [((10 ** 9, 4), "<f4", "K <= 100000"), ((3, 5), "<f4", "expected \\[K, 4\\]"),
                                             ((2, 4), "<U3", "not numeric")])
def test_npz_header_bounded_before_allocation(tmp_path, shape, descr, msg):
    """A crafted .npy header declaring 16 GB (numpy would allocate it before reading) is refused."""
    from incdet.models.proposals import read_npz

    f = tmp_path / "p.npz"
    _npz_with_header(f, shape, descr)
    with pytest.raises(DataError, match=msg) as e:
        read_npz(f)
    assert str(f) in str(e.value) and "'7'" in str(e.value)
    src = ProposalSource(str(f))
    assert src.get("8").shape == (1, 4)
    with pytest.raises(DataError, match=msg):
        src.get("7")


def test_npz_damaged_and_single_npy(tmp_path):
    from incdet.models.proposals import read_npz

    f = tmp_path / "p.npz"
    f.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match="p.npz: cannot read proposal .npz"):
        read_npz(f)
    g = tmp_path / "q.npz"
    with open(g, "wb") as fh:
        np.save(fh, np.zeros((1, 4), np.float32))
    with pytest.raises(DataError, match="q.npz: not a proposal .npz"):
        read_npz(g)


def test_memo_index_bomb_refused_before_unpickling(tmp_path):
    """12 bytes whose LONG_BINPUT index would make the C unpickler allocate an 8 GiB memo table."""
    import struct

    f = tmp_path / "memo.pkl"
    f.write_bytes(b"\x80\x02N" + b"r" + struct.pack("<I", 2 ** 30) + b".")
    with pytest.raises(DataError, match="memo.pkl.*memo index 1073741824"):
        load_pickle(f)
