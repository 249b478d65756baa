"""The model zoo: manifest, sha256 check, refusal of altered files, CLI."""
import json

import pytest
import torch

from incdet import zoo
from incdet.errors import CheckpointError, ConfigError


@pytest.fixture
def zdir(tmp_path, monkeypatch):
    d = tmp_path / "zoo"
    d.mkdir()
    monkeypatch.setenv("INCDET_ZOO", str(d))
    return d


def _weights(path, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.save({"conv1.weight": torch.randn(4, 3, 3, 3, generator=g)}, path)
    return path


def test_add_verify_resolve(zdir):
    f = _weights(zdir / "r18.pt")
    e = zoo.add("r18", f, command="incdet pretrain --out zoo/r18.pt", hardware="cpu", wall_s=12.5,
                metrics={"top1": 91.0})
    assert e.size == f.stat().st_size and len(e.sha256) == 64
    doc = json.loads((zdir / "manifest.json").read_text())
    assert doc["entries"]["r18"]["command"] == "incdet pretrain --out zoo/r18.pt"
    assert zoo.resolve("zoo:r18") == str(zdir / "r18.pt")
    assert zoo.resolve("/some/plain/path.pt") == "/some/plain/path.pt"
    state = torch.load(zoo.resolve("zoo:r18"), weights_only=True)
    assert set(state) == {"conv1.weight"}


def test_one_byte_altered_file_is_refused(zdir):
    f = _weights(zdir / "r18.pt")
    zoo.add("r18", f, command="cmd", hardware="cpu", wall_s=1)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"sha256 .* does not match .*made by: cmd"):
        zoo.resolve("zoo:r18")


def test_truncated_missing_unknown(zdir):
    f = _weights(zdir / "a.pt")
    zoo.add("a", f, command="cmd-a", hardware="cpu", wall_s=1)
    f.write_bytes(f.read_bytes()[:-3])
    with pytest.raises(CheckpointError, match="truncated"):
        zoo.verify("a")
    f.unlink()
    with pytest.raises(CheckpointError, match="missing; it is made by: cmd-a"):
        zoo.verify("a")
    with pytest.raises(CheckpointError, match=r"unknown zoo entry 'b'; known: a"):
        zoo.resolve("zoo:b")


def test_bad_manifest_and_limits(zdir, monkeypatch):
    (zdir / "manifest.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a zoo manifest"):
        zoo.read_manifest()
    (zdir / "manifest.json").write_text(json.dumps({"format": 1, "entries": {"x": {
        "file": "../etc/passwd", "sha256": "0" * 64, "size": 1, "command": "c", "hardware": "h", "wall_s": 1}}}))
    with pytest.raises(CheckpointError, match="plain file name"):
        zoo.read_manifest()
    (zdir / "manifest.json").unlink()
    f = _weights(zdir / "big.pt")
    monkeypatch.setattr(zoo, "MAX_FILE_BYTES", 10)
    with pytest.raises(ConfigError, match="over the zoo's limit"):
        zoo.add("big", f, command="c", hardware="h", wall_s=1)
    with pytest.raises(ConfigError, match="zoo folder"):
        zoo.add("x", __file__, command="c", hardware="h", wall_s=1)


def test_cli(zdir, capsys):
    from incdet.cli import main

    f = _weights(zdir / "r.pt")
    assert main(["zoo", "add", "r", str(f), "--command", "c", "--hardware", "cpu", "--wall-s", "3",
                 "--metric", "top1=50"]) == 0
    assert main(["zoo", "verify"]) == 0
    assert "r: ok" in capsys.readouterr().out
    f.write_bytes(b"x" + f.read_bytes()[1:])
    assert main(["zoo", "verify", "r"]) == 2
    assert "does not match" in capsys.readouterr().err
    assert main(["zoo", "add", "r", str(f), "--command", "c", "--hardware", "cpu", "--wall-s", "3",
                 "--metric", "top1"]) == 2


def test_repository_zoo_is_intact(monkeypatch):
    """Every file the repository's zoo manifest lists matches its sha256 (no-op while the zoo is empty)."""
    monkeypatch.delenv("INCDET_ZOO", raising=False)
    for name in zoo.read_manifest():
        zoo.verify(name)


