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
"""
from __future__ import annotations

from array import array
from bisect import bisect_right
from typing import Sequence

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
    runs = [(int(count), tables[i]) for i, (count, _, _, _) in enumerate(blocks)]
    return _decode(payload, runs, name)


def decode_indexed(payload: bytes, indexes: Sequence[int], cdfs: Sequence[Sequence[int]],
                   cdf_lengths: Sequence[int], offsets: Sequence[int], name: str = "<bytes>") -> array:
    """Decode ``payload`` into ``len(indexes)`` symbols, symbol ``i`` with CDF ``indexes[i]``:
    compressai's ``RansDecoder.decode_with_indexes(payload, indexes, cdfs, cdf_lengths,
    offsets)`` (a ``GaussianConditional``'s indexes from its ``build_indexes``), with every
    read checked as in :func:`decode_symbols`. An index outside ``0..len(cdfs) - 1`` or an
    invalid CDF table -> :class:`CorruptStream`. Returns an ``array('i')``."""
    n_tab = len(cdfs)
    if not (n_tab == len(cdf_lengths) == len(offsets)):
        raise CorruptStream(f"{name}: the codec's CDF tables are inconsistent ({n_tab} CDFs, {len(cdf_lengths)} "
                            f"lengths, {len(offsets)} offsets)")
    tables = [_table(cdfs[i], cdf_lengths[i], offsets[i], name) for i in range(n_tab)]
    runs = []
    append = runs.append
    # runs of equal indexes (one table lookup per run, as the block API)
    prev, count = None, 0
    for k in indexes:
        if k == prev:
            count += 1
            continue
        if count:
            append((count, tables[prev]))
        if not 0 <= k < n_tab:
            raise CorruptStream(f"{name}: CDF index {k} out of range (the codec has {n_tab} CDFs)")
        prev, count = k, 1
    if count:
        append((count, tables[prev]))
    return _decode(payload, runs, name)


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
            x = ((cdf[s + 1] - start) * (x >> PRECISION) + cum - start) & _MASK64
            if x < L:
                if p >= n_words:
                    raise CorruptStream(f"{name}: corrupt payload (the entropy-coded stream ends early, "
                                        f"after {len(out)} symbols)")
                x = ((x << 32) | words[p]) & _MASK64
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
                        x = ((x << 32) | words[p]) & _MASK64
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
                        x = ((x << 32) | words[p]) & _MASK64
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
