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
    for count, cdf, cdf_len, offset in blocks:
        max_value = cdf_len - 2
        if max_value < 0 or cdf_len > len(cdf) or cdf[0] != 0 or cdf[cdf_len - 1] != 1 << PRECISION:
            raise CorruptStream(f"{name}: the codec's CDF table is invalid (length {cdf_len})")
        for _ in range(count):
            cum = x & _MASK
            s = bisect_right(cdf, cum, 0, cdf_len) - 1
            start = cdf[s]
            x = ((cdf[s + 1] - start) * (x >> PRECISION) + (x & _MASK) - start) & _MASK64
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
