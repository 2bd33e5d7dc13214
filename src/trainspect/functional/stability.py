"""Sharpness versus the stability limit of the optimizer (the "edge of stability").

On a quadratic with curvature λ, gradient descent with learning rate η is stable iff ηλ < 2. Cohen et al.
(2021, "Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability", ICLR) showed that
full-batch training drives the sharpness λ_max(H) up to 2/η and then hovers there; mini-batch SGD
saturates below it. The stability limits of the optimizers' linear iterations (Cohen et al. 2021 §B):

* SGD: ηλ < 2;
* heavy-ball momentum β (PyTorch ``SGD(momentum=β)``): ηλ < 2 + 2β;
* Nesterov momentum β: ηλ < (2 + 2β) / (1 + 2β).

For Adam, Cohen et al. (2022, "Adaptive Gradient Methods at the Edge of Stability") use the
*preconditioned sharpness* λ_max(P⁻¹H) with P = (1 − β₁^t) · diag(√v̂_t + ε), v̂_t = v_t/(1 − β₂^t),
which equilibrates at (2 + 2β₁) / ((1 − β₁) η) — 38/η for β₁ = 0.9. Both cases are one statement about
the effective step matrix M (M = ηI for SGD, M = ηP⁻¹ for Adam): the iteration is stable while
λ_max(M^{1/2} H M^{1/2}) < c, with c the threshold above. :func:`effective_step_scale` gives M (per
coordinate, one tensor per parameter, using each parameter's group's hyper-parameters) and c; the
*stability ratio* λ_max(M^{1/2} H M^{1/2}) / c is ≥ 1 at the edge of stability.

Weight decay coupled into the gradient (SGD, Adam) adds wd·I to the Hessian of the optimized objective;
AdamW's decoupled decay is a separate contraction and is ignored here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def sgd_stability_threshold(momentum: float = 0.0, nesterov: bool = False) -> float:
    """Largest stable ηλ for SGD on a quadratic: 2, 2 + 2β (heavy ball), (2 + 2β)/(1 + 2β) (Nesterov)."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"sgd_stability_threshold: momentum must lie in [0, 1), got {momentum!r}")
    if nesterov:
        return (2.0 + 2.0 * momentum) / (1.0 + 2.0 * momentum)
    return 2.0 + 2.0 * momentum


def adam_stability_threshold(beta1: float = 0.9) -> float:
    """Largest stable η·λ_max(P⁻¹H) for Adam with a frozen preconditioner: (2 + 2β₁)/(1 − β₁)."""
    if not 0.0 <= beta1 < 1.0:
        raise ValueError(f"adam_stability_threshold: beta1 must lie in [0, 1), got {beta1!r}")
    return (2.0 + 2.0 * beta1) / (1.0 - beta1)


@dataclass
class StepScale:
    """The effective step matrix M = diag(scale) and the stability threshold c of an optimizer.

    Attributes:
        scale: per-coordinate step size, one tensor per parameter (M = ηI for SGD, ηP⁻¹ for Adam).
        threshold: c, the largest stable λ_max(M^{1/2} H M^{1/2}) (assuming one β for all groups).
        weight_decay: per-parameter coupled weight decay (added to H), or None if all zero.
        kind: ``"sgd"`` or ``"adam"``.
        uniform_lr: the single learning rate if M = ηI (SGD with one lr everywhere), else None.
    """

    scale: list[torch.Tensor]
    threshold: float
    weight_decay: list[float] | None
    kind: str
    uniform_lr: float | None


def _group_of(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> list[dict]:
    where = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    groups = []
    for i, p in enumerate(params):
        if id(p) not in where:
            raise ValueError(
                f"sharpness: tracked parameter {i} (shape {tuple(p.shape)}) is not in any parameter group of "
                f"the optimizer {type(optimizer).__name__}; the stability limit is defined for the parameters "
                "it updates"
            )
        groups.append(where[id(p)])
    return groups


def _lr(group: dict) -> float:
    lr = group["lr"]
    return float(lr.item() if isinstance(lr, torch.Tensor) else lr)


def effective_step_scale(
    optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]
) -> StepScale:
    """M and c for the optimizer's *next* step (called before ``optimizer.step()``).

    For Adam/AdamW the second-moment estimate is advanced with the current gradient (v_t = β₂ v_{t−1} +
    (1 − β₂) g_t², step t = state step + 1), exactly as the coming step will do, so P is the
    preconditioner of the update about to be taken. AMSGrad uses max(v_max, v_t).

    Raises:
        TypeError: for optimizers other than SGD, Adam, AdamW (the message names the optimizer).
    """
    groups = _group_of(optimizer, params)
    if isinstance(optimizer, torch.optim.SGD):
        moms = {float(g.get("momentum", 0.0)) for g in groups}
        nest = {bool(g.get("nesterov", False)) for g in groups}
        if len(moms) > 1 or len(nest) > 1:
            raise ValueError("sharpness: parameter groups with different momentum have no single stability limit")
        momentum = moms.pop()
        # dampening τ scales the gradient by (1 − τ) in the momentum buffer: the same as learning rate η(1 − τ)
        threshold = sgd_stability_threshold(momentum, nest.pop())
        lrs = [_lr(g) * ((1.0 - float(g.get("dampening", 0.0))) if momentum else 1.0) for g in groups]
        scale = [torch.full_like(p, lr, dtype=torch.float64) for p, lr in zip(params, lrs)]
        wds = [float(g.get("weight_decay", 0.0)) for g in groups]
        uniform = lrs[0] if len(set(lrs)) == 1 else None
        return StepScale(scale, threshold, wds if any(wds) else None, "sgd", uniform)
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        beta1s = {float(g["betas"][0]) for g in groups}
        if len(beta1s) > 1:
            raise ValueError("sharpness: parameter groups with different beta1 have no single stability limit")
        scale = []
        wds = []
        for p, g, grad in zip(params, groups, grads):
            beta1, beta2 = (float(b) for b in g["betas"])
            eps = float(g["eps"])
            state = optimizer.state.get(p, {})
            step = int(float(state["step"])) + 1 if "step" in state else 1
            v_prev = state.get("exp_avg_sq")
            g64 = grad.detach().to(torch.float64)
            if g.get("maximize", False):
                g64 = -g64
            wd = float(g.get("weight_decay", 0.0))
            decoupled = isinstance(optimizer, torch.optim.AdamW) or bool(g.get("decoupled_weight_decay", False))
            if wd and not decoupled:
                g64 = g64 + wd * p.detach().to(torch.float64)
            v = (1 - beta2) * g64.square()
            if v_prev is not None:
                v = v + beta2 * v_prev.detach().to(torch.float64)
            if g.get("amsgrad", False) and state.get("max_exp_avg_sq") is not None:
                v = torch.maximum(v, state["max_exp_avg_sq"].detach().to(torch.float64))
            v_hat = v / (1 - beta2**step)
            precond = (1 - beta1**step) * (v_hat.sqrt() + eps)
            scale.append(_lr(g) / precond)
            wds.append(0.0 if decoupled else wd)
        return StepScale(scale, adam_stability_threshold(beta1s.pop()), wds if any(wds) else None, "adam", None)
    raise TypeError(
        f"sharpness: the stability limit is implemented for torch.optim.SGD, Adam and AdamW, not "
        f"{type(optimizer).__name__}; use the hessian_max_eigenvalue instrument for the raw sharpness"
    )
