"""tools/zoo_trunk_eval.py: trunks scored on the same held-out shapes-pretrain streams."""
import json

import torch

from conftest import load_tool


def _constant_classifier(path, k):
    """A width-4 ResNet-18 classifier whose fc always answers class ``k``, saved as torchvision weights."""
    from incdet.data.shapes_pretrain import PRETRAIN_CLASSES
    from incdet.models.pretrain import Classifier

    torch.manual_seed(0)
    m = Classifier(18, 4, len(PRETRAIN_CLASSES))
    with torch.no_grad():
        m.fc.weight.zero_()
        m.fc.bias.zero_()
        m.fc.bias[k] = 10.0
    torch.save(m.torchvision_state_dict(), path)


def test_top1_of_a_constant_classifier_is_that_class_share(tmp_path):
    from incdet.data.shapes_pretrain import ShapesPretrain
    from incdet.zoo import sha256_file

    tool = load_tool("zoo_trunk_eval")
    w = tmp_path / "w.pt"
    _constant_classifier(w, 3)
    res = tool.score([str(w)], seeds=[0, 1], val_images=30, width=4, size=32)
    r = res[str(w)]
    assert r["sha256"] == sha256_file(w)
    for s in (0, 1):  # worked out from the stream's own labels
        labels = [int(ShapesPretrain(30, 32, s, split="val")[i][1]) for i in range(30)]
        assert r[f"top1_val_seed{s}"] == 100.0 * labels.count(3) / 30


def test_main_prints_table_and_writes_json(tmp_path, capsys):
    tool = load_tool("zoo_trunk_eval")
    w = tmp_path / "w.pt"
    _constant_classifier(w, 0)
    out = tmp_path / "o" / "r.json"
    assert tool.main([str(w), "--seeds", "2", "--val-images", "30", "--width", "4", "--size", "32",
                      "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "top-1, val stream of seed 2 (%)" in text and str(w) in text
    d = json.loads(out.read_text())
    assert set(d["results"][str(w)]) == {"sha256", "top1_val_seed2"}
