"""Real bitstreams: a versioned header + side information + compressai's rANS payload.

Layout (big-endian), ``HEADER_SIZE`` = 35 bytes::

    magic      4s   b"NICB"
    version    B    FORMAT_VERSION
    flags      B    reserved (0)
    codec_id   8s   digest of the decoder tensors of that domain (CDF tables, medians, weights)
    domain     B    domain id (selects the CAwF path / adapter oracle; informational otherwise)
    height     H    image height (pixels, before padding)
    width      H    image width
    lat_c      H    latent channels
    lat_h      H    latent height
    lat_w      H    latent width
    side_len   H    bytes of side information (e.g. the quantised gate output)
    payload    I    bytes of the rANS payload
    crc32      I    CRC32 of the header fields above + side + payload

then ``side`` and ``payload``. The bpp of a file is ``8 * len(file) / (H * W)``, header included.

Decoding checks, in order: length, magic, version, codec id (against the model), shape
consistency, CRC32; any failure raises :class:`incdet.errors.DataError` naming the file,
so a damaged file never reaches the entropy decoder and never yields a garbage image.

Determinism. The rANS coder works on integers with the quantised CDF tables stored in the
checkpoint (never recomputed at decode time), so the decoded *latents* are identical on every
machine that loads the same checkpoint. The synthesis transform is floating point: on the same
machine and the same device it is deterministic, hence decoding is bit-exact; on another
machine (other CPU/BLAS, GPU) the 8-bit output may differ by rounding in rare pixels, but the
file always decodes (the latents are exact).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from codec.entropy import is_updated
from codec.model import pad_to_multiple
from incdet.errors import DataError

MAGIC = b"NICB"
FORMAT_VERSION = 1
_FMT = ">4sBB8sBHHHHHHI"
_FIELDS_SIZE = struct.calcsize(_FMT)
HEADER_SIZE = _FIELDS_SIZE + 4
PAD_MULTIPLE = 16


@dataclass
class Header:
    codec_id: bytes
    domain: int
    height: int
    width: int
    latent_shape: tuple  # (C, h, w)
    side_len: int
    payload_len: int
    version: int = FORMAT_VERSION
    flags: int = 0

    def fields(self) -> bytes:
        c, h, w = self.latent_shape
        return struct.pack(_FMT, MAGIC, self.version, self.flags, self.codec_id, self.domain,
                           self.height, self.width, c, h, w, self.side_len, self.payload_len)


def _check_model(model) -> None:
    for m in model.modules():
        if m.__class__.__name__ == "EntropyBottleneck" and not is_updated(m):
            raise DataError("the codec's CDF tables are not computed: call model.update() after training "
                            "(checkpoints written by `codec` tools already contain them)")


def image_to_tensor(img: Union[Image.Image, np.ndarray, Tensor]) -> Tensor:
    """PIL image / HxWx3 uint8 array / [3,H,W] uint8 tensor -> float [1,3,H,W] in [0,1]."""
    if isinstance(img, Image.Image):
        img = np.asarray(img.convert("RGB"))
    if isinstance(img, np.ndarray):
        img = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
    if img.dtype == torch.uint8:
        img = img.float() / 255.0
    return img.unsqueeze(0) if img.dim() == 3 else img


def tensor_to_uint8(x: Tensor) -> Tensor:
    """float ``[.., 3, H, W]`` in [0,1] -> uint8 (clamped and rounded, 8-bit RGB)."""
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)


def read_image(path) -> Tensor:
    """Read an image file as uint8 ``[3, H, W]`` RGB; unreadable or 16-bit -> ``DataError``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise DataError(f"{path}: {im.mode} images (16-bit / float) are not supported, convert to 8-bit RGB")
            arr = np.asarray(im.convert("RGB"))
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: cannot read image ({e.__class__.__name__}: {e})") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


@torch.no_grad()
def encode(model, image: Tensor, domain: int = 0) -> bytes:
    """Compress one image (uint8 ``[3,H,W]`` or float ``[1,3,H,W]``) to bytes."""
    _check_model(model)
    n_dom = model.n_domains()
    if not 0 <= int(domain) <= 255 or (n_dom is not None and domain >= n_dom):
        known = "0..255" if n_dom is None else f"0..{n_dom - 1}"
        raise DataError(f"domain {domain} not available in this codec (domains {known})")
    x = image_to_tensor(image)
    if x.shape[0] != 1 or x.shape[1] != 3:
        raise DataError(f"encode expects one RGB image, got shape {tuple(x.shape)}")
    dev = next(model.parameters()).device
    x = x.to(dev)
    h, w = x.shape[-2:]
    if h > 65535 or w > 65535:
        raise DataError(f"image {w}x{h} too large for the bitstream format (max 65535)")
    xp, _ = pad_to_multiple(x, PAD_MULTIPLE)
    y = model.analysis(xp, domain)
    eb = model.entropy_model(domain)
    side = model.side_info(y, domain)
    strings = eb.compress(y)
    payload = strings[0]
    hdr = Header(codec_id=model.codec_id(domain, side), domain=int(domain), height=int(h), width=int(w),
                 latent_shape=tuple(int(s) for s in y.shape[1:]), side_len=len(side), payload_len=len(payload))
    fields = hdr.fields()
    crc = zlib.crc32(payload, zlib.crc32(side, zlib.crc32(fields)))
    return fields + struct.pack(">I", crc) + side + payload