def test_detector_takes_zoo_references(zdir):
    """``learner.model.weights: zoo:NAME`` loads the checked file; an altered file is refused."""
    from incdet.models import pretrain as pt
    from incdet.models.fastrcnn import DetectorConfig, FastRCNN

    cfg = pt.PretrainConfig(width=8, size=32, iterations=1, batch_size=2, warmup_iters=0, val_images=30,
                            checkpoint_every=1, num_workers=0)
    pt.pretrain(cfg, zdir / "run", zdir / "r8.pt", torch.device("cpu"))
    zoo.add("r8", zdir / "r8.pt", command="incdet pretrain ...", hardware="cpu", wall_s=1)
    det = FastRCNN(DetectorConfig(depth=18, width=8, norm="bn", weights="zoo:r8", min_size=64, max_size=64), 2)
    state = torch.load(zdir / "r8.pt", weights_only=True)
    assert torch.equal(det.backbone.conv1.weight, state["conv1.weight"])
    data = bytearray((zdir / "r8.pt").read_bytes())
    data[-100] ^= 0xFF
    (zdir / "r8.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the zoo manifest"):
        FastRCNN(DetectorConfig(depth=18, width=8, norm="bn", weights="zoo:r8"), 2)
    with pytest.raises(CheckpointError, match="unknown zoo entry 'nope'"):
        DetectorConfig(depth=18, width=8, norm="bn", weights="zoo:nope").validate()


def test_blitznet_takes_zoo_references(zdir):
    from blitznet.model import BlitzNet, BlitzNetConfig
    from incdet.models import pretrain as pt

    cfg = pt.PretrainConfig(width=64, size=32, iterations=1, batch_size=2, warmup_iters=0, val_images=30,
                            checkpoint_every=1, num_workers=0)
    pt.pretrain(cfg, zdir / "run", zdir / "r18.pt", torch.device("cpu"), half=True)
    zoo.add("r18", zdir / "r18.pt", command="incdet pretrain --width 64 ...", hardware="cpu", wall_s=1)
    net = BlitzNet(BlitzNetConfig(num_classes=3, backbone="resnet18", backbone_weights="zoo:r18", input_size=64,
                                  channels=16, seg_channels=4))
    state = torch.load(zdir / "r18.pt", weights_only=True)
    assert torch.equal(net.stem[0].weight, state["conv1.weight"].float())
    data = bytearray((zdir / "r18.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (zdir / "r18.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the zoo manifest"):
        BlitzNet(BlitzNetConfig(num_classes=3, backbone="resnet18", backbone_weights="zoo:r18", input_size=64))


def test_repository_zoo_commands_parse(monkeypatch):
    """Every manifest entry's command is one of the project's commands with arguments its parser
    accepts (parsed, not run: the commands train for minutes to hours)."""
    import argparse
    import shlex

    from codec import cli as codec_cli
    from incdet import cli as incdet_cli

    progs = {"incdet": incdet_cli._registrars, "codec": codec_cli._registrars}
    monkeypatch.delenv("INCDET_ZOO", raising=False)
    for name, entry in zoo.read_manifest().items():
        for cmd in entry.command.split(" && "):
            argv = shlex.split(cmd)
            if argv[:3] == ["python", "-m", "codec.export"]:
                argv = ["codec"] + argv[3:]
            assert argv[0] in progs, f"{name}: {cmd}"
            parser = argparse.ArgumentParser(prog=argv[0], exit_on_error=False)
            sub = parser.add_subparsers(dest="command", required=True)
            for reg in progs[argv[0]]():
                reg(sub)
            args = parser.parse_args(argv[1:])
            assert callable(args.func), f"{name}: {cmd}"


def test_blitznet_takes_a_narrow_zoo_trunk(zdir):
    """``learner.model.backbone_width`` builds incdet's ResNet layout at that width, so a trunk
    written by ``incdet pretrain --width 16`` (the zoo's shapes trunk) loads into BlitzNet; a
    file of another width is refused with the key to set, not a size-mismatch traceback."""
    from blitznet.model import BlitzNet, BlitzNetConfig
    from incdet.models import pretrain as pt

    cfg = pt.PretrainConfig(width=16, size=32, iterations=1, batch_size=2, warmup_iters=0, val_images=30,
                            checkpoint_every=1, num_workers=0)
    pt.pretrain(cfg, zdir / "run", zdir / "r18w16.pt", torch.device("cpu"))
    zoo.add("r18w16", zdir / "r18w16.pt", command="incdet pretrain --width 16 ...", hardware="cpu", wall_s=1)
    net = BlitzNet(BlitzNetConfig(num_classes=3, backbone="resnet18", backbone_width=16, backbone_weights="zoo:r18w16",
                                  input_size=64, channels=16, seg_channels=4))
    state = torch.load(zdir / "r18w16.pt", weights_only=True)
    assert torch.equal(net.stages[3][1].conv2.weight, state["layer4.1.conv2.weight"])
    assert net.down_channels[:4] == [16, 32, 64, 128]
    out = net(torch.zeros(2, 3, 64, 64))
    assert out["seg_logits"].shape == (2, 4, 16, 16)
    with pytest.raises(CheckpointError, match="another width.*backbone_width"):
        BlitzNet(BlitzNetConfig(num_classes=3, backbone="resnet18", backbone_weights="zoo:r18w16", input_size=64,
                                channels=16, seg_channels=4))
    with pytest.raises(ConfigError, match="backbone_width must be a multiple of 8"):
        BlitzNetConfig(backbone_width=12)
