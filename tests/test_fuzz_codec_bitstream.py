"""Property-based fuzzing of the bitstream parser and decoder (hypothesis).

Property (:func:`check_decode`): on any bytes, ``decode`` either returns a uint8 image of the
size its header announces (within the limits) or raises ``DataError`` naming the file; never
another exception, never a crash, and the entropy decoder is never asked for more symbols
than the limits allow (memory bounded, refused before allocating). Inputs: random bytes,
forged headers (any field values, CRC recomputed) and mutated honest files (CRC recomputed
after every mutation, so the CRC does not hide a bug). The known-bad cases reintroduce the
bugs (limits removed; compressai's unchecked rANS decoder fed short payloads, which
segfaults: run in a subprocess) and check that the same property checker reports them.
Format version 2 (the hyperprior family's two streams): forged stream tables and mutated
honest v2 files through the same property, with a tiny mean-scale hyperprior model.
"""
from __future__ import annotations

import functools
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec import bitstream as bs
from codec.hyperprior import MeanScaleHyperpriorCodec
from codec.model import FactorizedCodec
from incdet.errors import DataError

#: limits used by the fuzz tests (an image of up to 2048 x 2048 = latent 8 x 128 x 128)
LIMITS = bs.DecodeLimits(max_pixels=2048 * 2048, max_latent_elements=8 * 128 * 128)
DEFAULT_EXAMPLES = 40
SLOW_EXAMPLES = 1500
NAME = "fuzz.nic"


@functools.lru_cache(maxsize=None)
def model() -> FactorizedCodec:
    torch.manual_seed(0)
    m = FactorizedCodec(8).eval()
    m.update()
    return m


@functools.lru_cache(maxsize=None)
def honest_files() -> tuple:
    g = torch.Generator().manual_seed(0)
    imgs = [(torch.rand(3, h, w, generator=g) * 255).to(torch.uint8) for h, w in ((16, 16), (17, 33), (40, 24))]
    return tuple(bs.encode(model(), im, domain=i) for i, im in enumerate(imgs))


@functools.lru_cache(maxsize=None)
def hyper_model() -> MeanScaleHyperpriorCodec:
    torch.manual_seed(0)
    m = MeanScaleHyperpriorCodec(4, 6).eval()
    with torch.no_grad():
        m.g_a[-1].weight.mul_(30)  # non-zero latents (g_a is not part of the codec id)
    m.update(force=True)
    return m


@functools.lru_cache(maxsize=None)
def honest_v2_files() -> tuple:
    g = torch.Generator().manual_seed(1)
    imgs = [(torch.rand(3, h, w, generator=g) * 255).to(torch.uint8) for h, w in ((16, 16), (70, 33), (64, 130))]
    return tuple(bs.encode(hyper_model(), im, domain=i) for i, im in enumerate(imgs))


def assemble(fields: bytes, side: bytes, payload: bytes, trailing: bytes = b"") -> bytes:
    """Header fields + a correct CRC32 + side + payload (+ trailing bytes)."""
    crc = zlib.crc32(payload, zlib.crc32(side, zlib.crc32(fields)))
    return fields + struct.pack(">I", crc) + side + payload + trailing


def check_decode(data: bytes, limits: bs.DecodeLimits = LIMITS, codec=None) -> str:
    """The property: decoded (image as announced, within limits) or refused with DataError
    naming the file. Any other exception, or asking the entropy decoder for more symbols than
    the limits allow, fails (AssertionError)."""
    try:
        img = bs.decode(codec or model(), data, NAME, limits)
    except DataError as e:
        assert NAME in str(e), f"error does not name the file: {e}"
        return "refused"
    hdr = bs.parse(data, NAME, limits)[0]
    assert img.dtype == torch.uint8 and tuple(img.shape) == (3, hdr.height, hdr.width)
    assert hdr.height * hdr.width <= limits.max_pixels
    return "decoded"


@pytest.fixture(autouse=True)
def _bounded_entropy_decoder(monkeypatch):
    """Part of the property: the entropy decoder never decodes more symbols than the limits."""
    orig = bs.decode_symbols

    def guarded(payload, blocks, name="<bytes>"):
        n = sum(b[0] for b in blocks)
        assert n <= LIMITS.max_latent_elements, f"entropy decoder asked for {n} symbols (limit {LIMITS.max_latent_elements})"
        return orig(payload, blocks, name)

    monkeypatch.setattr(bs, "decode_symbols", guarded)
    orig_indexed = bs.decode_indexed

    def guarded_indexed(payload, indexes, cdfs, cdf_lengths, offsets, name="<bytes>"):
        assert len(indexes) <= LIMITS.max_latent_elements, f"entropy decoder asked for {len(indexes)} symbols"
        return orig_indexed(payload, indexes, cdfs, cdf_lengths, offsets, name)

    monkeypatch.setattr(bs, "decode_indexed", guarded_indexed)


