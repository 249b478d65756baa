"""Image and index-mask loading with Pillow, with clear errors for unusable files."""
from __future__ import annotations

import os
import warnings
from typing import Tuple

import numpy as np
import torch
from PIL import Image

from incdet.errors import DataError

# Modes with more than 8 bits per channel: converting them to 8-bit RGB would silently
# rescale/clip intensities, so they are rejected.
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I", "I;32", "F")


def _open(path: str) -> Image.Image:
    if not os.path.isfile(path):
        raise DataError(f"{path}: image file does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. palette-transparency notices
            im = Image.open(path)
            im.load()  # decode now so truncated / corrupt data fails here
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: image too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from None
    except MemoryError:
        raise DataError(f"{path}: cannot read image (it needs more memory than is available)") from None
    except Exception as e:  # noqa: BLE001 - Pillow's decoders raise assorted types for damaged files
        raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
    return im


def image_size(path: str) -> Tuple[int, int]:
    """``(H, W)`` from the file header, without decoding the pixels."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: image file does not exist")
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:  # noqa: BLE001 - OSError, SyntaxError, ValueError and other types from Pillow
        raise DataError(f"{path}: cannot read image header ({e})") from None
    return int(h), int(w)


def load_rgb(path: str) -> torch.Tensor:
    """Read an image as an RGB ``uint8`` tensor ``[3, H, W]``.

    Grayscale (``1``, ``L``), palette (``P``), ``LA``, ``RGBA``, ``CMYK`` and ``YCbCr``
    images are converted to RGB (alpha is dropped, not composited). 16-bit and float
    images (``I;16``, ``I``, ``F``) raise :class:`DataError`, as do missing, unreadable
    and truncated files. EXIF orientation is not applied: annotations refer to the
    stored pixel grid.
    """
    im = _open(path)
    if im.mode in HIGH_BIT_MODES:
        raise DataError(
            f"{path}: image mode {im.mode!r} has more than 8 bits per channel; "
            "16-bit / float images are not supported (convert to 8-bit RGB first)"
        )
    if im.mode != "RGB":
        try:
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            im = im.convert("RGB")
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot convert image mode {im.mode!r} to RGB ({e})") from None
    arr = np.array(im, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:  # pragma: no cover - defensive
        raise DataError(f"{path}: unexpected decoded shape {arr.shape}")
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_index_mask(path: str) -> np.ndarray:
    """Read a class-index PNG (VOC ``SegmentationClass``) as ``uint8`` ``[H, W]``.

    Palette (``P``) images give their palette indices, never the RGB colours; ``L``
    (plain 8-bit index) images are accepted too. Colour (``RGB``/``RGBA``) masks raise
    :class:`DataError` since their colours would first need mapping to indices.
    """
    im = _open(path)
    if im.mode not in ("P", "L"):
        raise DataError(
            f"{path}: segmentation mask has mode {im.mode!r}; expected a palette ('P') or "
            "8-bit index ('L') PNG whose pixel values are class indices (255 = void)"
        )
    return np.array(im, dtype=np.uint8)
