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
Single-stream codecs (``factorized`` and the codecs adapted from it) write version 1, byte for
byte as before.

Version 2 (multi-stream codecs: the hyperprior family writes ``z`` then ``y``), ``V2_HEADER_SIZE``
= 22 + 10 * count + 4 bytes::

    magic      4s   b"NICB"
    version    B    2
    flags      B    reserved (0)
    codec_id   8s
    domain     B
    height     H
    width      H
    side_len   H
    count      B    number of entropy-coded streams (2: ``z`` then ``y``)
    count x (C H, h H, w H, length I)   each stream's symbol shape and payload bytes
    crc32      I    CRC32 of everything above + side + every payload

then ``side`` and the payloads in table order. Checks as for version 1, per stream: the image
is padded to 64, so ``z`` is exactly ``N x ceil(H/64) x ceil(W/64)`` and ``y`` ``M x`` 4x that
(N, M checked against the model), all symbols together within ``max_latent_elements``, each
length a possible rANS stream of its symbols, then the CRC, codec id, and the bounds-checked
decoders (:func:`codec.rans.decode_symbols` for ``z``, :func:`codec.rans.decode_indexed` for
``y`` with the CDF indexes from the decoded scales, exactly compressai's ``decompress``: the
bits written are compressai's own).

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
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from codec.entropy import is_updated
from codec.rans import CorruptStream, decode_indexed, decode_symbols, max_payload_bytes
from incdet.errors import ConfigError, DataError

__all__ = ["CorruptStream", "DecodeLimits", "Header", "decode", "decode_latents", "synthesize", "encode", "parse", "compress_file",
           "decompress_file", "read_header", "read_image", "reconstruct", "fixed_threads", "entropy_encode",
           "entropy_decode_streams", "split_streams", "gaussian_decode"]

MAGIC = b"NICB"
FORMAT_VERSION = 1
HEADER_FORMAT = ">4sBB8sBHHHHHHI"  #: struct format of the header fields before the CRC32
_FIELDS_SIZE = struct.calcsize(HEADER_FORMAT)
HEADER_SIZE = _FIELDS_SIZE + 4
PAD_MULTIPLE = 16
MAX_SIDE = 65535  #: the format's limit (16-bit fields)
FORMAT_VERSION_MULTI = 2  #: multi-stream files (the hyperprior family)
V2_FORMAT = ">4sBB8sBHHHB"  #: version 2 fields before the stream table
_V2_FIELDS_SIZE = struct.calcsize(V2_FORMAT)
STREAM_FORMAT = ">HHHI"  #: one stream table entry: C, h, w, payload length
_STREAM_SIZE = struct.calcsize(STREAM_FORMAT)
V2_STREAMS = 2  #: version 2 holds the two streams of a hyperprior codec (z, then y)
V2_HEADER_SIZE = _V2_FIELDS_SIZE + V2_STREAMS * _STREAM_SIZE + 4
HYPER_FACTOR = 4  #: y is 4x the side latents z in each dimension (h_a divides by 4)


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
        return max(HEADER_SIZE, V2_HEADER_SIZE) + 0xFFFF + max_payload_bytes(self.max_latent_elements) + 8 * V2_STREAMS


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
    #: ``((C, h, w), payload bytes)`` per entropy-coded stream, in file order (version 1: one,
    #: the latent); ``latent_shape`` is the last one's shape, ``payload_len`` their total
    streams: tuple = ()

    def __post_init__(self):
        if not self.streams:
            self.streams = ((tuple(self.latent_shape), int(self.payload_len)),)

    @property
    def header_bytes(self) -> int:
        """Bytes before the side information (fields, stream table, CRC)."""
        if self.version == FORMAT_VERSION:
            return HEADER_SIZE
        return _V2_FIELDS_SIZE + len(self.streams) * _STREAM_SIZE + 4

    def fields(self) -> bytes:
        if self.version == FORMAT_VERSION:
            c, h, w = self.latent_shape
            return struct.pack(HEADER_FORMAT, MAGIC, self.version, self.flags, self.codec_id, self.domain,
                               self.height, self.width, c, h, w, self.side_len, self.payload_len)
        out = struct.pack(V2_FORMAT, MAGIC, self.version, self.flags, self.codec_id, self.domain, self.height,
                          self.width, self.side_len, len(self.streams))
        return out + b"".join(struct.pack(STREAM_FORMAT, *shape, n) for shape, n in self.streams)


def pad_to_multiple(x: Tensor, multiple: int = 16) -> tuple:
    """Replicate-pad the right and bottom of ``x`` ``[B, C, H, W]`` to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph = (-h) % multiple
    pw = (-w) % multiple
    if ph or pw:
        mode = "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def _check_model(model) -> None:
    for m in model.modules():
        if m.__class__.__name__ in ("EntropyBottleneck", "GaussianConditional") and not is_updated(m):
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


def downsampling_factor(model) -> int:
    """What the model's input sides must be multiples of (16 for the factorized family and
    the codecs adapted from it, 64 for the hyperprior family)."""
    return int(getattr(model, "downsampling_factor", PAD_MULTIPLE))


def entropy_encode(model, y: Tensor, domain: int = 0) -> list:
    """``[(bytes, (C, h, w)), ...]``: the model's ``entropy_encode`` (one stream per entropy
    model: factorized ``y``; hyperprior ``z`` then ``y``), or, for a codec without one, its
    ``entropy_model(domain)`` (an ``EntropyBottleneck``) on ``y``: one stream."""
    fn = getattr(model, "entropy_encode", None)
    if fn is not None:
        return list(fn(y, domain))
    return eb_encode(model.entropy_model(domain), y)


def entropy_decode_streams(model, streams: list, domain: int = 0, name: str = "<bytes>") -> Tensor:
    """Inverse of :func:`entropy_encode`: ``y_hat`` ``[1, C, h, w]`` from ``[(bytes, shape)]``
    (bounds-checked decoders; a bad stream -> :class:`CorruptStream` naming ``name``)."""
    fn = getattr(model, "entropy_decode", None)
    if fn is not None:
        return fn(streams, domain, name)
    return eb_decode_streams(model.entropy_model(domain), streams, name)


#: compressai's rANS encoder sizes its output buffer by the number of coded symbols and writes
#: the 8-byte final state into it: a stream of 1 or 2 symbols overflows that heap buffer
#: (``double free or corruption``); from 3 on it fits (16 bits at most per symbol)
MIN_STREAM_SYMBOLS = 3


def check_stream_size(t: Tensor, what: str = "latent") -> None:
    """Refuse (``ConfigError``) to entropy-code fewer than :data:`MIN_STREAM_SYMBOLS` symbols
    with compressai's encoder (it would corrupt memory): a codec with so few latent channels."""
    if t.numel() < MIN_STREAM_SYMBOLS:
        raise ConfigError(f"the {what} {tuple(t.shape[1:])} has {t.numel()} elements: compressai's rANS encoder "
                          f"needs at least {MIN_STREAM_SYMBOLS} per stream (use a codec with at least "
                          f"{MIN_STREAM_SYMBOLS} latent channels)")