# ------------------------------------------------------------------------------ strategies
@st.composite
def forged_files(draw) -> bytes:
    """A header with arbitrary (often plausible) fields, the right codec id most of the time,
    arbitrary side / payload bytes, lengths right or not, CRC always right."""
    def usually(default, other):  # the plausible value 7 times in 8, else anything
        return default if draw(st.integers(0, 7)) else draw(other)

    H = usually(draw(st.one_of(st.integers(1, 64), st.integers(1, 2048))), st.integers(0, 65535))
    W = usually(draw(st.one_of(st.integers(1, 64), st.integers(1, 2048))), st.integers(0, 65535))
    c = usually(8, st.integers(0, 65535))
    lh = usually(-(-H // 16), st.integers(0, 65535))
    lw = usually(-(-W // 16), st.integers(0, 65535))
    side = usually(b"", st.binary(min_size=1, max_size=3))
    n_words = draw(st.one_of(st.integers(0, 4), st.integers(2, 40)))
    payload = usually(draw(st.binary(min_size=4 * n_words, max_size=4 * n_words)), st.binary(max_size=96))
    side_len = usually(len(side), st.integers(0, 65535))
    payload_len = usually(len(payload), st.integers(0, 2 ** 32 - 1))
    version = usually(bs.FORMAT_VERSION, st.integers(0, 255))
    codec_id = usually(model().codec_id(), st.binary(min_size=8, max_size=8))
    domain = draw(st.integers(0, 255))
    fields = struct.pack(bs.HEADER_FORMAT, bs.MAGIC, version, 0, codec_id, domain, H, W, c, lh, lw, side_len, payload_len)
    trailing = usually(b"", st.binary(min_size=1, max_size=3))
    return assemble(fields, side, payload, trailing)


def _mutate(draw, head: bytearray, body: bytearray, first_field: int) -> None:
    """Up to 4 in-place mutations: bit flips / overwrites / a cut / an extension of ``body``, or
    an overwrite of a ``head`` byte from ``first_field`` on."""
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "extend", "field"]))
        if op == "flip" and body:
            i = draw(st.integers(0, len(body) - 1))
            body[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and body:
            body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
        elif op == "cut":
            del body[draw(st.integers(0, len(body))):]
        elif op == "extend":
            body += draw(st.binary(min_size=1, max_size=12))
        elif op == "field":
            head[draw(st.integers(first_field, len(head) - 1))] = draw(st.integers(0, 255))


@st.composite
def mutated_files(draw) -> bytes:
    """An honest file with byte flips / overwrites in header, side or payload, a payload cut
    or extended, lengths fixed up (or not) and the CRC recomputed."""
    data = bytearray(draw(st.sampled_from(honest_files())))
    fields, body = data[: bs.HEADER_SIZE - 4], data[bs.HEADER_SIZE:]
    _mutate(draw, fields, body, first_field=4)  # any header byte but the magic
    if draw(st.booleans()):  # make the lengths consistent with what is there
        side_len = struct.unpack(">H", bytes(fields[-6:-4]))[0]
        fields[-4:] = struct.pack(">I", max(0, len(body) - side_len))
    return assemble(bytes(fields), b"", bytes(body))


@st.composite
def forged_v2_files(draw) -> bytes:
    """A version 2 header with arbitrary (often plausible) fields and stream table, the right
    codec id most of the time, arbitrary payload bytes, lengths right or not, CRC always right."""
    def usually(default, other):
        return default if draw(st.integers(0, 7)) else draw(other)

    H = usually(draw(st.one_of(st.integers(1, 130), st.integers(1, 2048))), st.integers(0, 65535))
    W = usually(draw(st.one_of(st.integers(1, 130), st.integers(1, 2048))), st.integers(0, 65535))
    zh, zw = -(-H // 64), -(-W // 64)
    shapes = [(usually(4, st.integers(0, 65535)), usually(zh, st.integers(0, 65535)), usually(zw, st.integers(0, 65535))),
              (usually(6, st.integers(0, 65535)), usually(4 * zh, st.integers(0, 65535)),
               usually(4 * zw, st.integers(0, 65535)))]
    count = usually(2, st.integers(0, 255))
    payloads = [draw(st.binary(min_size=4 * n, max_size=4 * n)) for n in
                (draw(st.one_of(st.integers(0, 4), st.integers(2, 40))) for _ in range(2))]
    lengths = [usually(len(p), st.integers(0, 2 ** 32 - 1)) for p in payloads]
    side = usually(b"", st.binary(min_size=1, max_size=3))
    side_len = usually(len(side), st.integers(0, 65535))
    codec_id = usually(hyper_model().codec_id(), st.binary(min_size=8, max_size=8))
    table = [shapes[i % 2] + (lengths[i % 2],) for i in range(min(count, 4))]
    head = struct.pack(bs.V2_FORMAT, bs.MAGIC, 2, 0, codec_id, draw(st.integers(0, 255)), H, W, side_len, count)
    head += b"".join(struct.pack(bs.STREAM_FORMAT, *t) for t in table)
    body = side + b"".join(payloads) + usually(b"", st.binary(min_size=1, max_size=3))
    return head + struct.pack(">I", zlib.crc32(body, zlib.crc32(head))) + body


@st.composite
def mutated_v2_files(draw) -> bytes:
    """An honest v2 file with byte flips / overwrites anywhere after the magic (header, stream
    table, payloads), cuts and extensions, the CRC recomputed."""
    data = bytearray(draw(st.sampled_from(honest_v2_files())))
    table_end = bs._V2_FIELDS_SIZE + 2 * bs._STREAM_SIZE
    head, body = data[:table_end], data[table_end + 4:]
    _mutate(draw, head, body, first_field=5)  # any header / stream-table byte but the magic and the version
    head, body = bytes(head), bytes(body)
    return head + struct.pack(">I", zlib.crc32(body, zlib.crc32(head))) + body


def _run(strategy, examples: int, codec=None) -> dict:
    """Run the property over ``examples`` inputs; returns outcome counts (failures raise)."""
    counts = {"decoded": 0, "refused": 0}

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def prop(data):
        counts[check_decode(data, codec=codec)] += 1

    prop()
    return counts


def run_forged(examples: int = DEFAULT_EXAMPLES) -> dict:
    return _run(forged_files(), examples)


def run_mutated(examples: int = DEFAULT_EXAMPLES) -> dict:
    return _run(mutated_files(), examples)


def run_forged_v2(examples: int = DEFAULT_EXAMPLES) -> dict:
    return _run(forged_v2_files(), examples, hyper_model())


def run_mutated_v2(examples: int = DEFAULT_EXAMPLES) -> dict:
    return _run(mutated_v2_files(), examples, hyper_model())


def run_random(examples: int = DEFAULT_EXAMPLES) -> dict:
    return _run(st.one_of(st.binary(max_size=80), st.binary(max_size=80).map(lambda b: bs.MAGIC + b)), examples)


# ------------------------------------------------------------------------------ tests
def test_honest_files_decode():
    assert all(check_decode(f) == "decoded" for f in honest_files())
    assert all(check_decode(f, codec=hyper_model()) == "decoded" for f in honest_v2_files())


RUNS = [run_random, run_forged, run_mutated, run_forged_v2, run_mutated_v2]
RUN_IDS = ["random", "forged", "mutated", "forged-v2", "mutated-v2"]


@pytest.mark.parametrize("run", RUNS, ids=RUN_IDS)
def test_fuzz_decoder(run):
    counts = run()
    assert sum(counts.values()) > 0


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS, ids=RUN_IDS)
def test_fuzz_decoder_long(run):
    t = time.time()
    counts = run(SLOW_EXAMPLES)
    print(f"{run.__name__}: {counts} in {time.time() - t:.1f}s")
    assert counts["refused"] > 0


def test_fuzz_header_parser_random_bytes():
    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(st.binary(min_size=bs.HEADER_SIZE - 1, max_size=bs.HEADER_SIZE + 40).map(lambda b: bs.MAGIC + b[4:]))
    def prop(data):
        try:
            hdr, side, payload = bs.parse(data, NAME, LIMITS)
        except DataError as e:
            assert NAME in str(e)
            return
        assert hdr.header_bytes + len(side) + len(payload) == len(data)

    prop()


# ------------------------------------------------------------------------------ C decoder == Python decoder
@functools.lru_cache(maxsize=None)
def _gc_tables():
    from compressai.entropy_models import GaussianConditional
    from compressai.models.google import get_scale_table

    gc = GaussianConditional(None)
    gc.update_scale_table(get_scale_table())
    return gc


def _both(payload, idx, tables):
    """(result or error class) of the C and the Python decoder on the same input."""
    from codec import rans

    outs = []
    for native in (True, False):
        saved = rans._NATIVE
        if not native:
            rans._NATIVE = False
        try:
            outs.append(("ok", list(rans.decode_indexed(payload, idx, *tables, NAME))))
        except rans.CorruptStream as e:
            assert NAME in str(e)
            outs.append(("corrupt", None))
        finally:
            rans._NATIVE = saved
    return outs


@pytest.mark.skipif(__import__("codec.rans", fromlist=["x"])._native() is None, reason="no C compiler: the Python decoder only")
def test_native_decoder_agrees_with_python():
    """On honest streams, cut / extended / bit-flipped ones and random words: the C decoder
    returns the same symbols or refuses exactly when the Python one does."""
    gc = _gc_tables()
    tables = (gc._quantized_cdf.numpy(), gc._cdf_length.numpy(), gc._offset.numpy())
    seen = {"ok": 0, "corrupt": 0}

    @settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(st.integers(bs.MIN_STREAM_SYMBOLS, 60), st.floats(0.1, 300), st.integers(0, 2 ** 31), st.sampled_from(["honest", "cut", "extend",
                                                                                               "flip", "random"]),
           st.data())
    def prop(n, spread, seed, op, data):
        g = torch.Generator().manual_seed(seed)
        y = torch.randn(1, 1, 1, n, generator=g) * spread
        idx = gc.build_indexes(torch.rand(1, 1, 1, n, generator=g) * spread)
        payload = bytearray(gc.compress(y, idx)[0])
        if op == "cut":
            del payload[data.draw(st.integers(0, len(payload) - 1)):]
        elif op == "extend":
            payload += data.draw(st.binary(min_size=1, max_size=16))
        elif op == "flip":
            payload[data.draw(st.integers(0, len(payload) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "random":
            payload = data.draw(st.binary(min_size=0, max_size=64))
        a, b = _both(bytes(payload), idx.reshape(-1).numpy(), tables)
        assert a == b, (op, a, b)
        seen[a[0]] += 1

    prop()
    assert seen["ok"] and seen["corrupt"]


# ------------------------------------------------------------------------------ known-bad cases
def _sizes_without_limits(H, W, latent_shape, payload_len, limits, name="<bytes>"):
    """The reintroduced bug: the header's sizes are not checked."""


def test_checker_catches_missing_size_limits(monkeypatch):
    """With the limits removed, a forged header makes the decoder work on a latent larger than
    the limits allow: the property reports it."""
    monkeypatch.setattr(bs, "check_header_sizes", _sizes_without_limits)
    with pytest.raises(AssertionError, match="symbols|shape"):
        run_forged(200)


_SUBPROCESS = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import test_fuzz_codec_bitstream as F
    from codec import bitstream as bs
    if {bad!r}:
        # the reintroduced bug: no payload-length check, compressai's unchecked rANS decoder
        def sizes(H, W, latent_shape, payload_len, limits, name="<bytes>"):
            c, lh, lw = latent_shape
            if H * W == 0 or H * W > limits.max_pixels or (lh, lw) != (-(-H // 16), -(-W // 16)) \\
                    or c * lh * lw > limits.max_latent_elements:
                raise bs.DataError(name + ": bad sizes")
        bs.check_header_sizes = sizes
        bs.entropy_decode = lambda eb, payload, shape, name: eb.decompress([payload], shape[1:])
    print(F.run_forged({n}))
""")


def run_in_subprocess(bad: bool, examples: int) -> subprocess.CompletedProcess:
    """The forged-header property in a fresh interpreter (a segfault kills only that one)."""
    code = _SUBPROCESS.format(tests=str(Path(__file__).parent), bad=bad, n=examples)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env,
                          cwd=str(Path(__file__).parents[1]))


def property_failed(proc: subprocess.CompletedProcess) -> bool:
    """The checker: a signal (segfault), or the property's failure, is a nonzero exit."""
    return proc.returncode != 0


@pytest.mark.parametrize("bad", [False, True], ids=["checked-decoder", "unchecked-compressai-decoder"])
def test_checker_catches_unchecked_entropy_decoder(bad):
    proc = run_in_subprocess(bad, 60)
    assert property_failed(proc) == bad, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    if bad:
        assert proc.returncode < 0 or "Error" in proc.stderr


@pytest.mark.slow
def test_fuzz_decoder_subprocess_long():
    proc = run_in_subprocess(False, 5000)
    assert proc.returncode == 0, proc.stderr[-2000:]
