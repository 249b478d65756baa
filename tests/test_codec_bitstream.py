"""Codec bitstream: round trips, header, damaged files, bpp vs estimate, compressai import."""
from __future__ import annotations


import pytest
import torch

from codec import bitstream as bs
from codec.entropy import latent_bits_estimate
from codec.model import FactorizedCodec, import_compressai, load_codec, pad_to_multiple, rd_loss, save_checkpoint
from incdet.errors import CheckpointError, DataError
from conftest import tiny_codec


def _model(N=8, seed=0):
    return tiny_codec(N, seed)


def _img(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([yy, xx, (yy + xx) / 2]) * 200
    return (base + torch.rand(3, h, w, generator=g) * 40).clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("size", [(32, 48), (17, 33), (1, 1), (5, 70)])
def test_round_trip_equals_forward_reconstruction(size):
    m = _model()
    img = _img(*size)
    data = bs.encode(m, img)
    out = bs.decode(m, data)
    assert out.shape == img.shape and out.dtype == torch.uint8
    assert torch.equal(out, bs.reconstruct(m, img))
    # decoding twice is bit-exact
    assert torch.equal(bs.decode(m, data), out)


def test_header_fields(tmp_path):
    m = _model()
    img = _img(21, 40)
    src = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(img.permute(1, 2, 0).numpy()).save(src)
    info = bs.compress_file(m, src, tmp_path / "a.nic", domain=3)
    h = bs.read_header(tmp_path / "a.nic")
    assert (h.height, h.width, h.domain, h.version) == (21, 40, 3, bs.FORMAT_VERSION)
    assert h.latent_shape == (8, 2, 3)
    assert h.codec_id == m.codec_id(3) and len(h.codec_id) == 8
    size = (tmp_path / "a.nic").stat().st_size
    assert size == bs.HEADER_SIZE + h.side_len + h.payload_len == info["bytes"]
    assert info["bpp"] == pytest.approx(8 * size / (21 * 40))
    out = bs.decompress_file(m, tmp_path / "a.nic", tmp_path / "b.png")
    assert torch.equal(bs.read_image(tmp_path / "b.png"), out)


def _damaged_variants(data: bytes):
    flipped = bytearray(data)
    flipped[-3] ^= 0x40
    wrong_version = bytearray(data)
    wrong_version[4] = bs.FORMAT_VERSION + 1
    header_flip = bytearray(data)
    header_flip[16] ^= 0x01  # height field: caught by the CRC
    return {
        "corrupt payload": bytes(flipped),
        "truncated": data[:-5],
        "header only": data[: bs.HEADER_SIZE - 1],
        "empty": b"",
        "wrong version": bytes(wrong_version),
        "header field changed": bytes(header_flip),
        "not a bitstream": b"\x89PNG\r\n\x1a\n" + data[8:],
        "trailing bytes": data + b"\x00",
    }


@pytest.mark.parametrize("kind", list(_damaged_variants(b"x" * 64)))
def test_damaged_files_refused(tmp_path, kind):
    m = _model()
    data = bs.encode(m, _img(32, 32))
    bad = _damaged_variants(data)[kind]
    f = tmp_path / "bad.nic"
    f.write_bytes(bad)
    with pytest.raises(DataError) as e:
        bs.decompress_file(m, f)
    assert str(f) in str(e.value)


def test_wrong_codec_refused(tmp_path):
    data = bs.encode(_model(seed=0), _img(32, 32))
    f = tmp_path / "x.nic"
    f.write_bytes(data)
    with pytest.raises(DataError, match="another codec") as e:
        bs.decompress_file(_model(seed=1), f)
    assert str(f) in str(e.value)
    with pytest.raises(DataError, match="another codec"):
        bs.decode(_model(N=16), data, "x")


def test_cli_refuses_damaged_file_with_exit_2(tmp_path, capsys):
    from codec.cli import main

    m = _model()
    ck = tmp_path / "m.pt"
    save_checkpoint(ck, m)
    f = tmp_path / "bad.nic"
    f.write_bytes(bs.encode(m, _img(16, 16))[:-2])
    assert main(["decompress", str(f), "-o", str(tmp_path / "o.png"), "--model", str(ck)]) == 2
    assert "truncated" in capsys.readouterr().err


def test_checkpoint_round_trip_keeps_cdf_tables(tmp_path):
    m = _model()
    ck = tmp_path / "m.pt"
    save_checkpoint(ck, m)
    m2, meta = load_codec(ck)
    assert m2.codec_id() == m.codec_id()
    assert torch.equal(m2.entropy_bottleneck._quantized_cdf, m.entropy_bottleneck._quantized_cdf)
    data = bs.encode(m, _img(20, 20))
    assert torch.equal(bs.decode(m2, data), bs.decode(m, data))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_codec(tmp_path / "junk.pt")


def test_import_compressai_factorized_state_dict(tmp_path):
    from compressai.models import FactorizedPrior

    torch.manual_seed(0)
    ref = FactorizedPrior(16, 24).eval()
    ref.update()
    f = tmp_path / "bmshj2018-factorized.pth.tar"
    torch.save(ref.state_dict(), f)
    m = import_compressai(f)
    assert (m.N, m.M) == (16, 24)
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(m(x)["x_hat"], ref(x)["x_hat"])
        assert bs.encode(m, x).endswith(ref.compress(x)["strings"][0][0])
    # a not-updated state_dict gets its CDF tables computed on import
    fresh = FactorizedPrior(16, 16)
    m2 = import_compressai(fresh.state_dict())
    assert m2.entropy_bottleneck._quantized_cdf.numel() > 0
    with pytest.raises(CheckpointError, match="not a supported compressai state_dict.*bmshj2018-factorized"):
        import_compressai({"foo": torch.zeros(1)})


def test_bpp_from_bytes_close_to_estimate_on_trained_model():
    """Train a tiny codec briefly (so the entropy model matches the latents), then the real
    payload size must be within a few percent of the estimated entropy."""
    torch.manual_seed(0)
    m = FactorizedCodec(16)
    opt = torch.optim.Adam([p for n, p in m.named_parameters() if not n.endswith("quantiles")], lr=3e-3)
    for i in range(40):
        x = torch.stack([_img(64, 64, seed=i * 4 + k) for k in range(4)]).float() / 255
        loss = rd_loss(m(x), x, 0.01)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.entropy_bottleneck.update(force=True, update_quantiles=True)
    m.eval()
    img = _img(256, 256, seed=999)
    data = bs.encode(m, img)
    h = bs.parse(data)[0]
    xp, _ = pad_to_multiple(bs.image_to_tensor(img), 16)
    with torch.no_grad():
        est_bytes = latent_bits_estimate(m.entropy_bottleneck, m.analysis(xp)) / 8
    assert est_bytes > 50
    assert abs(h.payload_len - est_bytes) / est_bytes < 0.05, (h.payload_len, est_bytes)


def test_import_old_compressai_key_names():
    from compressai.models import FactorizedPrior

    ref = FactorizedPrior(8, 8)
    old = {}
    for k, v in ref.state_dict().items():
        for new, o in (("matrices.", "_matrix"), ("biases.", "_bias"), ("factors.", "_factor")):
            if k.startswith("entropy_bottleneck." + new):
                k = "module.entropy_bottleneck." + o + k.rsplit(".", 1)[1]
                break
        else:
            k = "module." + k
        old[k] = v
    m = import_compressai(old)
    assert torch.equal(m.entropy_bottleneck.matrices[0], ref.entropy_bottleneck.matrices[0])
