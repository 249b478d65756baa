"""Elastic weight consolidation (Kirkpatrick et al. 2017) for the detector (thesis table 3.2).

After a task, the diagonal empirical Fisher information ``F_i = E[(d L / d theta_i)^2]`` is
estimated from Fast R-CNN training batches of that task (the Fast R-CNN loss replaces the
log-likelihood, as in the thesis) and the weights ``theta*`` are stored. While learning later
tasks the penalty ``(strength / 2) * sum_i F_i (theta_i - theta*_i)^2`` is added to the loss.
Fishers of successive tasks are summed and ``theta*`` is the latest consolidated weights
(online EWC with gamma = 1). Parameters created later (new output chunks) are not penalised.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable

import torch
from torch import Tensor, nn


class EWC:
    def __init__(self, strength: float = 0.0):
        self.strength = float(strength)
        self.fisher: Dict[str, Tensor] = {}
        self.star: Dict[str, Tensor] = {}

    @property
    def active(self) -> bool:
        return self.strength > 0 and bool(self.fisher)

    def consolidate(self, model: nn.Module, batches: Iterable, loss_fn: Callable[[object], Tensor], max_batches: int) -> int:
        """Accumulate the Fisher of ``loss_fn(batch)`` over up to ``max_batches`` batches.

        Only parameters with ``requires_grad`` are considered. Returns the number of batches used.
        """
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        acc = {n: torch.zeros_like(p) for n, p in params.items()}
        n = 0
        for batch in batches:
            if n >= max_batches:
                break
            model.zero_grad(set_to_none=True)
            loss = loss_fn(batch)
            if not torch.isfinite(loss):
                continue
            loss.backward()
            for name, p in params.items():
                if p.grad is not None:
                    acc[name] += p.grad.detach() ** 2
            n += 1
        model.zero_grad(set_to_none=True)
        if n == 0:
            return 0
        for name, f in acc.items():
            f /= n
            self.fisher[name] = self.fisher[name] + f if name in self.fisher else f
            self.star[name] = params[name].detach().clone()
        return n

    def penalty(self, model: nn.Module) -> Tensor:
        total = None
        for name, p in model.named_parameters():
            f = self.fisher.get(name)
            if f is None or f.shape != p.shape:
                continue
            term = (f * (p - self.star[name]) ** 2).sum()
            total = term if total is None else total + term
        if total is None:
            return next(model.parameters()).sum() * 0.0
        return 0.5 * self.strength * total

    def state_dict(self) -> dict:
        return {"strength": self.strength, "fisher": dict(self.fisher), "star": dict(self.star)}

    def load_state_dict(self, state: dict, device=None) -> None:
        self.strength = float(state.get("strength", self.strength))
        self.fisher = {k: v.to(device) if device is not None else v for k, v in state.get("fisher", {}).items()}
        self.star = {k: v.to(device) if device is not None else v for k, v in state.get("star", {}).items()}
