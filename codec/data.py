"""Image domains for codec adaptation (read from ``../shared/data``).

Domains (name -> files under the data root, default ``../shared/data``):

==============  ==================================================================
``natural``     VOC2012 JPEGImages (voc2012-100) + COCO train2017/val2017 (coco-tiny)
                (+ CamVid when ``natural_with_camvid``; off by default because
                CamVid is also a target domain)
``photos``      every natural photograph of the data root except Kodak (the source codec's
                training set): VOC2012 JPEGImages, COCO train2017 + val2017, PACS ``photo``,
                faces (CelebA-HQ, AFHQ, custom) and CamVid ``val`` frames; never label / mask
                images (VOC SegmentationClass, CamVid valannot), documents (page scans) or the
                PACS art_painting / cartoon / sketch domains
``kodak``       kodak/*.png (the source-domain test set, eval only)
``photo``, ``cartoon``, ``sketch``, ``art_painting``: domains/pacs/<domain>/<class>/*
``documents``   domains/documents/*.jpg
``faces``       domains/faces/**/*.jpg
``camvid``      domains/camvid/val/*.png
==============  ==================================================================

Any other name is a path: a folder of images (recursive), or a VOC image-set file
``ROOT/ImageSets/Main/<split>.txt`` whose ids name ``ROOT/JPEGImages/<id>.jpg`` (e.g.
``data/shapes-voc/ImageSets/Main/train.txt``: a detector's training images as a codec domain).

Each domain is split deterministically into train/eval by file name (every ``eval_every``-th
file of the sorted list goes to eval). Training items are random crops (uint8 ``[3, c, c]``;
images smaller than the crop are replicate-padded); eval items are whole images (uint8
``[3, H, W]``).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from codec.bitstream import read_image
from incdet.errors import DataError

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff"}
PACS_DOMAINS = ("photo", "cartoon", "sketch", "art_painting")
DOMAINS = ("natural", "photos", "kodak", *PACS_DOMAINS, "documents", "faces", "camvid")


def default_data_root() -> Path:
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def image_files(folder: Path, recursive: bool = True) -> List[Path]:
    """Sorted image files (by extension) under ``folder`` (recursively by default); [] if absent."""
    if not folder.is_dir():
        return []
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXT)


#: the folders (relative to the data root; recursive?) whose images make the ``photos`` domain:
#: the natural photographs of ``../shared/data`` (see each folder's PROVENANCE.md), Kodak excluded
PHOTO_FOLDERS = (
    ("voc2012-100/VOCdevkit/VOC2012/JPEGImages", False),   # 100 VOC2012 photos (not SegmentationClass masks)
    ("coco-tiny/train2017", False),                        # 80 COCO photos
    ("coco-tiny/val2017", False),                          # 80 COCO photos
    ("domains/pacs/photo", True),                          # 7 classes x 50 PACS photos (227x227)
    ("domains/faces", True),                               # CelebA-HQ / AFHQ / custom face photos
    ("domains/camvid/val", False),                         # 101 CamVid frames (not valannot label maps)
)


def photo_files(root) -> List[Path]:
    """The ``photos`` domain: every file of :data:`PHOTO_FOLDERS` under ``root`` (sorted, no
    duplicates), with any file under ``root/kodak`` refused (Kodak is the test set)."""
    root = Path(root)
    files = []
    for rel, rec in PHOTO_FOLDERS:
        files += image_files(root / rel, rec)
    kodak = (root / "kodak").resolve()
    files = sorted({f for f in files if kodak not in f.resolve().parents})
    return files


def image_set_files(images: str, max_images: Optional[int] = None, root=None) -> List[Path]:
    """The files of ``images``: a folder, or a domain name (``kodak``, ``photos``, ...); the first
    ``max_images``; none at all -> ``DataError``."""
    p = Path(images)
    files = image_files(p) if p.is_dir() else domain_files(images, root)
    if max_images:
        files = files[:max_images]
    if not files:
        raise DataError(f"{images}: no images")
    return files


def domain_files(name: str, root=None, natural_with_camvid: bool = False) -> List[Path]:
    """All image files of domain ``name`` (sorted). Unknown name -> ``DataError``; no files -> ``DataError``."""
    root = Path(root) if root is not None else default_data_root()
    if name == "photos":
        files = photo_files(root)
    elif name == "natural":
        files = image_files(root / "voc2012-100" / "VOCdevkit" / "VOC2012" / "JPEGImages", False)
        files += image_files(root / "coco-tiny" / "train2017") + image_files(root / "coco-tiny" / "val2017")
        if natural_with_camvid:
            files += image_files(root / "domains" / "camvid" / "val", False)
    elif name == "kodak":
        files = image_files(root / "kodak", False)
    elif name in PACS_DOMAINS:
        files = image_files(root / "domains" / "pacs" / name)
    elif name == "documents":
        files = image_files(root / "domains" / "documents", False)
    elif name == "faces":
        files = image_files(root / "domains" / "faces")
    elif name == "camvid":
        files = image_files(root / "domains" / "camvid" / "val", False)
    else:
        p = Path(name)
        if p.is_dir():  # any folder of images is a domain too
            files = image_files(p)
        elif p.is_file() and p.suffix == ".txt":  # a VOC image set
            files = voc_image_set(p)
        else:
            raise DataError(f"unknown image domain {name!r}; known: {', '.join(DOMAINS)} "
                            "(or a folder of images, or a VOC image-set .txt file)")
    if not files:
        raise DataError(f"domain {name!r}: no images found under {root} (is ../shared/data present?)")
    return files


def voc_image_set(path) -> List[Path]:
    """Images of a VOC image-set file ``ROOT/ImageSets/<Main|Segmentation>/<split>.txt`` (one id per
    line, optional trailing columns): ``ROOT/JPEGImages/<id>.jpg`` in the file's order, sorted."""
    path = Path(path)
    if len(path.resolve().parents) < 3 or path.parent.parent.name != "ImageSets":
        raise DataError(f"{path}: a VOC image set must be ROOT/ImageSets/<Main|Segmentation>/<split>.txt")
    root = path.parents[2]
    ids = [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip()]
    if not ids:
        raise DataError(f"{path}: VOC image set is empty")
    files = [root / "JPEGImages" / f"{i}.jpg" for i in ids]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{path}: {len(missing)} of {len(files)} listed images are missing, e.g. {missing[0]}")
    return sorted(files)