def parse(data: bytes, name: str = "<bytes>") -> tuple:
    """Parse and verify structure + CRC (not the codec id). Returns ``(Header, side, payload)``."""
    if len(data) < HEADER_SIZE:
        raise DataError(f"{name}: truncated bitstream ({len(data)} bytes, the header alone is {HEADER_SIZE})")
    if data[:4] != MAGIC:
        raise DataError(f"{name}: not a codec bitstream (magic {data[:4]!r}, expected {MAGIC!r})")
    magic, version, flags, codec_id, domain, H, W, c, lh, lw, side_len, payload_len = struct.unpack(_FMT, data[:_FIELDS_SIZE])
    if version != FORMAT_VERSION:
        raise DataError(f"{name}: bitstream format version {version} is not supported (this decoder reads version {FORMAT_VERSION})")
    (crc,) = struct.unpack(">I", data[_FIELDS_SIZE:HEADER_SIZE])
    expected = HEADER_SIZE + side_len + payload_len
    if len(data) < expected:
        raise DataError(f"{name}: truncated bitstream ({len(data)} bytes, header announces {expected})")
    if len(data) > expected:
        raise DataError(f"{name}: {len(data) - expected} trailing bytes after the payload (file damaged?)")
    side = data[HEADER_SIZE:HEADER_SIZE + side_len]
    payload = data[HEADER_SIZE + side_len:]
    got = zlib.crc32(payload, zlib.crc32(side, zlib.crc32(data[:_FIELDS_SIZE])))
    if got != crc:
        raise DataError(f"{name}: checksum mismatch (CRC32 {got:08x}, header says {crc:08x}): the file is corrupt")
    hdr = Header(codec_id=codec_id, domain=domain, height=H, width=W, latent_shape=(c, lh, lw),
                 side_len=side_len, payload_len=payload_len, version=version, flags=flags)
    return hdr, side, payload


@torch.no_grad()
def decode(model, data: bytes, name: str = "<bytes>") -> Tensor:
    """Decode bytes to a uint8 ``[3, H, W]`` image; any problem -> ``DataError`` naming ``name``."""
    _check_model(model)
    hdr, side, payload = parse(data, name)
    d = hdr.domain
    n_dom = model.n_domains()
    if n_dom is not None and d >= n_dom:
        raise DataError(f"{name}: domain {d} unknown to this codec (it has domains 0..{n_dom - 1})")
    want = model.codec_id(d, side)
    if hdr.codec_id != want:
        raise DataError(f"{name}: written by another codec (codec id {hdr.codec_id.hex()}, this model's domain {d} "
                        f"has {want.hex()}); decode it with the checkpoint that wrote it")
    c, lh, lw = hdr.latent_shape
    ph = -(-hdr.height // PAD_MULTIPLE) * PAD_MULTIPLE // 16
    pw = -(-hdr.width // PAD_MULTIPLE) * PAD_MULTIPLE // 16
    if c != model.latent_channels(d) or (lh, lw) != (ph, pw) or hdr.height == 0 or hdr.width == 0:
        raise DataError(f"{name}: latent shape {hdr.latent_shape} inconsistent with image {hdr.width}x{hdr.height} "
                        f"and the codec ({model.latent_channels(d)} channels)")
    try:
        side_obj = model.parse_side(side, d)
    except ValueError as e:
        raise DataError(f"{name}: bad side information: {e}") from None
    eb = model.entropy_model(d)
    y_hat = eb.decompress([payload], (lh, lw))
    dev = next(model.parameters()).device
    x_hat = model.synthesis(y_hat.to(dev), d, side_obj)
    x_hat = x_hat[..., : hdr.height, : hdr.width]
    return tensor_to_uint8(x_hat[0]).cpu()


def compress_file(model, src, dst, domain: int = 0) -> dict:
    """Compress image file ``src`` into ``dst``; returns ``{"bytes", "bpp", "height", "width"}``."""
    img = read_image(src)
    data = encode(model, img, domain)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data)
    h, w = img.shape[-2:]
    return {"bytes": len(data), "bpp": 8.0 * len(data) / (h * w), "height": h, "width": w}


def decompress_file(model, src, dst: Optional[Union[str, Path]] = None) -> Tensor:
    """Decode bitstream file ``src`` (writes a PNG to ``dst`` when given); returns uint8 ``[3,H,W]``."""
    src = Path(src)
    if not src.is_file():
        raise DataError(f"{src}: no such bitstream file")
    img = decode(model, src.read_bytes(), name=str(src))
    if dst is not None:
        dst = Path(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(dst)
    return img


def read_header(src) -> Header:
    """Parse and verify a bitstream file's header (no model needed)."""
    src = Path(src)
    if not src.is_file():
        raise DataError(f"{src}: no such bitstream file")
    return parse(src.read_bytes(), str(src))[0]


@torch.no_grad()
def reconstruct(model, image: Tensor, domain: int = 0) -> Tensor:
    """The model's forward quantised reconstruction as uint8 (pad, eval forward, crop, round)."""
    x = image_to_tensor(image).to(next(model.parameters()).device)
    h, w = x.shape[-2:]
    xp, _ = pad_to_multiple(x, PAD_MULTIPLE)
    was = model.training
    model.eval()
    out = model(xp, domain)
    model.train(was)
    return tensor_to_uint8(out["x_hat"][..., :h, :w][0]).cpu()
