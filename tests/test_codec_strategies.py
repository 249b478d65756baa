"""Adaptation strategies: CAwF bit-exact backward compatibility, adapters' gate bits,
selective fine-tuning's parameter set, naive fine-tuning's incompatibility."""
from __future__ import annotations

import pytest
import torch

from codec import bitstream as bs
from codec.learner import CodecConfig, CodecLearner
from codec.model import FactorizedCodec, load_codec, rd_loss, save_checkpoint
from codec.strategies.adapters import AdapterCodec
from codec.strategies.cawf import CAwFCodec
from codec.strategies.selective import setup_selective, trainable_fraction
from incdet.engine.task import Task
from incdet.errors import DataError


def _img(h, w, seed=0, kind="smooth"):
    g = torch.Generator().manual_seed(seed)
    if kind == "smooth":
        yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        x = torch.stack([yy, xx, (yy + xx) / 2]) * 200 + torch.rand(3, h, w, generator=g) * 30
    else:  # "sketch": sparse dark strokes on white
        x = torch.full((3, h, w), 250.0)
        mask = torch.rand(1, h, w, generator=g) < 0.08
        x = torch.where(mask, torch.full_like(x, 20.0), x)
    return x.clamp(0, 255).to(torch.uint8)


def _source(N=8):
    torch.manual_seed(0)
    m = FactorizedCodec(N)
    m.update()
    return m.eval()


def _train(model, params, domain, steps=3, kind="sketch", extra=None):
    opt = torch.optim.Adam(params, lr=1e-2)
    model.train()
    for i in range(steps):
        x = torch.stack([_img(32, 32, seed=i * 2 + k, kind=kind) for k in range(2)]).float() / 255
        out = model(x, domain)
        loss = extra(out, x) if extra else rd_loss(out, x, 0.01)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def test_cawf_old_bitstreams_decode_bit_exactly_and_source_unchanged(tmp_path):
    src = _source()
    img = _img(40, 56, seed=5)
    old = bs.encode(src, img)  # written at t=1 by the source codec
    rec_t1 = bs.decode(src, old)

    cawf = CAwFCodec(src, K=4)
    d = cawf.add_domain()
    assert d == 1 and cawf.n_domains() == 2
    before = {k: v.clone() for k, v in cawf.shared.state_dict().items()}
    _train(cawf, cawf.trainable_parameters(1), 1)
    cawf.branch(1).entropy_bottleneck.update(force=True, update_quantiles=True)
    # shared (source) weights and tables untouched, bit for bit
    for k, v in cawf.shared.state_dict().items():
        assert torch.equal(v, before[k]), k
    # t=1 bitstream decodes identically at t=2, after a checkpoint round trip too
    assert torch.equal(bs.decode(cawf, old), rec_t1)
    ck = tmp_path / "cawf.pt"
    save_checkpoint(ck, cawf)
    cawf2, _ = load_codec(ck)
    assert torch.equal(bs.decode(cawf2, old), rec_t1)
    # a source file that names a domain id CAwF has no branch for decodes through domain 0
    old5 = bs.encode(src, img, 5)
    assert torch.equal(bs.decode(cawf2, old5), bs.decode(src, old5))
    # source-domain encoding at t=2 (domain 0) gives the same file and the same image
    assert bs.encode(cawf2, img, 0) == old
    assert torch.equal(bs.reconstruct(cawf2, img, 0), bs.reconstruct(src, img))
    # the new domain has its own codec id, latent with M + K channels, and round-trips
    new = bs.encode(cawf2, img, 1)
    h = bs.parse(new)[0]
    assert h.domain == 1 and h.latent_shape[0] == 8 + 4 and h.codec_id != cawf2.codec_id(0)
    assert torch.equal(bs.decode(cawf2, new), bs.reconstruct(cawf2, img, 1))
    # a third domain leaves domains 0 and 1 decodable bit-exactly
    cawf2.add_domain()
    _train(cawf2, cawf2.trainable_parameters(2), 2, kind="smooth")
    cawf2.update()
    assert torch.equal(bs.decode(cawf2, old), rec_t1)
    assert torch.equal(bs.decode(cawf2, new), bs.reconstruct(cawf, img, 1))


