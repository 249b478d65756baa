"""shapes-voc writes through incdet.data.vocwriter: its XML and palette PNGs are byte-identical
to what the generator wrote with its own code before (golden text / the former PNG call)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from incdet.data import shapes
from incdet.data.vocwriter import annotation_xml, save_palette_png, voc_palette

GOLDEN_XML = (
    "<annotation>\n\t<folder>shapes-voc</folder>\n\t<filename>train_000001.jpg</filename>\n\t<source>\n"
    "\t\t<database>shapes-voc (synthetic)</database>\n"
    "\t\t<annotation>incdet make-shapes v{v} seed 7</annotation>\n\t\t<image>synthetic</image>\n"
    "\t</source>\n\t<size>\n\t\t<width>64</width>\n\t\t<height>64</height>\n\t\t<depth>3</depth>\n\t</size>\n"
    "\t<segmented>1</segmented>\n\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n"
    "\t\t<truncated>1</truncated>\n\t\t<occluded>0</occluded>\n\t\t<difficult>1</difficult>\n\t\t<bndbox>\n"
    "\t\t\t<xmin>1</xmin>\n\t\t\t<ymin>6</ymin>\n\t\t\t<xmax>31</xmax>\n\t\t\t<ymax>64</ymax>\n"
    "\t\t</bndbox>\n\t</object>\n</annotation>\n"
)


def test_shapes_xml_is_the_former_text():
    ob = {"label": 3, "truncated": 1, "occluded": 0, "difficult": 1, "box": (0, 5, np.int64(30), 63)}
    text = shapes.shapes_xml("train_000001", 64, [ob], seed=7)
    assert text == GOLDEN_XML.format(v=shapes.GENERATOR_VERSION, name=shapes.SHAPES_CLASSES[2])


def test_palette_png_matches_former_writer(tmp_path):
    arr = np.random.default_rng(0).integers(0, 22, (40, 30)).astype(np.uint8)
    arr[:3] = 255
    save_palette_png(arr, tmp_path / "new.png")
    im = Image.fromarray(arr, "P")  # what shapes-voc did before
    im.putpalette(voc_palette())
    im.save(tmp_path / "old.png", format="PNG", optimize=False, compress_level=6)
    assert (tmp_path / "new.png").read_bytes() == (tmp_path / "old.png").read_bytes()
    back = Image.open(tmp_path / "new.png")
    assert back.mode == "P" and (np.asarray(back) == arr).all()


def test_plain_annotation_xml_unchanged():
    text = annotation_xml("a.jpg", (30, 40), [{"name": "cat", "bbox": (1, 2, 3.5, 4)}])
    assert "<occluded>" not in text and "<source>" not in text and "<segmented>" not in text
    assert "  <object>\n    <name>cat</name>" in text and "<xmax>3.5</xmax>" in text
    assert shapes.voc_palette is voc_palette
