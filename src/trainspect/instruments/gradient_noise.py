"""Gradient noise: mean GSNR (Liu et al. 2020), CABS batch size (Balles et al. 2017), evidence-based early
stopping (Mahsereci et al. 2017), from Σ_i g_i and Σ_i g_i² per coordinate (``per_sample_grads``).

Cockpit computes CABS and early stopping only for plain SGD and raises otherwise. Here:

* **early stopping** is a statistical test on the gradient distribution at θ_t (is ḡ distinguishable from
  zero given the per-sample variance?); no optimizer quantity enters it, so it is reported for every
  optimizer (whether stopping is then the right decision for, e.g., Adam is the user's call).
* **CABS** suggests B = α·tr(Σ̂)/L for SGD with learning rate α. For plain SGD (no momentum, dampening,
  weight decay or Nesterov; one learning rate) α is the optimizer's learning rate, exactly as in Cockpit.
  For every other optimizer α is the *effective* learning rate of the update actually taken,
  α_eff = −ḡᵀd/‖ḡ‖² (:func:`~trainspect.functional.batch_tests.effective_learning_rate`), which equals α for
  plain SGD; it is reported as ``cabs_effective_lr``. If α_eff ≤ 0 (the step did not go downhill along
  ḡ) the suggestion is not defined and no value is recorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from trainspect.engine.context import NotAvailable
from trainspect.engine.values import SeriesInfo
from trainspect.functional.batch_tests import (
    cabs_batch_size,
    early_stopping_criterion,
    effective_learning_rate,
    mean_gsnr,
)
from trainspect.instruments.base import Instrument

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext


def plain_sgd_learning_rate(optimizer: Any) -> float | None:
    """The learning rate if ``optimizer`` is vanilla SGD with a single learning rate, else None."""
    if type(optimizer) is not torch.optim.SGD:
        return None
    lrs = set()
    for group in optimizer.param_groups:
        if group.get("momentum", 0) or group.get("dampening", 0) or group.get("weight_decay", 0) \
                or group.get("nesterov", False) or group.get("maximize", False):
            return None
        lrs.add(float(group["lr"]))
    return lrs.pop() if len(lrs) == 1 else None


class MeanGSNR(Instrument):
    """Mean gradient signal-to-noise ratio (Liu et al. 2020; Cockpit's ``MeanGSNR``, ε = 1e-5)."""

    name = "mean_gsnr"
    requires = ("per_sample_grads",)
    per_sample_quantities = ("sum_grads", "sum_grads_squared")
    epsilon = 1e-5
    series = (
        SeriesInfo("mean_gsnr", "scalar", "mean over parameters of ḡ_d² / Var_i[g_{i,d}] (Liu et al. 2020)",
                   "larger is better generalization; ≪ 1: noise dominates", log_scale=True, group="gradients"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        s = ctx.get("per_sample_grads")
        return {"mean_gsnr": mean_gsnr(s.sum_grads, s.sum_grads_squared, s.batch_size, self.epsilon)}


class CABS(Instrument):
    """CABS suggested batch size (Balles et al. 2017, Eq. 22), for any optimizer (see module docstring)."""

    name = "cabs"
    requires = ("per_sample_grads", "update")
    after_update = True
    per_sample_quantities = ("sum_grads", "sum_grads_squared")
    series = (
        SeriesInfo("cabs_batch_size", "scalar", "CABS suggested batch size α·tr(Σ̂)/L (Balles et al. 2017)",
                   "close to the batch size used", log_scale=True, group="gradients"),
        SeriesInfo("cabs_effective_lr", "scalar", "learning rate used by CABS (SGD's, or −ḡᵀd/‖ḡ‖²)",
                   "positive", log_scale=True, group="hyperparameters"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        s = ctx.get("per_sample_grads")
        if ctx.loss is None:
            raise RuntimeError("CABS needs the mini-batch loss (pass an nn.Module loss or set step.loss)")
        lr = plain_sgd_learning_rate(ctx.optimizer)
        if lr is None:
            update = ctx.get("update")
            mean = s.mean_grads
            dot = sum((m.to(torch.float64) * u.to(torch.float64)).sum() for m, u in zip(mean, update))
            lr = effective_learning_rate(dot, s.mean_grad_sq_norms.sum())
            if not bool(lr > 0):
                raise NotAvailable("the update did not move downhill along the mean gradient: CABS is undefined")
        loss = ctx.loss.detach().to(torch.float64)
        if ctx.loss_reduction == "sum":  # CABS divides by the mean loss
            loss = loss / s.batch_size
        return {"cabs_batch_size": cabs_batch_size(s.sum_grads, s.sum_grads_squared, s.batch_size, lr, loss),
                "cabs_effective_lr": lr}


class EarlyStopping(Instrument):
    """Evidence-based early-stopping criterion (Mahsereci et al. 2017, Eq. 7 LHS; ε = 1e-5). Stop when > 0."""

    name = "early_stopping"
    requires = ("per_sample_grads",)
    per_sample_quantities = ("sum_grads", "sum_grads_squared")
    epsilon = 1e-5
    series = (
        SeriesInfo("early_stopping", "scalar", "1 − (N/D) Σ_d ḡ_d²/σ̂_d² (Mahsereci et al. 2017); > 0: stop",
                   "< 0 while still learning", group="gradients"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        s = ctx.get("per_sample_grads")
        if s.batch_size < 2:
            raise ValueError("early_stopping needs at least 2 samples per step")
        return {"early_stopping": early_stopping_criterion(s.sum_grads, s.sum_grads_squared, s.batch_size,
                                                           self.epsilon)}
