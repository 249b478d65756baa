"""A bounds-checked decoder for compressai's rANS streams (``compressai.ans.RansEncoder``).

Why: compressai's C++ ``RansDecoder`` reads 32-bit words from the string it is given without
checking where the string ends. An honest stream is consumed exactly, but a forged one (a
short payload with a recomputed CRC) makes it read past the end of the buffer: garbage
symbols or a segmentation fault. Bitstream files are user data, so :func:`decode_symbols`
re-implements the same algorithm (``Rans64`` with 16-bit CDF precision and 4-bit bypass
coding, ``rans_interface.cpp`` of compressai 1.2) in Python with every read checked, and also
checks that the stream is *exactly* consumed:

- the payload is a whole number of 32-bit words, at least the two of the initial state;
- a read past the last word -> :class:`CorruptStream` ("ends early");
- a bypass-coded value longer than 32 bits (the encoder never writes one) -> corrupt;
- after the last symbol every word must have been read and the state must be back at the
  encoder's initial state ``RANS64_L`` -> else corrupt ("ends late" / "inconsistent").

These checks accept every stream compressai's encoder writes (it starts from ``RANS64_L``
and the decoder reads its words back one for one) and decode it to the same symbols as
compressai's decoder (tested against it). Work and memory are bounded by the number of
symbols (given by the caller, bounded by the header limits) plus the payload length.

Two entry points: :func:`decode_symbols` (runs of symbols sharing one CDF: an
``EntropyBottleneck``, one run per channel) and :func:`decode_indexed` (one CDF index per
symbol: a ``GaussianConditional``, as compressai's ``decode_with_indexes``).

Speed: the same loop with the same checks is also written in C (:data:`_C_SOURCE`, about 50
lines), compiled once per machine with the system C compiler into ``~/.cache/incdet`` (or
``$INCDET_CACHE``) and called through ctypes: as fast as compressai's decoder. Without a
compiler, on a big-endian host or with ``INCDET_RANS_NATIVE=0`` the Python loop runs (same
results, about 3 us per symbol: a 768 x 512 image with M = 192 takes about a second more).
The two are fuzzed against each other (``tests/test_fuzz_codec_bitstream.py``).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile
from array import array
from bisect import bisect_right
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from incdet.errors import DataError

PRECISION = 16          #: CDF precision of compressai's coder
BYPASS_PRECISION = 4    #: bits per bypass chunk
MAX_BYPASS_VAL = (1 << BYPASS_PRECISION) - 1
#: an int32 raw value needs at most 8 chunks of 4 bits (compressai's encoder writes no more)
MAX_BYPASS_CHUNKS = 32 // BYPASS_PRECISION
RANS64_L = 1 << 31
_MASK64 = (1 << 64) - 1
_MASK = (1 << PRECISION) - 1


class CorruptStream(DataError):
    """The entropy-coded payload does not decode to exactly the announced symbols."""


def max_payload_bytes(n_symbols: int) -> int:
    """An upper bound on the payload compressai's encoder writes for ``n_symbols`` symbols:
    the 8-byte final state plus, per symbol, at most one renormalisation word for the symbol
    and two for a bypass-coded value (count chunk(s) + at most 8 chunks of 4 bits)."""
    return 8 + 12 * int(n_symbols)


def decode_symbols(payload: bytes, blocks: Sequence[tuple], name: str = "<bytes>") -> array:
    """Decode ``payload`` into symbols, block by block.

    ``blocks``: ``(count, cdf, cdf_length, offset)`` per run of symbols coded with one CDF
    (for an ``EntropyBottleneck``: one block of ``h * w`` symbols per channel, in channel
    order); ``cdf`` a list of ints (compressai's ``_quantized_cdf`` row: increasing from 0 to
    ``1 << 16`` over ``cdf_length`` entries). Returns ``value + offset`` per symbol, as
    compressai's ``decode_with_indexes`` does, as an ``array('i')`` (4 bytes per symbol). Raises :class:`CorruptStream` naming ``name``
    when the stream ends early or late or holds an impossible value.
    """
    tables = [_table(cdf, cdf_len, offset, name) for _, cdf, cdf_len, offset in blocks]
    counts = [int(b[0]) for b in blocks]
    if tables and _native() is not None:
        width = max(len(t[0]) for t in tables)
        cdfs = np.zeros((len(tables), width), dtype=np.int32)
        for i, t in enumerate(tables):
            cdfs[i, :len(t[0])] = t[0]
        idx = np.repeat(np.arange(len(tables), dtype=np.int32), counts)
        return _decode_native(payload, idx, cdfs, np.array([t[1] for t in tables], dtype=np.int32),
                              np.array([t[2] for t in tables], dtype=np.int32), name)
    return _decode(payload, list(zip(counts, tables)), name)


def decode_indexed(payload: bytes, indexes, cdfs, cdf_lengths, offsets, name: str = "<bytes>") -> array:
    """Decode ``payload`` into ``len(indexes)`` symbols, symbol ``i`` with CDF ``indexes[i]``:
    compressai's ``RansDecoder.decode_with_indexes(payload, indexes, cdfs, cdf_lengths,
    offsets)`` (a ``GaussianConditional``'s indexes from its ``build_indexes``), with every
    read checked as in :func:`decode_symbols`. Arguments: sequences or arrays of ints
    (``cdfs`` rectangular: compressai's ``_quantized_cdf``). An index outside
    ``0..len(cdfs) - 1`` or an invalid CDF table -> :class:`CorruptStream`. Returns an
    ``array('i')``."""
    cdfs = np.asarray(cdfs, dtype=np.int64)
    lengths = np.asarray(cdf_lengths, dtype=np.int64).reshape(-1)
    offs = np.asarray(offsets, dtype=np.int64).reshape(-1)
    n_tab = cdfs.shape[0] if cdfs.ndim == 2 else 0
    if cdfs.ndim != 2 or not (n_tab == len(lengths) == len(offs)):
        raise CorruptStream(f"{name}: the codec's CDF tables are inconsistent ({cdfs.shape} CDFs, {len(lengths)} "
                            f"lengths, {len(offs)} offsets)")
    _check_tables(cdfs, lengths, name)
    idx = np.asarray(indexes, dtype=np.int64).reshape(-1)
    if len(idx) and (idx.min() < 0 or idx.max() >= n_tab):
        bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
        raise CorruptStream(f"{name}: CDF index {bad} out of range (the codec has {n_tab} CDFs)")
    if _native() is not None:
        return _decode_native(payload, idx.astype(np.int32), cdfs.astype(np.int32), lengths.astype(np.int32),
                              offs.astype(np.int32), name)
    rows = cdfs.tolist()
    tables = [(rows[i], int(lengths[i]), int(offs[i]), int(lengths[i]) - 2) for i in range(n_tab)]
    runs = []
    if len(idx):
        # runs of equal indexes (one table lookup per run)
        cut = np.flatnonzero(np.diff(idx)) + 1
        starts = np.concatenate(([0], cut))
        ends = np.concatenate((cut, [len(idx)]))
        runs = [(int(e - b), tables[int(idx[b])]) for b, e in zip(starts, ends)]
    return _decode(payload, runs, name)


def _check_tables(cdfs: np.ndarray, lengths: np.ndarray, name: str) -> None:
    """Every CDF row: ``2 <= length <= width``, starts at 0, ends at ``1 << PRECISION`` at
    ``length - 1``, non-decreasing up to there (so every decoded symbol is in range)."""
    n, width = cdfs.shape
    if n == 0:
        return
    bad = (lengths < 2) | (lengths > width)
    if bad.any():
        raise CorruptStream(f"{name}: the codec's CDF table is invalid (length {int(lengths[bad][0])})")
    last = cdfs[np.arange(n), lengths - 1]
    in_range = np.arange(width - 1)[None, :] < (lengths - 1)[:, None]
    ok = (cdfs[:, 0] == 0) & (last == 1 << PRECISION) & np.all((np.diff(cdfs, axis=1) >= 0) | ~in_range, axis=1)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise CorruptStream(f"{name}: the codec's CDF table is invalid (row {i}, length {int(lengths[i])})")


def _table(cdf, cdf_len, offset, name) -> tuple:
    """``(cdf, cdf_len, offset, max_value)`` after checking the CDF: starts at 0, ends at
    ``1 << PRECISION`` at ``cdf_len - 1``, non-decreasing (so every decoded symbol is in range)."""
    cdf_len = int(cdf_len)
    if cdf_len < 2 or cdf_len > len(cdf) or cdf[0] != 0 or cdf[cdf_len - 1] != 1 << PRECISION \
            or any(cdf[i] > cdf[i + 1] for i in range(cdf_len - 1)):
        raise CorruptStream(f"{name}: the codec's CDF table is invalid (length {cdf_len})")
    return cdf, cdf_len, int(offset), cdf_len - 2


def _decode(payload: bytes, runs, name: str) -> array:
    """The checked rANS decoder over ``runs`` of ``(count, table)`` (see :func:`_table`)."""
    n = len(payload)
    if n % 4 or n < 8:
        raise CorruptStream(f"{name}: corrupt payload ({n} bytes; a rANS stream is a whole number of "
                            f"32-bit words, at least 2)")
    words = memoryview(payload).cast("I") if _little_endian() else _words_le(payload)
    n_words = len(words)
    x = words[0] | (words[1] << 32)
    p = 2
    out = array("i")
    append = out.append
    L = RANS64_L
    for count, (cdf, cdf_len, offset, max_value) in runs:
        for _ in range(count):
            cum = x & _MASK
            s = bisect_right(cdf, cum, 0, cdf_len) - 1
            start = cdf[s]
            x = (cdf[s + 1] - start) * (x >> PRECISION) + cum - start  # < 2**64: freq <= 2**16
            if x < L:
                if p >= n_words:
                    raise CorruptStream(f"{name}: corrupt payload (the entropy-coded stream ends early, "
                                        f"after {len(out)} symbols)")
                x = (x << 32) | words[p]  # x < 2**31 before: < 2**63
                p += 1
            value = s
            if s == max_value:  # bypass mode: the value is written in 4-bit chunks
                val = MAX_BYPASS_VAL
                n_bypass = 0
                while val == MAX_BYPASS_VAL:
                    val = x & MAX_BYPASS_VAL
                    x >>= BYPASS_PRECISION
                    if x < L:
                        if p >= n_words:
                            raise CorruptStream(f"{name}: corrupt payload (the entropy-coded stream ends early)")
                        x = (x << 32) | words[p]
                        p += 1
                    n_bypass += val
                    if n_bypass > MAX_BYPASS_CHUNKS:
                        raise CorruptStream(f"{name}: corrupt payload (a bypass value of {n_bypass} chunks, "
                                            f"at most {MAX_BYPASS_CHUNKS} are ever written)")
                raw = 0
                for j in range(n_bypass):
                    val = x & MAX_BYPASS_VAL
                    x >>= BYPASS_PRECISION
                    if x < L:
                        if p >= n_words:
                            raise CorruptStream(f"{name}: corrupt payload (the entropy-coded stream ends early)")
                        x = (x << 32) | words[p]
                        p += 1
                    raw |= val << (j * BYPASS_PRECISION)
                if raw >= 1 << 31:
                    raise CorruptStream(f"{name}: corrupt payload (bypass value out of the int32 range)")
                value = raw >> 1
                value = -value - 1 if raw & 1 else value + max_value
            append(value + offset)
    if p != n_words:
        raise CorruptStream(f"{name}: corrupt payload (the entropy-coded stream ends late: "
                            f"{4 * (n_words - p)} bytes left after the last symbol)")
    if x != RANS64_L:
        raise CorruptStream(f"{name}: corrupt payload (inconsistent entropy-coder state at the end of the stream)")
    return out


def _little_endian() -> bool:
    import sys

    return sys.byteorder == "little"


def _words_le(payload: bytes):
    import struct

    return struct.unpack(f"<{len(payload) // 4}I", payload)


# ---------------------------------------------------------------------------------------
# the same decoder in C (optional): built once per machine with the system C compiler, loaded
# with ctypes; without a compiler (or with INCDET_RANS_NATIVE=0) the Python decoder above runs.
# It performs exactly the checks of :func:`_decode` (tested against it, and fuzzed).
_C_SOURCE = r"""
#include <stdint.h>
/* Checked rANS decoding of compressai's Rans64 streams (16-bit CDFs, 4-bit bypass).
   Returns 0, or: 1 ends early, 2 bypass too long, 3 bypass value out of int32, 4 ends late,
   5 inconsistent final state, 6 index out of range. *done: symbols decoded. The CDF tables
   are checked by the caller (cdf[0] = 0, cdf[len-1] = 65536, non-decreasing, 2 <= len <= stride). */
int incdet_rans_decode(const uint32_t *w, int64_t n_words, const int32_t *idx, int64_t n_sym,
                       const int32_t *cdfs, int64_t stride, const int32_t *lens, const int32_t *offs,
                       int64_t n_tab, int32_t *out, int64_t *done) {
    const uint64_t L = (uint64_t)1 << 31;
    if (n_words < 2) { *done = 0; return 1; }
    uint64_t x = (uint64_t)w[0] | ((uint64_t)w[1] << 32);
    int64_t p = 2, i;
    for (i = 0; i < n_sym; ++i) {
        int32_t k = idx[i];
        if (k < 0 || k >= n_tab) { *done = i; return 6; }
        const int32_t *cdf = cdfs + (int64_t)k * stride;
        int32_t len = lens[k], max_value = len - 2;
        uint32_t cum = (uint32_t)(x & 0xffff);
        int32_t lo = 0, hi = len - 1;        /* last s with cdf[s] <= cum: cdf[0] = 0 <= cum < cdf[len-1] */
        while (hi - lo > 1) { int32_t mid = (lo + hi) >> 1; if ((uint32_t)cdf[mid] <= cum) lo = mid; else hi = mid; }
        int32_t s = lo;
        uint32_t start = (uint32_t)cdf[s], freq = (uint32_t)cdf[s + 1] - start;
        x = (uint64_t)freq * (x >> 16) + cum - start;
        if (x < L) { if (p >= n_words) { *done = i; return 1; } x = (x << 32) | w[p++]; }
        int32_t value = s;
        if (s == max_value) {
            int32_t val = 15, n_bypass = 0, j;
            while (val == 15) {
                val = (int32_t)(x & 15); x >>= 4;
                if (x < L) { if (p >= n_words) { *done = i; return 1; } x = (x << 32) | w[p++]; }
                n_bypass += val;
                if (n_bypass > 8) { *done = i; return 2; }
            }
            uint64_t raw = 0;
            for (j = 0; j < n_bypass; ++j) {
                val = (int32_t)(x & 15); x >>= 4;
                if (x < L) { if (p >= n_words) { *done = i; return 1; } x = (x << 32) | w[p++]; }
                raw |= (uint64_t)val << (j * 4);
            }
            if (raw >= ((uint64_t)1 << 31)) { *done = i; return 3; }
            int64_t v = (int64_t)(raw >> 1);
            value = (int32_t)((raw & 1) ? -v - 1 : v + max_value);
        }
        out[i] = value + offs[k];
    }
    *done = n_sym;
    if (p != n_words) return 4;
    if (x != L) return 5;
    return 0;
}
"""

_NATIVE = None  # None: not tried yet; False: unavailable; else the ctypes function


def _cache_dir() -> Path:
    root = os.environ.get("INCDET_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "incdet"


def _native():
    """The C decoder (built on first use into the user cache, ``$INCDET_CACHE`` or
    ``~/.cache/incdet``), or None: disabled by ``INCDET_RANS_NATIVE=0``, a big-endian host, or
    no working C compiler (``$CC``, else ``cc``)."""
    global _NATIVE
    if _NATIVE is None:
        _NATIVE = _load_native() or False
    return _NATIVE or None


def _load_native():
    if os.environ.get("INCDET_RANS_NATIVE", "1") == "0" or sys.byteorder != "little":
        return None
    digest = hashlib.sha256(_C_SOURCE.encode()).hexdigest()[:16]
    lib = _cache_dir() / f"rans_{digest}_{sys.platform}.so"
    try:
        if not lib.is_file():
            lib.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
                src = Path(tmp) / "rans.c"
                src.write_text(_C_SOURCE)
                out = Path(tmp) / "rans.so"
                cc = os.environ.get("CC", "cc")
                subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(out), str(src)], check=True,
                               capture_output=True, timeout=120)
                os.replace(out, lib)  # atomic: concurrent builders agree on the same bytes
        so = ctypes.CDLL(str(lib))
        fn = so.incdet_rans_decode
    except (OSError, subprocess.SubprocessError, AttributeError):
        return None
    i64, p = ctypes.c_int64, ctypes.c_void_p
    fn.argtypes = [p, i64, p, i64, p, i64, p, p, i64, p, p]
    fn.restype = ctypes.c_int
    return fn


_NATIVE_ERRORS = {
    1: "the entropy-coded stream ends early",
    2: "a bypass value longer than the encoder ever writes",
    3: "bypass value out of the int32 range",
    4: "the entropy-coded stream ends late",
    5: "inconsistent entropy-coder state at the end of the stream",
}


def _decode_native(payload: bytes, idx: np.ndarray, cdfs: np.ndarray, lengths: np.ndarray, offs: np.ndarray,
                   name: str) -> array:
    """:func:`_decode` in C over per-symbol table indexes (tables checked by the caller)."""
    n = len(payload)
    if n % 4 or n < 8:
        raise CorruptStream(f"{name}: corrupt payload ({n} bytes; a rANS stream is a whole number of "
                            f"32-bit words, at least 2)")
    words = np.frombuffer(payload, dtype="<u4")
    idx = np.ascontiguousarray(idx, dtype=np.int32)
    cdfs = np.ascontiguousarray(cdfs, dtype=np.int32)
    lengths = np.ascontiguousarray(lengths, dtype=np.int32)
    offs = np.ascontiguousarray(offs, dtype=np.int32)
    out = np.empty(len(idx), dtype=np.int32)
    done = ctypes.c_int64(0)
    rc = _native()(words.ctypes.data, len(words), idx.ctypes.data, len(idx), cdfs.ctypes.data, cdfs.shape[1],
                   lengths.ctypes.data, offs.ctypes.data, cdfs.shape[0], out.ctypes.data, ctypes.byref(done))
    if rc == 6:
        raise CorruptStream(f"{name}: CDF index out of range (the codec has {cdfs.shape[0]} CDFs)")
    if rc:
        where = f", after {done.value} symbols" if rc == 1 else ""
        raise CorruptStream(f"{name}: corrupt payload ({_NATIVE_ERRORS[rc]}{where})")
    return array("i", out.tobytes())