def eb_encode(eb, y: Tensor) -> list:
    """One ``EntropyBottleneck`` stream of ``y`` ``[1, C, h, w]`` (compressai's ``compress``)."""
    check_stream_size(y)
    return [(eb.compress(y)[0], tuple(int(s) for s in y.shape[1:]))]


def eb_decode_streams(eb, streams: list, name: str = "<bytes>") -> Tensor:
    """The one stream of :func:`eb_encode` decoded with :func:`entropy_decode`."""
    if len(streams) != 1:
        raise DataError(f"{name}: {len(streams)} entropy-coded streams, this codec reads one")
    payload, shape = streams[0]
    return entropy_decode(eb, payload, shape, name)


def _image_tensor(model, image, limits: DecodeLimits) -> Tensor:
    x = image_to_tensor(image)
    if x.shape[0] != 1 or x.shape[1] != 3:
        raise DataError(f"encode expects one RGB image, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h > MAX_SIDE or w > MAX_SIDE or h < 1 or w < 1:
        raise DataError(f"image {w}x{h}: the bitstream format holds 1..{MAX_SIDE} pixels per side")
    if h * w > limits.max_pixels:
        raise DataError(f"image {w}x{h} = {h * w} pixels exceeds the decode limit of {limits.max_pixels} pixels")
    return x.to(next(model.parameters()).device)


@torch.no_grad()
def encode(model, image: Tensor, domain: int = 0, limits: DecodeLimits = DEFAULT_LIMITS) -> bytes:
    """Compress one image (uint8 ``[3,H,W]`` or float ``[1,3,H,W]``) to bytes; an image larger
    than ``limits`` (what :func:`decode` accepts by default) -> ``DataError``. The image is
    padded to the model's :func:`downsampling_factor`; one entropy-coded stream -> a version 1
    file, several (hyperprior) -> version 2."""
    _check_model(model)
    n_dom = model.n_domains()
    if not 0 <= int(domain) <= 255 or (n_dom is not None and domain >= n_dom):
        known = "0..255" if n_dom is None else f"0..{n_dom - 1}"
        raise DataError(f"domain {domain} not available in this codec (domains {known})")
    x = _image_tensor(model, image, limits)
    h, w = x.shape[-2:]
    xp, _ = pad_to_multiple(x, downsampling_factor(model))
    y = model.analysis(xp, domain)
    side = model.side_info(y, domain)
    streams = entropy_encode(model, y, domain)
    cid = model.codec_id(domain, side)
    if len(streams) == 1:
        payload, shape = streams[0]
        hdr = Header(codec_id=cid, domain=int(domain), height=int(h), width=int(w),
                     latent_shape=tuple(int(s) for s in shape), side_len=len(side), payload_len=len(payload))
    else:
        if len(streams) != V2_STREAMS:
            raise DataError(f"the codec wrote {len(streams)} streams; format version {FORMAT_VERSION_MULTI} holds "
                            f"{V2_STREAMS}")
        for p, shape in streams:
            if len(p) > 0xFFFFFFFF or any(not 0 < int(v) <= 0xFFFF for v in shape):
                raise DataError(f"a stream of shape {tuple(shape)} and {len(p)} bytes does not fit format version "
                                f"{FORMAT_VERSION_MULTI}")
        hdr = Header(codec_id=cid, domain=int(domain), height=int(h), width=int(w),
                     latent_shape=tuple(int(v) for v in streams[-1][1]), side_len=len(side),
                     payload_len=sum(len(p) for p, _ in streams), version=FORMAT_VERSION_MULTI,
                     streams=tuple((tuple(int(v) for v in shape), len(p)) for p, shape in streams))
    payload = b"".join(p for p, _ in streams)
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


def check_v2_sizes(H: int, W: int, streams: tuple, limits: DecodeLimits, name: str = "<bytes>") -> None:
    """Version 2 sizes, before anything is allocated: a non-empty image within
    ``limits.max_pixels``; :data:`V2_STREAMS` streams, ``z`` of ``ceil(H/64) x ceil(W/64)`` and
    ``y`` of 4x that, at least one channel each; all symbols together within
    ``limits.max_latent_elements``; each length a possible rANS stream of its symbols. Else
    ``DataError`` naming ``name``."""
    if H == 0 or W == 0:
        raise DataError(f"{name}: corrupt header (image {W}x{H})")
    if H * W > limits.max_pixels:
        raise DataError(f"{name}: image {W}x{H} = {H * W} pixels exceeds the decode limit of {limits.max_pixels} "
                        f"pixels (--max-pixels)")
    if len(streams) != V2_STREAMS:
        raise DataError(f"{name}: corrupt header ({len(streams)} streams; format version {FORMAT_VERSION_MULTI} "
                        f"holds {V2_STREAMS}: z, y)")
    f = PAD_MULTIPLE * HYPER_FACTOR
    zh, zw = -(-H // f), -(-W // f)
    want = [(zh, zw), (HYPER_FACTOR * zh, HYPER_FACTOR * zw)]
    n_total = 0
    for (shape, _), hw in zip(streams, want):
        if tuple(shape[1:]) != hw or shape[0] == 0:
            raise DataError(f"{name}: corrupt header (stream shapes {[s for s, _ in streams]} inconsistent with "
                            f"image {W}x{H})")
        n_total += shape[0] * shape[1] * shape[2]
    if n_total > limits.max_latent_elements:
        raise DataError(f"{name}: latents of {n_total} elements exceed the decode limit of "
                        f"{limits.max_latent_elements}")
    for shape, n in streams:
        n_sym = shape[0] * shape[1] * shape[2]
        if n < 8 or n % 4 or n > max_payload_bytes(n_sym):
            raise DataError(f"{name}: corrupt header (payload of {n} bytes: a rANS stream of {n_sym} symbols "
                            f"is a multiple of 4 bytes between 8 and {max_payload_bytes(n_sym)})")


def parse(data: bytes, name: str = "<bytes>", limits: DecodeLimits = DEFAULT_LIMITS) -> tuple:
    """Parse and verify structure, sizes (``limits``) and CRC (not the codec id).

    Returns ``(Header, side, payload)`` (version 2: ``payload`` is every stream's payload in
    table order, :func:`split_streams` cuts it); any problem -> ``DataError`` naming ``name``."""
    if len(data) < 5:
        raise DataError(f"{name}: truncated bitstream ({len(data)} bytes, the header alone is {HEADER_SIZE})")
    if data[:4] != MAGIC:
        raise DataError(f"{name}: not a codec bitstream (magic {data[:4]!r}, expected {MAGIC!r})")
    version = data[4]
    if version == FORMAT_VERSION_MULTI:
        return _parse_v2(data, name, limits)
    if len(data) < HEADER_SIZE:
        raise DataError(f"{name}: truncated bitstream ({len(data)} bytes, the header alone is {HEADER_SIZE})")
    magic, version, flags, codec_id, domain, H, W, c, lh, lw, side_len, payload_len = struct.unpack(HEADER_FORMAT, data[:_FIELDS_SIZE])
    if version != FORMAT_VERSION:
        raise DataError(f"{name}: bitstream format version {version} is not supported (this decoder reads versions "
                        f"{FORMAT_VERSION} and {FORMAT_VERSION_MULTI})")
    (crc,) = struct.unpack(">I", data[_FIELDS_SIZE:HEADER_SIZE])
    check_header_sizes(H, W, (c, lh, lw), payload_len, limits, name)
    side, payload = _body(data, HEADER_SIZE, _FIELDS_SIZE, side_len, payload_len, crc, name)
    hdr = Header(codec_id=codec_id, domain=domain, height=H, width=W, latent_shape=(c, lh, lw),
                 side_len=side_len, payload_len=payload_len, version=version, flags=flags)
    return hdr, side, payload


def _body(data: bytes, start: int, fields_end: int, side_len: int, payload_len: int, crc: int, name: str) -> tuple:
    """``(side, payload)`` after a header ending at ``start``: the file length must be exactly what
    the header announces, and the CRC32 of ``data[:fields_end]`` + side + payload must match."""
    expected = start + side_len + payload_len
    if len(data) < expected:
        raise DataError(f"{name}: truncated bitstream ({len(data)} bytes, header announces {expected})")
    if len(data) > expected:
        raise DataError(f"{name}: {len(data) - expected} trailing bytes after the payload (file damaged?)")
    side = data[start:start + side_len]
    payload = data[start + side_len:]
    got = zlib.crc32(payload, zlib.crc32(side, zlib.crc32(data[:fields_end])))
    if got != crc:
        raise DataError(f"{name}: checksum mismatch (CRC32 {got:08x}, header says {crc:08x}): the file is corrupt")
    return side, payload


def _parse_v2(data: bytes, name: str, limits: DecodeLimits) -> tuple:
    if len(data) < _V2_FIELDS_SIZE:
        raise DataError(f"{name}: truncated bitstream ({len(data)} bytes, the version {FORMAT_VERSION_MULTI} header "
                        f"alone is at least {_V2_FIELDS_SIZE + 4})")
    _, version, flags, codec_id, domain, H, W, side_len, count = struct.unpack(V2_FORMAT, data[:_V2_FIELDS_SIZE])
    if count != V2_STREAMS:
        raise DataError(f"{name}: corrupt header ({count} streams; format version {FORMAT_VERSION_MULTI} holds "
                        f"{V2_STREAMS}: z, y)")
    table_end = _V2_FIELDS_SIZE + count * _STREAM_SIZE
    if len(data) < table_end + 4:
        raise DataError(f"{name}: truncated bitstream ({len(data)} bytes, the header alone is {table_end + 4})")
    streams = []
    for i in range(count):
        c, h, w, n = struct.unpack(STREAM_FORMAT, data[_V2_FIELDS_SIZE + i * _STREAM_SIZE:
                                                       _V2_FIELDS_SIZE + (i + 1) * _STREAM_SIZE])
        streams.append(((c, h, w), n))
    streams = tuple(streams)
    (crc,) = struct.unpack(">I", data[table_end:table_end + 4])
    check_v2_sizes(H, W, streams, limits, name)
    start = table_end + 4
    payload_len = sum(n for _, n in streams)
    side, payload = _body(data, start, table_end, side_len, payload_len, crc, name)
    hdr = Header(codec_id=codec_id, domain=domain, height=H, width=W, latent_shape=streams[-1][0],
                 side_len=side_len, payload_len=payload_len, version=version, flags=flags, streams=streams)
    return hdr, side, payload


def split_streams(hdr: Header, payload: bytes) -> list:
    """``[(bytes, (C, h, w)), ...]``: the payload of a parsed file cut per the stream table."""
    out, pos = [], 0
    for shape, n in hdr.streams:
        out.append((payload[pos:pos + n], tuple(shape)))
        pos += n
    return out


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


def gaussian_decode(gc, payload: bytes, indexes: Tensor, means=None, name: str = "<bytes>") -> Tensor:
    """Decode the payload of one ``GaussianConditional`` (compressai's ``decompress(strings,
    indexes, means=means)``) with the bounds-checked :func:`codec.rans.decode_indexed`:
    ``indexes`` ``[1, C, h, w]`` from ``gc.build_indexes(scales)``; returns the float latent
    (symbols + means) on the CPU."""
    shape = tuple(indexes.shape)
    idx = indexes.reshape(-1).int().cpu().numpy()
    sym = decode_indexed(payload, idx, gc._quantized_cdf.cpu().numpy(), gc._cdf_length.reshape(-1).cpu().numpy(),
                         gc._offset.reshape(-1).cpu().numpy(), name)
    y = torch.frombuffer(sym, dtype=torch.int32).reshape(shape) if len(sym) else torch.zeros(shape, dtype=torch.int32)
    y = y.float()
    if means is not None:
        y = y + means.detach().float().cpu()
    return y


@torch.no_grad()
def decode_latents(model, data: bytes, name: str = "<bytes>", limits: DecodeLimits = DEFAULT_LIMITS) -> tuple:
    """Everything of :func:`decode` up to the synthesis transform: returns ``(Header, y_hat,
    side)`` with ``y_hat`` the float latent ``[1, C, h, w]`` (exact: integers + medians)."""
    _check_model(model)
    hdr, side, payload = parse(data, name, limits)
    d = hdr.domain
    n_dom = model.n_domains()
    if n_dom is not None and d >= n_dom:
        # a file of the source codec (which takes any domain id, as information) is decoded by
        # the domain-0 path of a codec adapted from it (CAwF, adapters): the same decoder
        if not side and model.codec_id(0, side) == hdr.codec_id:
            hdr = replace(hdr, domain=0)
            d = 0
        else:
            raise DataError(f"{name}: domain {d} unknown to this codec (it has domains 0..{n_dom - 1})")
    want = model.codec_id(d, side)
    if hdr.codec_id != want:
        raise DataError(f"{name}: written by another codec (codec id {hdr.codec_id.hex()}, this model's domain {d} "
                        f"has {want.hex()}); decode it with the checkpoint that wrote it")
    c, lh, lw = hdr.latent_shape
    if c != model.latent_channels(d):
        raise DataError(f"{name}: latent shape {hdr.latent_shape} inconsistent with image {hdr.width}x{hdr.height} "
                        f"and the codec ({model.latent_channels(d)} channels)")
    if hdr.version == FORMAT_VERSION_MULTI:
        hyper = getattr(model, "hyper_channels", None)
        if not getattr(model, "two_stream", False) or hyper is None:
            raise DataError(f"{name}: a {V2_STREAMS}-stream file (format version {FORMAT_VERSION_MULTI}); this codec "
                            f"writes one stream")
        if hdr.streams[0][0][0] != hyper(d):
            raise DataError(f"{name}: side latent shape {hdr.streams[0][0]} inconsistent with the codec "
                            f"({hyper(d)} channels)")
    elif getattr(model, "two_stream", False):
        raise DataError(f"{name}: a one-stream file (format version {FORMAT_VERSION}); this codec writes "
                        f"{V2_STREAMS} streams")
    try:
        side_obj = model.parse_side(side, d)
    except ValueError as e:
        raise DataError(f"{name}: bad side information: {e}") from None
    y_hat = entropy_decode_streams(model, split_streams(hdr, payload), d, name)
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
    """``write(tmp_path)`` then fsync and ``os.replace`` onto ``dst``
    (:func:`incdet.engine.checkpoint.write_atomic_path`; the folder is created when missing):
    no partial file on failure."""
    from incdet.engine.checkpoint import write_atomic_path

    dst.parent.mkdir(parents=True, exist_ok=True)
    write_atomic_path(dst, write)


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
    """Parse and verify a bitstream file's header (no model needed); ``header_bytes`` is its
    size (version 1 :data:`HEADER_SIZE`, version 2 :data:`V2_HEADER_SIZE`)."""
    return parse(_read_bitstream(src, limits), str(src), limits)[0]


@torch.no_grad()
def reconstruct(model, image: Tensor, domain: int = 0) -> Tensor:
    """The model's forward quantised reconstruction as uint8 (pad, eval forward, crop, round)."""
    x = image_to_tensor(image).to(next(model.parameters()).device)
    h, w = x.shape[-2:]
    xp, _ = pad_to_multiple(x, downsampling_factor(model))
    was = model.training
    model.eval()
    with fixed_threads(x.device):  # as decode's synthesis
        out = model(xp, domain)
    model.train(was)
    return tensor_to_uint8(out["x_hat"][..., :h, :w][0]).cpu()
