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

Decoding checks, in order: file size, length, magic, version, sizes against
:class:`DecodeLimits` (image pixels, latent elements) and the latent shape the image size
implies, payload length (whole 32-bit words, at most :func:`codec.rans.max_payload_bytes`),
CRC32, then codec id and channels (against the model); the payload is then decoded by the
bounds-checked :func:`codec.rans.decode_symbols`, which refuses a stream that ends early or
late. Any failure raises :class:`incdet.errors.DataError` (:class:`CorruptStream` for the
payload) naming the file, before anything is allocated beyond the limits. The CRC catches
accidental damage; a forged file (CRC recomputed) cannot crash the decoder or make it
allocate without bound, but one that is a valid stream decodes to whatever it encodes.

Determinism. The rANS decoder works on integers with the quantised CDF tables stored in the
checkpoint (never recomputed at decode time), so the decoded *latents* are identical on every
machine that loads the same checkpoint. The synthesis transform is floating point; on CPU
:func:`decode` runs it with one torch thread (:func:`fixed_threads`), so the decoded pixels
do not depend on the caller's thread count: bit-exact for the same checkpoint, machine
(CPU type) and torch build. Another CPU type, torch build or a GPU may differ by one 8-bit
level in rare pixels (the file always decodes: the latents are exact).
"""
from __future__ import annotations

import contextlib
import os
import struct
import tempfile
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
from codec.rans import CorruptStream, decode_symbols, max_payload_bytes
from incdet.errors import ConfigError, DataError

__all__ = ["CorruptStream", "DecodeLimits", "Header", "decode", "decode_latents", "synthesize", "encode", "parse", "compress_file",
           "decompress_file", "read_header", "read_image", "reconstruct", "fixed_threads"]

MAGIC = b"NICB"
FORMAT_VERSION = 1
HEADER_FORMAT = ">4sBB8sBHHHHHHI"  #: struct format of the header fields before the CRC32
_FIELDS_SIZE = struct.calcsize(HEADER_FORMAT)
HEADER_SIZE = _FIELDS_SIZE + 4
PAD_MULTIPLE = 16
MAX_SIDE = 65535  #: the format's limit (16-bit fields)


@dataclass(frozen=True)
class DecodeLimits:
    """Sizes a decoder accepts; a header announcing more is refused before any allocation.

    ``max_pixels``: image ``width * height`` (default 16 MP, e.g. 4096 x 4096; the synthesis
    transform needs about ``N * pixels`` bytes, 1 GB at N = 64). ``max_latent_elements``:
    ``C * h * w`` of the latent (the number of entropy-coded symbols). Both at least 1.
    """

    max_pixels: int = 1 << 24
    max_latent_elements: int = 1 << 24

    def __post_init__(self):
        for k in ("max_pixels", "max_latent_elements"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"decode limit {k} must be an integer >= 1, got {v!r}")

    def max_file_bytes(self) -> int:
        """The largest file these limits can accept (read no more than that)."""
        return HEADER_SIZE + 0xFFFF + max_payload_bytes(self.max_latent_elements)


DEFAULT_LIMITS = DecodeLimits()


@contextlib.contextmanager
def fixed_threads(device):
    """Run the enclosed torch ops with one intra-op thread on CPU (restored afterwards), so
    floating-point results do not depend on the caller's thread count; no-op on other devices."""
    if torch.device(device).type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    if n != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n != 1:
            torch.set_num_threads(n)


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
        return struct.pack(HEADER_FORMAT, MAGIC, self.version, self.flags, self.codec_id, self.domain,
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
def encode(model, image: Tensor, domain: int = 0, limits: DecodeLimits = DEFAULT_LIMITS) -> bytes:
    """Compress one image (uint8 ``[3,H,W]`` or float ``[1,3,H,W]``) to bytes; an image larger
    than ``limits`` (what :func:`decode` accepts by default) -> ``DataError``."""
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
    if h > MAX_SIDE or w > MAX_SIDE or h < 1 or w < 1:
        raise DataError(f"image {w}x{h}: the bitstream format holds 1..{MAX_SIDE} pixels per side")
    if h * w > limits.max_pixels:
        raise DataError(f"image {w}x{h} = {h * w} pixels exceeds the decode limit of {limits.max_pixels} pixels")
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


def check_header_sizes(H: int, W: int, latent_shape: tuple, payload_len: int, limits: DecodeLimits,
                       name: str = "<bytes>") -> None:
    """The header's sizes, before anything is allocated: a non-empty image within
    ``limits.max_pixels``, the latent shape the image size implies (``ceil(H/16) x ceil(W/16)``,
    at least one channel) within ``limits.max_latent_elements``, and a payload length a rANS
    stream of that many symbols can have. Else ``DataError`` naming ``name``."""
    c, lh, lw = latent_shape
    if H == 0 or W == 0:
        raise DataError(f"{name}: corrupt header (image {W}x{H})")
    if H * W > limits.max_pixels:
        raise DataError(f"{name}: image {W}x{H} = {H * W} pixels exceeds the decode limit of {limits.max_pixels} "
                        f"pixels (--max-pixels)")
    if (lh, lw) != (-(-H // PAD_MULTIPLE), -(-W // PAD_MULTIPLE)) or c == 0:
        raise DataError(f"{name}: corrupt header (latent shape {(c, lh, lw)} inconsistent with image {W}x{H})")
    n_sym = c * lh * lw
    if n_sym > limits.max_latent_elements:
        raise DataError(f"{name}: latent {c}x{lh}x{lw} = {n_sym} elements exceeds the decode limit of "
                        f"{limits.max_latent_elements}")
    if payload_len < 8 or payload_len % 4 or payload_len > max_payload_bytes(n_sym):
        raise DataError(f"{name}: corrupt header (payload of {payload_len} bytes: a rANS stream of {n_sym} symbols "
                        f"is a multiple of 4 bytes between 8 and {max_payload_bytes(n_sym)})")


def parse(data: bytes, name: str = "<bytes>", limits: DecodeLimits = DEFAULT_LIMITS) -> tuple:
    """Parse and verify structure, sizes (``limits``) and CRC (not the codec id).

    Returns ``(Header, side, payload)``; any problem -> ``DataError`` naming ``name``."""
    if len(data) < HEADER_SIZE:
        raise DataError(f"{name}: truncated bitstream ({len(data)} bytes, the header alone is {HEADER_SIZE})")
    if data[:4] != MAGIC:
        raise DataError(f"{name}: not a codec bitstream (magic {data[:4]!r}, expected {MAGIC!r})")
    magic, version, flags, codec_id, domain, H, W, c, lh, lw, side_len, payload_len = struct.unpack(HEADER_FORMAT, data[:_FIELDS_SIZE])
    if version != FORMAT_VERSION:
        raise DataError(f"{name}: bitstream format version {version} is not supported (this decoder reads version {FORMAT_VERSION})")
    (crc,) = struct.unpack(">I", data[_FIELDS_SIZE:HEADER_SIZE])
    check_header_sizes(H, W, (c, lh, lw), payload_len, limits, name)
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


def entropy_decode(eb, payload: bytes, shape: tuple, name: str = "<bytes>") -> Tensor:
    """Decode the payload of one ``EntropyBottleneck`` into a float latent ``[1, C, h, w]``
    (compressai's ``EntropyBottleneck.decompress``, with the bounds-checked
    :func:`codec.rans.decode_symbols`)."""
    c, h, w = shape
    cdf = eb._quantized_cdf.tolist()
    lengths = eb._cdf_length.reshape(-1).int().tolist()
    offsets = eb._offset.reshape(-1).int().tolist()
    if not (len(cdf) == len(lengths) == len(offsets) == c):
        raise DataError(f"{name}: the codec's entropy model has {len(cdf)} channels, the file {c}")
    sym = decode_symbols(payload, [(h * w, cdf[i], lengths[i], offsets[i]) for i in range(c)], name)
    y = torch.frombuffer(sym, dtype=torch.int32).reshape(1, c, h, w) if len(sym) else torch.zeros(1, c, h, w, dtype=torch.int32)
    medians = eb._get_medians().detach().reshape(1, c, 1, 1).cpu()
    return y.to(medians.dtype) + medians


@torch.no_grad()
def decode_latents(model, data: bytes, name: str = "<bytes>", limits: DecodeLimits = DEFAULT_LIMITS) -> tuple:
    """Everything of :func:`decode` up to the synthesis transform: returns ``(Header, y_hat,
    side)`` with ``y_hat`` the float latent ``[1, C, h, w]`` (exact: integers + medians)."""
    _check_model(model)
    hdr, side, payload = parse(data, name, limits)
    d = hdr.domain
    n_dom = model.n_domains()
    if n_dom is not None and d >= n_dom:
        raise DataError(f"{name}: domain {d} unknown to this codec (it has domains 0..{n_dom - 1})")
    want = model.codec_id(d, side)
    if hdr.codec_id != want:
        raise DataError(f"{name}: written by another codec (codec id {hdr.codec_id.hex()}, this model's domain {d} "
                        f"has {want.hex()}); decode it with the checkpoint that wrote it")
    c, lh, lw = hdr.latent_shape
    if c != model.latent_channels(d):
        raise DataError(f"{name}: latent shape {hdr.latent_shape} inconsistent with image {hdr.width}x{hdr.height} "
                        f"and the codec ({model.latent_channels(d)} channels)")
    try:
        side_obj = model.parse_side(side, d)
    except ValueError as e:
        raise DataError(f"{name}: bad side information: {e}") from None
    y_hat = entropy_decode(model.entropy_model(d), payload, (c, lh, lw), name)
    return hdr, y_hat, side_obj


@torch.no_grad()
def synthesize(model, y_hat: Tensor, domain: int = 0, side=None) -> Tensor:
    """``model.synthesis`` on the model's device, with one thread on CPU (:func:`fixed_threads`):
    float output independent of the caller's thread count."""
    dev = next(model.parameters()).device
    with fixed_threads(dev):
        return model.synthesis(y_hat.to(dev), domain, side)


@torch.no_grad()
def decode(model, data: bytes, name: str = "<bytes>", limits: DecodeLimits = DEFAULT_LIMITS) -> Tensor:
    """Decode bytes to a uint8 ``[3, H, W]`` image; any problem -> ``DataError`` naming ``name``.

    Never crashes or allocates beyond ``limits`` on any input (see the module docstring); on
    CPU the synthesis runs with one thread (:func:`synthesize`)."""
    hdr, y_hat, side_obj = decode_latents(model, data, name, limits)
    x_hat = synthesize(model, y_hat, hdr.domain, side_obj)[..., : hdr.height, : hdr.width]
    return tensor_to_uint8(x_hat[0]).cpu()


def _check_output(dst: Path, what: str) -> Path:
    dst = Path(dst)
    if dst.is_dir():
        raise DataError(f"{dst}: is a directory; give the {what} file name")
    return dst


def _write_atomic(dst: Path, write) -> None:
    """``write(tmp_path)`` then ``os.replace`` onto ``dst``: no partial file on failure."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_bitstream(src, limits: DecodeLimits) -> bytes:
    src = Path(src)
    if not src.is_file():
        raise DataError(f"{src}: no such bitstream file")
    size = src.stat().st_size
    if size > limits.max_file_bytes():
        raise DataError(f"{src}: {size} bytes, larger than any bitstream the decode limits accept "
                        f"({limits.max_file_bytes()} bytes)")
    return src.read_bytes()


def compress_file(model, src, dst, domain: int = 0) -> dict:
    """Compress image file ``src`` into ``dst`` (written atomically); returns
    ``{"bytes", "bpp", "height", "width"}``."""
    dst = _check_output(dst, "bitstream")
    img = read_image(src)
    data = encode(model, img, domain)
    _write_atomic(dst, lambda tmp: Path(tmp).write_bytes(data))
    h, w = img.shape[-2:]
    return {"bytes": len(data), "bpp": 8.0 * len(data) / (h * w), "height": h, "width": w}


def image_format(dst) -> str:
    """Pillow format name for the file extension of ``dst``; unknown -> ``DataError``."""
    dst = Path(dst)
    fmt = Image.registered_extensions().get(dst.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise DataError(f"{dst}: unknown image file extension {dst.suffix!r} (use .png, or another lossless "
                        f"format Pillow writes)")
    return fmt


def decompress_file(model, src, dst: Optional[Union[str, Path]] = None,
                    limits: DecodeLimits = DEFAULT_LIMITS) -> Tensor:
    """Decode bitstream file ``src`` (writes an image to ``dst`` when given, atomically; the
    format from its extension); returns uint8 ``[3,H,W]``."""
    fmt = None
    if dst is not None:
        dst = _check_output(dst, "output image")
        fmt = image_format(dst)
    img = decode(model, _read_bitstream(src, limits), name=str(src), limits=limits)
    if dst is not None:
        pil = Image.fromarray(img.permute(1, 2, 0).numpy())
        _write_atomic(dst, lambda tmp: pil.save(tmp, format=fmt))
    return img


def read_header(src, limits: DecodeLimits = DEFAULT_LIMITS) -> Header:
    """Parse and verify a bitstream file's header (no model needed)."""
    return parse(_read_bitstream(src, limits), str(src), limits)[0]


@torch.no_grad()
def reconstruct(model, image: Tensor, domain: int = 0) -> Tensor:
    """The model's forward quantised reconstruction as uint8 (pad, eval forward, crop, round)."""
    x = image_to_tensor(image).to(next(model.parameters()).device)
    h, w = x.shape[-2:]
    xp, _ = pad_to_multiple(x, PAD_MULTIPLE)
    was = model.training
    model.eval()
    with fixed_threads(x.device):  # as decode's synthesis
        out = model(xp, domain)
    model.train(was)
    return tensor_to_uint8(out["x_hat"][..., :h, :w][0]).cpu()
