"""Distillation from a frozen teacher A(C_A) to the extended student B (thesis 3.2, 3.3).

RoI selection (3.3): A scores every proposal of the image; the 128 with the lowest background
probability form the pool and 64 of them are drawn at random (``biased``). The *unbiased*
ablation draws 64 of all proposals.

L2 distillation (eq. 3.2), for the N selected RoIs and the teacher's ``1 + |C_A|`` outputs
(background + old classes)::

    ybar_A = y_A - mean_{c in {bg} + C_A} y_A[c]
    ybar_B = y_B[{bg} + C_A] - mean_{c in {bg} + C_A} y_B[c]          (center="old", default)
    S_cls  = sum over N RoIs and the 1 + |C_A| columns of (ybar_A - ybar_B)^2
    S_box  = sum over N RoIs, the |C_A| old classes and 4 coords of (t_A - t_B)^2
    norm="thesis" (default; eq. 3.2 as written, 1/(N|C_A|) in front of the whole sum):
        L_cls = S_cls / (N |C_A|)           L_box = S_box / (N |C_A|)
    norm="released_code" (the released TF code's ``reduce_mean`` of each term):
        L_cls = S_cls / (N (1 + |C_A|))     L_box = S_box / (N |C_A| 4)
    L_dist = L_cls + L_box

So the thesis setting weighs the logit term (1 + |C_A|)/|C_A| times and the box term 4 times
as much as the released code (with ``box_loss="smooth_l1"`` the same normalisers apply to the
summed smooth-L1 terms). Every result documented before the switch existed was produced with
``released_code``.

Which classes enter the mean: the thesis says the logits of the new classes C_B "are not
considered in this loss" and that the mean over the class dimension is subtracted "from these
logits"; we read that as: the mean is over the background and the old classes, for both A and
B (``center="old"``), so B's new-class logits cannot shift the comparison of the old ones
(B may raise a new class's logit on an old-looking RoI without being penalised through the
mean). The released TensorFlow code (kshmelkov/incremental_detectors, ``network.py``) differs:
it subtracts from B's old logits the mean over *all* of B's logits, new classes included, and
from A's the mean over A's own outputs; ``center="all"`` reproduces that. Both include the
background column in the squared error (the normaliser is the ``norm`` switch above: we read
the thesis' "sum over all the RoIs for the old classes" as the teacher's whole output, background
included, divided by N|C_A| as printed); since centred logits sum to zero over the same columns, the background term only
reweights the old-class terms. Boxes use the plain squared error as in the thesis (the code's
default was smooth-L1: ``box_loss="smooth_l1"``).

Cross-entropy distillation (table 3.1 "w cross-entropy distill."; released code): the target is
A's softmax over background + old classes, padded with zeros for the new classes, and the loss
is the softmax cross-entropy of B's full logits against it (no temperature).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class DistillTargets:
    """One image's distillation RoIs and the teacher's responses to them.

    ``rois [M, 4]`` (xyxy, coordinates of the student's input image), ``logits [M, 1 + n_old]``,
    ``deltas [M, 4 n_old]``.
    """

    rois: Tensor
    logits: Tensor
    deltas: Tensor

    def index(self, idx: Tensor) -> "DistillTargets":
        return DistillTargets(self.rois[idx], self.logits[idx], self.deltas[idx])

    def to(self, device) -> "DistillTargets":
        return DistillTargets(self.rois.to(device), self.logits.to(device), self.deltas.to(device))


def candidate_pool(logits: Tensor, pool_size: int = 128, biased: bool = True) -> Tensor:
    """Indices of the distillation candidates: the ``pool_size`` proposals with the lowest
    teacher background probability (``biased``), or all proposals (unbiased)."""
    k = logits.shape[0]
    if not biased or k <= pool_size:
        return torch.arange(k, device=logits.device)
    bg = F.softmax(logits.float(), dim=1)[:, 0]
    return torch.topk(bg, pool_size, largest=False).indices


def sample_pool(pool_len: int, n: int, device=None, generator: Optional[torch.Generator] = None) -> Tensor:
    """``min(n, pool_len)`` distinct positions in ``range(pool_len)`` drawn uniformly."""
    perm = torch.randperm(pool_len, generator=generator)[:n]
    return perm.to(device) if device is not None else perm


def select_distillation_rois(
    logits: Tensor, n: int = 64, pool_size: int = 128, biased: bool = True, generator: Optional[torch.Generator] = None
) -> Tensor:
    """Indices (into the proposals) of the ``n`` distillation RoIs of one image."""
    pool = candidate_pool(logits, pool_size, biased)
    return pool[sample_pool(pool.numel(), n, pool.device, generator)]


def _center(x: Tensor, ref: Tensor) -> Tensor:
    return x - ref.mean(dim=1, keepdim=True)


NORMS = ("thesis", "released_code")


def l2_distillation(
    s_logits: Tensor,
    s_deltas: Tensor,
    t_logits: Tensor,
    t_deltas: Tensor,
    center: str = "old",
    box: bool = True,
    box_loss: str = "l2",
    norm: str = "thesis",
) -> Dict[str, Tensor]:
    """L2 distillation of centred logits and old-class box deltas (see module docstring).

    ``norm``: ``"thesis"`` divides each summed term by ``N |C_A|`` (eq. 3.2); ``"released_code"``
    takes the plain mean of each term (``N (1 + |C_A|)`` logits, ``4 N |C_A|`` box deltas).

    Args:
        s_logits: student logits ``[N, 1 + C]`` (C >= n_old); s_deltas: ``[N, 4 C]``.
        t_logits: teacher logits ``[N, 1 + n_old]``; t_deltas: ``[N, 4 n_old]``.
    Returns ``{"loss_distill_cls", "loss_distill_box"}`` (the box term is 0 when ``box=False``).
    """
    n_old = t_logits.shape[1] - 1
    s_logits = s_logits.float()
    t_logits = t_logits.float()
    s_old = s_logits[:, : n_old + 1]
    if center == "old":
        s_bar = _center(s_old, s_old)
    elif center == "all":
        s_bar = _center(s_old, s_logits)
    else:
        raise ValueError(f"center must be 'old' or 'all', got {center!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    t_bar = _center(t_logits, t_logits)
    if s_logits.shape[0] == 0:
        z = s_logits.sum() * 0.0 + s_deltas.sum() * 0.0
        return {"loss_distill_cls": z, "loss_distill_box": z}
    n = s_logits.shape[0]
    thesis = norm == "thesis"
    cls_sq = (s_bar - t_bar) ** 2
    cls = cls_sq.sum() / (n * n_old) if thesis else cls_sq.mean()
    if box:
        sd = s_deltas[:, : 4 * n_old].float()
        td = t_deltas.float()
        if box_loss == "l2":
            terms = (sd - td) ** 2
        elif box_loss == "smooth_l1":
            terms = F.smooth_l1_loss(sd, td, beta=1.0, reduction="none")
        else:
            raise ValueError(f"box_loss must be 'l2' or 'smooth_l1', got {box_loss!r}")
        bl = terms.sum() / (n * n_old) if thesis else terms.mean()
    else:
        bl = s_deltas.sum() * 0.0
    return {"loss_distill_cls": cls, "loss_distill_box": bl}


def ce_distillation(s_logits: Tensor, t_logits: Tensor) -> Tensor:
    """Cross-entropy distillation: ``-sum_c p_A(c) log p_B(c)`` averaged over RoIs, with
    ``p_A`` the teacher softmax over background + old classes (zero on new classes)."""
    if s_logits.shape[0] == 0:
        return s_logits.sum() * 0.0
    n = t_logits.shape[1]
    p_t = F.softmax(t_logits.float(), dim=1)
    logp_s = F.log_softmax(s_logits.float(), dim=1)[:, :n]
    return -(p_t * logp_s).sum(dim=1).mean()


def distillation_loss(
    s_logits: Tensor,
    s_deltas: Tensor,
    t_logits: Tensor,
    t_deltas: Tensor,
    kind: str = "l2",
    center: str = "old",
    box: bool = True,
    box_loss: str = "l2",
    norm: str = "thesis",
) -> Dict[str, Tensor]:
    """``kind="l2"`` (eq. 3.2) or ``"ce"`` (cross-entropy on the classes, averaged over RoIs;
    box term as for l2, with the same ``norm``)."""
    out = l2_distillation(s_logits, s_deltas, t_logits, t_deltas, center=center, box=box, box_loss=box_loss,
                          norm=norm)
    if kind == "ce":
        out["loss_distill_cls"] = ce_distillation(s_logits, t_logits)
    elif kind != "l2":
        raise ValueError(f"distillation kind must be 'l2' or 'ce', got {kind!r}")
    return out
