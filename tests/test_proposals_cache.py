"""Proposals at scale: the process pool gives the same boxes, the per-image cache resumes a
killed run and recomputes damaged pieces, ``incdet proposals --import`` converts precomputed files."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from incdet.errors import DataError
from incdet.models import proposals as P
from incdet.models.cli import main as models_main

from test_incdet_helpers import SynthBoxes


def _voc(root, n=5, size=72):
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    ids = []
    for s in SynthBoxes(n, size=size, seed=3).items:
        Image.fromarray(s.image.permute(1, 2, 0).numpy()).save(root / "JPEGImages" / f"{s.image_id}.jpg")
        ids.append(s.image_id)
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids) + "\n")
    return P.voc_image_list(root, "train")


def _same(a, b):
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.timeout(120)
def test_pool_gives_the_same_boxes_as_one_process(tmp_path):
    items = _voc(tmp_path / "voc")
    one = P.compute_for_images(items, max_proposals=300, workers=1, progress=False)
    two = P.compute_for_images(items, max_proposals=300, workers=2, progress=False, cache_dir=tmp_path / "c")
    _same(one, two)
    assert all(len(v) > 0 for v in one.values())
    # what the cache holds is what was returned
    cache = P.ShardCache(tmp_path / "c", {"method": "selective_search", "max_proposals": 300, "max_side": 500})
    _same(one, {i: cache.get(i) for i, _ in items})


def test_killed_run_resumes_and_damaged_shards_are_recomputed(tmp_path, monkeypatch):
    items = _voc(tmp_path / "voc")
    ref = P.compute_for_images(items, max_proposals=200, workers=1, progress=False)
    real = P.compute_proposals
    calls = []

    def dying(image, *a, **k):  # the run is "killed" while computing the 4th image
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(image, *a, **k)

    monkeypatch.setattr(P, "compute_proposals", dying)
    with pytest.raises(KeyboardInterrupt):
        P.compute_for_images(items, max_proposals=200, workers=1, progress=False, cache_dir=tmp_path / "c")
    cache = P.ShardCache(tmp_path / "c", {"method": "selective_search", "max_proposals": 200, "max_side": 500})
    done = [i for i, _ in items if cache.path(i).is_file()]
    assert done == [i for i, _ in items][:3]  # what was computed before the kill is kept

    # damage the kept pieces three ways: flipped bytes (zip CRC), a pickled object array, NaN boxes
    p0 = cache.path(done[0])
    raw = bytearray(p0.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    p0.write_bytes(bytes(raw))
    np.savez(cache.path(done[1]), boxes=np.array([object()] * 4, dtype=object), allow_pickle=True)
    bad = ref[done[2]].copy()
    bad[0, 0] = np.nan
    cache.put(done[2], bad)

    monkeypatch.setattr(P, "compute_proposals", real)
    seen = []
    real_job = P._job

    def counting(args):
        seen.append(args[0])
        return real_job(args)

    monkeypatch.setattr(P, "_job", counting)
    got = P.compute_for_images(items, max_proposals=200, workers=1, progress=False, cache_dir=tmp_path / "c")
    _same(ref, got)
    # the 3 damaged images and the 2 never done are computed; nothing damaged was used
    assert sorted(seen) == sorted(i for i, _ in items)

    # a restarted run skips intact pieces: a marked piece is taken as it is, not recomputed
    seen.clear()
    mark = np.array([[1, 2, 3, 4]], np.float32)
    cache.put(done[0], mark)
    got = P.compute_for_images(items, max_proposals=200, workers=1, progress=False, cache_dir=tmp_path / "c")
    assert seen == [] and np.array_equal(got[done[0]], mark)


def test_cache_with_other_parameters_is_refused(tmp_path):
    P.ShardCache(tmp_path / "c", {"method": "selective_search", "max_proposals": 10, "max_side": 500}).put("a", np.zeros((1, 4)))
    with pytest.raises(DataError, match=r"params.json.*other parameters"):
        P.ShardCache(tmp_path / "c", {"method": "selective_search", "max_proposals": 20, "max_side": 500})


def test_shard_names_of_odd_ids_stay_in_the_cache(tmp_path):
    c = P.ShardCache(tmp_path / "c", {"method": "m"})
    for iid in ("../../etc/x", "a b", "id-1", "2008_000001", "7"):
        c.put(iid, np.array([[0, 0, 2, 2]], np.float32))
        assert c.path(iid).parent == c.dir and c.get(iid).shape == (1, 4)
    assert len(list(c.dir.glob("*.npz"))) == 5


@pytest.mark.timeout(120)
def test_cli_resumes_from_its_cache(tmp_path, capsys):
    _voc(tmp_path / "voc", n=3)
    out = tmp_path / "p.npz"
    args = ["proposals", "--data", str(tmp_path / "voc"), "--split", "train", "--out", str(out),
            "--workers", "1", "--quiet", "--max-proposals", "100"]
    assert models_main(args + ["--limit", "2", "--keep-cache"]) == 0
    parts = tmp_path / "p.npz.parts"
    assert len(list(parts.glob("*.npz"))) == 2
    out.unlink()  # as if the run had been killed before the merge
    assert models_main(args) == 0
    assert not parts.exists()  # merged, then deleted
    z = P.read_npz(out)
    assert len(z) == 3
    ref = P.compute_for_images(P.voc_image_list(tmp_path / "voc", "train"), max_proposals=100, workers=1, progress=False)
    _same(ref, {k: z[k] for k in ref})


def test_cli_import_detectron2_pkl_and_npz(tmp_path, capsys):
    ids = [i for i, _ in _voc(tmp_path / "voc", n=3)]
    d2 = {"ids": ids[:2], "boxes": [np.array([[0, 0, 9, 9], [1, 1, 5, 5]], np.float32), np.zeros((0, 4), np.float32)],
          "objectness_logits": [np.array([0.1, 0.9]), np.zeros(0)], "bbox_mode": 0}
    with open(tmp_path / "d2.pkl", "wb") as f:
        pickle.dump(d2, f)
    P.save_npz(tmp_path / "more.npz", {ids[2]: np.array([[2, 2, 8, 8]], np.float32), "other": np.zeros((1, 4))})
    out = tmp_path / "out.npz"
    rc = models_main(["proposals", "--import", str(tmp_path / "d2.pkl"), str(tmp_path / "more.npz"),
                      "--data", str(tmp_path / "voc"), "--split", "train", "--out", str(out)])
    assert rc == 0
    z = P.read_npz(out)
    assert sorted(z) == sorted(ids)  # only the split's images
    assert np.array_equal(z[ids[0]], [[1, 1, 5, 5], [0, 0, 9, 9]])  # by objectness
    src = P.ProposalSource(str(out))
    assert src.get(ids[2], (72, 72)).shape == (1, 4)
    # a split image with no proposals is an error naming the files (unless --allow-missing)
    rc = models_main(["proposals", "--import", str(tmp_path / "d2.pkl"), "--data", str(tmp_path / "voc"),
                      "--split", "train", "--out", str(tmp_path / "o2.npz")])
    assert rc == 2 and "no proposals for 1 of 3 images" in capsys.readouterr().err
    assert models_main(["proposals", "--import", str(tmp_path / "d2.pkl"), "--data", str(tmp_path / "voc"),
                        "--split", "train", "--out", str(tmp_path / "o2.npz"), "--allow-missing"]) == 0
    # a pickle that would run code is refused before anything runs
    with open(tmp_path / "evil.pkl", "wb") as f:
        f.write(b"cos\nsystem\n(S'echo hi'\ntR.")
    assert models_main(["proposals", "--import", str(tmp_path / "evil.pkl"), "--out", str(tmp_path / "o3.npz")]) == 2
    assert "os.system" in capsys.readouterr().err and not (tmp_path / "o3.npz").exists()
