"""The codec model zoo: the ``photos`` training domain, exporting a trained source codec into the
zoo, loading it back (sha256 checked) and continuing it with the shared driver."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codec import data as cdata
from incdet.errors import DataError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _img(path: Path, size=(40, 30), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.random.default_rng(len(str(path))).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    im = Image.fromarray(arr)
    (im.convert("L") if mode == "L" else im).save(path)
    return path


def _fake_root(root: Path) -> Path:
    """A tiny data root with the layout of ../shared/data: photos, masks, other domains, Kodak."""
    voc = root / "voc2012-100" / "VOCdevkit" / "VOC2012"
    _img(voc / "JPEGImages" / "2008_000001.jpg")
    _img(voc / "SegmentationClass" / "2008_000001.png", mode="L")
    _img(root / "coco-tiny" / "train2017" / "000000000001.jpg")
    _img(root / "coco-tiny" / "val2017" / "000000000002.jpg")
    for dom in ("photo", "cartoon", "sketch", "art_painting"):
        _img(root / "domains" / "pacs" / dom / "dog" / f"{dom}_1.jpg")
    _img(root / "domains" / "faces" / "celeba_hq" / "src" / "female" / "1.jpg")
    _img(root / "domains" / "faces" / "afhq" / "ref" / "cat" / "2.jpg")
    (root / "domains" / "faces" / "PROVENANCE.md").write_text("not an image\n")
    _img(root / "domains" / "camvid" / "val" / "0016E5_1.png")
    _img(root / "domains" / "camvid" / "valannot" / "0016E5_1.png", mode="L")
    _img(root / "domains" / "documents" / "page.jpg")
    _img(root / "kodak" / "kodim01.png")
    return root


def test_photos_domain_layout(tmp_path):
    root = _fake_root(tmp_path)
    files = cdata.domain_files("photos", root)
    rel = sorted(str(f.relative_to(root)) for f in files)
    assert rel == sorted([
        "voc2012-100/VOCdevkit/VOC2012/JPEGImages/2008_000001.jpg",
        "coco-tiny/train2017/000000000001.jpg",
        "coco-tiny/val2017/000000000002.jpg",
        "domains/pacs/photo/dog/photo_1.jpg",
        "domains/faces/celeba_hq/src/female/1.jpg",
        "domains/faces/afhq/ref/cat/2.jpg",
        "domains/camvid/val/0016E5_1.png",
    ])
    assert not any("kodak" in r or "Segmentation" in r or "valannot" in r or "documents" in r for r in rel)
    assert "photos" in cdata.DOMAINS


def test_photos_domain_empty_root_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="photos"):
        cdata.domain_files("photos", tmp_path)


@pytest.mark.skipif(not (DATA / "kodak").is_dir(), reason="../shared/data is absent")
def test_photos_domain_on_the_shared_data():
    files = cdata.domain_files("photos", DATA)
    kodak = {p.resolve() for p in cdata.domain_files("kodak", DATA)}
    assert len(files) == len(set(files)) == 812   # 100 VOC + 160 COCO + 350 PACS photo + 101 faces + 101 CamVid
    assert not kodak & {f.resolve() for f in files}
    by_top = {}
    for f in files:
        r = f.relative_to(DATA).parts
        key = "/".join(r[:3]) if r[0] == "domains" else "/".join(r[:2])
        by_top[key] = by_top.get(key, 0) + 1
    assert by_top == {"voc2012-100/VOCdevkit": 100, "coco-tiny/train2017": 80, "coco-tiny/val2017": 80,
                      "domains/pacs/photo": 350, "domains/faces/celeba_hq": 56,
                      "domains/faces/afhq": 43, "domains/faces/custom": 2, "domains/camvid/val": 101}
    for f in files:  # no label / mask images: every photo is 3-channel colour
        assert "SegmentationClass" not in f.parts and "valannot" not in f.parts
        with Image.open(f) as im:
            assert im.mode == "RGB", f