def test_cawf_branch_starts_as_source_decoder_and_blocks_are_separate():
    src = _source()
    cawf = CAwFCodec(src, K=4)
    cawf.add_domain()
    cawf.eval()
    y = torch.randn(1, 8, 3, 4).round()
    yc = torch.cat([y, torch.randn(1, 4, 3, 4).round()], 1)
    with torch.no_grad():
        # zero-initialised custom output layer: same image as the source decoder
        assert torch.allclose(cawf.synthesis(yc, 1), src.synthesis(y), atol=1e-6)
        # shared latent channels never depend on custom ones
        x = torch.rand(1, 3, 32, 32)
        assert torch.equal(cawf.analysis(x, 1)[:, :8], src.analysis(x))


def test_naive_fine_tuning_breaks_old_bitstreams_cleanly():
    m = _source()
    old = bs.encode(m, _img(32, 32))
    m.requires_grad_(True)
    _train(m, [p for n, p in m.named_parameters() if not n.endswith("quantiles")], 0)
    m.update(force=True)
    with pytest.raises(DataError, match="another codec"):
        bs.decode(m, old, "old.nic")


def test_selective_fine_tuning_touches_only_intended_parameters():
    m = _source(N=16)
    params = setup_selective(m)
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert names and all(("entropy_bottleneck" in n) or ("affine" in n) or (".beta" in n) or (".gamma" in n) for n in names), names
    assert not any(n.endswith(("weight", "bias")) and ("g_a" in n or "g_s" in n) for n in names)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    _train(m, [p for p in params if p.dim() and True], 0, steps=2)
    changed = {k for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
    convs = {k for k in changed if (k.startswith("g_a.") or k.startswith("g_s.")) and k.endswith(("weight", "bias"))}
    assert not convs, convs
    assert any("affine" in k for k in changed) and any("g_a.1." in k for k in changed)
    frac = trainable_fraction(FactorizedCodec(64, affine=False))
    assert frac == 1.0
    big = FactorizedCodec(64)
    setup_selective(big)
    assert 0.03 < trainable_fraction(big) < 0.07  # DANICE: ~5%


@pytest.mark.parametrize("policy,side_len", [("soft", 1 + 3), ("top1", 2), ("oracle", 1)])
def test_adapter_gate_bits_are_in_the_file_and_old_files_decode(policy, side_len):
    src = _source()
    a = AdapterCodec(src, 1, policy)
    a.add_domain()
    a.eval()
    img = _img(32, 48, seed=2)
    old = bs.encode(a, img, 1)
    rec_old = bs.decode(a, old)
    assert torch.equal(rec_old, bs.reconstruct(a, img, 1))
    a.add_domain()  # t=3: a third adapter, gate grows
    assert a.n_domains() == 3
    _train(a, list(a.adapters[2].parameters()) + list(a.gate.parameters()), 2,
           extra=lambda out, x: a.adapter_loss(out, x, torch.full((x.shape[0],), 2), 0.5)["loss"])
    data = bs.encode(a, img, 2)
    h = bs.parse(data)[0]
    assert h.side_len == side_len
    assert len(data) == bs.HEADER_SIZE + h.side_len + h.payload_len  # bpp counts the gate bytes
    assert torch.equal(bs.decode(a, data), bs.reconstruct(a, img, 2))
    # the t=2 file names 2 adapters: decoded with adapters 0..1, unchanged
    assert torch.equal(bs.decode(a, old), rec_old)
    # the source codec's own bitstreams are those of the frozen base
    assert bs.encode(a.base, img) == bs.encode(src, img)


def test_adapter_loss_and_gate_learn_domain():
    """The gate and the K + 1 adapters (source one included) train together; with the MSE of
    [0, 1] images (mse_scale 1) the cross-entropy teaches the gate the domains in 30 steps."""
    src = _source()
    a = AdapterCodec(src, 2, "soft")
    opt = torch.optim.Adam(list(a.gate.parameters()) + list(a.adapters.parameters()), lr=1e-2)
    a.train()
    for i in range(30):
        xs = torch.stack([_img(32, 32, seed=i, kind="smooth"), _img(32, 32, seed=i, kind="sketch")]).float() / 255
        out = a(xs, 1)
        losses = a.adapter_loss(out, xs, torch.tensor([0, 1]), 0.5, mse_scale=1.0)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    a.eval()
    with torch.no_grad():
        logits = a.gate(a.analysis(torch.stack([_img(32, 32, seed=99, kind="smooth"), _img(32, 32, seed=99, kind="sketch")]).float() / 255))
    assert logits.argmax(1).tolist() == [0, 1]


def test_learner_resume_restores_structure():
    cfg = CodecConfig(strategy="cawf", N=8, K=2)
    l1 = CodecLearner(cfg)
    t0 = Task(0, "a", domain="a", meta={"domain_id": 0})
    t1 = Task(1, "b", domain="b", meta={"domain_id": 1})
    l1.begin_task(t0)
    l1.end_task(t0)
    l1.begin_task(t1)
    l1.end_task(t1)
    st = l1.state_dict()
    l2 = CodecLearner(cfg)
    l2.load_state_dict(st)
    l2.resume_task(t1)
    assert l2.model.n_domains() == 2
    assert l2.model.codec_id(1) == l1.model.codec_id(1)
    trainable = {n for n, p in l2.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("branches.0.") for n in trainable)


def test_cawf_new_domain_starts_at_the_source_model():
    """A freshly added branch is the source codec: same reconstruction, same rate (the custom
    latent is 0 and costs ~0 bits), and files of the same image differ only by a few bytes."""
    src = _source()
    cawf = CAwFCodec(src, K=4)
    cawf.add_domain()
    cawf.eval()
    x = torch.stack([_img(48, 64, seed=s) for s in (1, 2)]).float() / 255
    with torch.no_grad():
        out0, out1 = src(x), cawf(x, 1)
        assert torch.equal(cawf.analysis(x, 1)[:, 8:], torch.zeros(2, 4, 3, 4))
        assert torch.allclose(out1["x_hat"], out0["x_hat"], atol=1e-5)
        bits0 = (-torch.log2(out0["likelihoods"]["y"])).sum()
        bits1 = (-torch.log2(out1["likelihoods"]["y"])).sum()
        bits_custom = (-torch.log2(out1["likelihoods"]["y"][:, 8:])).sum()
    assert torch.allclose(bits1, bits0, rtol=1e-3), (bits0, bits1)
    assert bits_custom < 0.01 * 2 * 4 * 3 * 4  # < 0.01 bit per custom latent element
    # in training mode too (additive noise), the custom channels cost little
    cawf.train()
    out_t = cawf(x, 1)
    assert (-torch.log2(out_t["likelihoods"]["y"][:, 8:])).mean() < 0.2
    cawf.eval()
    # real bitstreams: the domain-1 file decodes to the source codec's image, a few bytes more
    cawf.update()
    img = _img(48, 64, seed=3)
    f0, f1 = bs.encode(src, img), bs.encode(cawf, img, 1)
    assert torch.equal(bs.decode(cawf, f1), bs.decode(src, f0))
    assert len(f1) <= len(f0) + 8, (len(f0), len(f1))
    # and the branch's custom parameters do receive gradients (it can move away from the source)
    cawf.train()
    loss = rd_loss(cawf(x, 1), x, 0.01)["loss"]
    loss.backward()
    br = cawf.branch(1)
    assert br.dec[3].weight.grad is not None and br.dec[3].weight.grad.abs().sum() > 0


def test_registries_and_no_import_cycle():
    """Codec kinds and strategies are registered objects; model.py does not import them."""
    import ast
    from pathlib import Path

    from codec import model as model_mod
    from codec.learner import CodecConfig
    from codec.registry import CODECS, STRATEGIES, build_codec, get_strategy
    from incdet.errors import CheckpointError, ConfigError

    assert CODECS.names() == ["adapters", "cawf", "factorized", "mean-scale-hyperprior", "scale-hyperprior"]
    assert STRATEGIES.names() == ["adapters", "cawf", "naive", "selective"]
    with pytest.raises(CheckpointError, match="unknown codec kind 'nope'; known: adapters, cawf, factorized"):
        build_codec({"kind": "nope"})
    with pytest.raises(KeyError, match="known: adapters, cawf, naive, selective"):
        get_strategy("nope")
    with pytest.raises(ConfigError, match="learner.strategy"):
        CodecConfig(strategy="nope")
    src = Path(model_mod.__file__).read_text()
    imported = {n.module for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and m.startswith("codec.strategies") for m in imported), imported
    # every registered kind rebuilds from its own arch()
    src_codec = FactorizedCodec(8)
    for kind, strat in (("cawf", "cawf"), ("adapters", "adapters")):
        cfg = CodecConfig(strategy=strat, N=8, K=2)
        m = get_strategy(strat).grow(FactorizedCodec(8), 2, cfg)
        assert m.arch()["kind"] == kind and m.n_domains() == 3
        assert type(build_codec(m.arch())) is type(m)
    assert type(build_codec(src_codec.arch())) is FactorizedCodec
