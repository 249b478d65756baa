"""Normalisation of the L2 distillation loss: eq. 3.2 as printed (``thesis``, the default) and the
released TF code's plain means (``released_code``, what the documented results used)."""
from __future__ import annotations

import pytest
import torch

from incdet.errors import ConfigError
from incdet.models.learner import FastRCNNLearnerConfig
from incdet.models.losses.distill import distillation_loss, l2_distillation

# A 2-RoI example with |C_A| = 2 old classes and one new class, worked out by hand.
# RoI 1: y_A = [0, 3, 6] -> centred [-3, 0, 3]; y_B(old) = [1, 1, 4] -> centred [-1, -1, 2];
#        squared differences 4 + 1 + 1 = 6
# RoI 2: y_A = [2, 2, 2] -> centred [0, 0, 0]; y_B(old) = [0, 3, 0] -> centred [-1, 2, -1];
#        squared differences 1 + 4 + 1 = 6                    => sum over logits = 12
# boxes: RoI 1 differs by 1 in two old-class coordinates (1 + 1 = 2), RoI 2 by 2 in one (4)
#        => sum over boxes = 6 (the new class's deltas do not count)
T_LOGITS = torch.tensor([[0.0, 3.0, 6.0], [2.0, 2.0, 2.0]])
S_LOGITS = torch.tensor([[1.0, 1.0, 4.0, 10.0], [0.0, 3.0, 0.0, -7.0]])
T_DELTAS = torch.zeros(2, 8)
S_DELTAS = torch.zeros(2, 12)
S_DELTAS[0, 0] = 1.0
S_DELTAS[0, 7] = -1.0
S_DELTAS[1, 1] = 2.0
S_DELTAS[1, 8:] = 5.0  # new class: ignored

# eq. 3.2: 1 / (N |C_A|) = 1 / (2 * 2) in front of the whole sum
THESIS = {"loss_distill_cls": 12 / 4, "loss_distill_box": 6 / 4}  # 3.0, 1.5
# released code: mean over N (1 + |C_A|) = 6 logits and over N |C_A| 4 = 16 box deltas
RELEASED = {"loss_distill_cls": 12 / 6, "loss_distill_box": 6 / 16}  # 2.0, 0.375


def _values(**kw):
    out = l2_distillation(S_LOGITS, S_DELTAS, T_LOGITS, T_DELTAS, **kw)
    return {k: float(v) for k, v in out.items()}


def test_thesis_normalisation_is_eq_3_2_by_hand():
    assert _values(norm="thesis") == pytest.approx(THESIS)
    assert _values() == pytest.approx(THESIS)  # the default
    # distillation_loss passes the switch through (and keeps it for the box term of "ce")
    d = distillation_loss(S_LOGITS, S_DELTAS, T_LOGITS, T_DELTAS, kind="ce", norm="thesis")
    assert float(d["loss_distill_box"]) == pytest.approx(THESIS["loss_distill_box"])


def test_released_code_normalisation_is_the_previous_value():
    assert _values(norm="released_code") == pytest.approx(RELEASED)
    # golden: the formula the loss used before the switch existed, on random tensors
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(7, 4, generator=g), torch.randn(7, 6, generator=g)
    td, sd = torch.randn(7, 12, generator=g), torch.randn(7, 20, generator=g)
    tb = t - t.mean(1, keepdim=True)
    sb = s[:, :4] - s[:, :4].mean(1, keepdim=True)
    got = l2_distillation(s, sd, t, td, norm="released_code")
    assert torch.allclose(got["loss_distill_cls"], ((sb - tb) ** 2).mean())
    assert torch.allclose(got["loss_distill_box"], ((sd[:, :12] - td) ** 2).mean())
    sm = l2_distillation(s, sd, t, td, norm="released_code", box_loss="smooth_l1")["loss_distill_box"]
    assert torch.allclose(sm, torch.nn.functional.smooth_l1_loss(sd[:, :12], td))
    # the thesis setting on the same tensors: (1 + |C_A|) / |C_A| and 4 times as much
    th = l2_distillation(s, sd, t, td, norm="thesis")
    assert torch.allclose(th["loss_distill_cls"], got["loss_distill_cls"] * 4 / 3)
    assert torch.allclose(th["loss_distill_box"], got["loss_distill_box"] * 4)


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="norm"):
        _values(norm="mean")
    with pytest.raises(ConfigError, match="learner.distill_norm"):
        FastRCNNLearnerConfig(distill_norm="mean")
    assert FastRCNNLearnerConfig().distill_norm == "thesis"


def test_learner_passes_the_switch_to_the_loss(tmp_path):
    """The same training step under both settings: the thesis' terms are (1 + 2)/2 and 4 times
    the released code's (2 old classes)."""
    from test_incdet_helpers import make_tasks
    from test_incdet_learner import _batch, _learner

    tasks = make_tasks()
    vals = {}
    for norm in ("thesis", "released_code"):
        torch.manual_seed(0)
        L = _learner(tmp_path / norm, tasks, distill_norm=norm)
        L.begin_task(tasks[0])
        L.begin_task(tasks[1])
        with torch.no_grad():  # B != A, so that both terms are non-zero
            g = torch.Generator().manual_seed(2)
            for p in L.net.backbone.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        torch.manual_seed(1)
        out = L.training_step(_batch(L, tasks[1]))
        vals[norm] = (out["loss_distill_cls"].detach().item(), out["loss_distill_box"].detach().item())
    assert vals["released_code"][0] > 0 and vals["released_code"][1] > 0
    assert vals["thesis"][0] == pytest.approx(vals["released_code"][0] * 3 / 2, rel=1e-4)
    assert vals["thesis"][1] == pytest.approx(vals["released_code"][1] * 4, rel=1e-4)