def split_files(files: Sequence[Path], eval_every: int = 5):
    """Deterministic split: file ``i`` of the sorted list goes to eval when ``i % eval_every == 0``."""
    files = sorted(files)
    ev = [f for i, f in enumerate(files) if i % eval_every == 0]
    tr = [f for i, f in enumerate(files) if i % eval_every != 0]
    return tr, ev


class ImageFiles(Dataset):
    """Whole images, uint8 ``[3, H, W]``; ``max_images`` keeps the first ones."""

    def __init__(self, files: Sequence[Path], max_images: Optional[int] = None, name: str = ""):
        self.files = list(files)[: max_images] if max_images else list(files)
        self.name = name

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return read_image(self.files[i])


class RandomCrops(Dataset):
    """Random ``crop`` x ``crop`` crops (uint8 ``[3, crop, crop]``) with random horizontal flips.

    ``repeats`` virtual passes over the files per epoch (few images, many crops)."""

    def __init__(self, files: Sequence[Path], crop: int = 256, repeats: int = 1, seed: int = 0, name: str = ""):
        if not files:
            raise DataError(f"training set {name!r} is empty")
        self.files = list(files)
        self.crop = int(crop)
        self.repeats = max(1, int(repeats))
        self.seed = seed
        self.name = name

    def __len__(self) -> int:
        return len(self.files) * self.repeats

    def __getitem__(self, i: int) -> torch.Tensor:
        img = read_image(self.files[i % len(self.files)])
        # crop positions from torch's RNG: seeded by the driver / each DataLoader worker
        rng = random.Random(int(torch.randint(0, 2 ** 62, ())))
        return random_crop(img, self.crop, rng)


def random_crop(img: torch.Tensor, crop: int, rng: random.Random) -> torch.Tensor:
    _, h, w = img.shape
    if h < crop or w < crop:
        img = F.pad(img[None].float(), (0, max(0, crop - w), 0, max(0, crop - h)), mode="replicate")[0].to(torch.uint8)
        _, h, w = img.shape
    y = rng.randint(0, h - crop)
    x = rng.randint(0, w - crop)
    out = img[:, y:y + crop, x:x + crop]
    if rng.random() < 0.5:
        out = out.flip(-1)
    return out.contiguous()


def collate_crops(items: List[torch.Tensor]) -> torch.Tensor:
    """Stack uint8 crops into float ``[B, 3, c, c]`` in [0, 1]."""
    return torch.stack(items).float() / 255.0
