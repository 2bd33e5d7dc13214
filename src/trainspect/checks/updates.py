"""The optimizer's actual step against the weights, and parameters that never move.

* ``update-too-large`` / ``update-too-small``: the per-layer update-to-weight ratio ‖Δθ_l‖/‖θ_l‖ of the step
  the optimizer really took (Adam, weight decay, clipping included; ``instruments/basic.py``). Rule of thumb
  ≈ 1e-3 (Karpathy, CS231n "Neural Networks Part 3"; Bottou via Goodfellow et al. §11.5: ~1 %). TheDeepChecker
  flags log10 of the ratio outside [−4, −1]; the same band is the default here: a weight tensor whose
  median ratio over the last ``evaluations`` (3) measurements exceeds 1e-1 is flagged, and the model is
  flagged as too slow when the median over weight tensors is below 1e-4 while the loss is still above
  ``loss_drop`` (50 %) of its start (small steps at convergence are healthy), the gradient norm is still at
  least 10 % of its start (a dead network is the dead-unit checks' finding) and no update was too large.
* ``parameter-not-in-optimizer``: a trainable parameter that no optimizer parameter group holds.
* ``parameter-not-updated``: in the optimizer, receives gradient, but its update is exactly 0 on
  ``evaluations`` measurements in a row (learning rate 0, a frozen group, a masked update).
* ``no-gradient``: a trainable parameter whose gradient was exactly 0 (or None) on every one of the first
  ``no_gradient_steps`` (20) steps: the graph is cut before it (``.detach()``, ``torch.no_grad``,
  ``.data``, an integer cast) or it is not used in the forward.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from trainspect.checks._common import ThresholdCheck, fmt, median, param_location, weight_layers
from trainspect.checks.base import Finding

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext
    from trainspect.engine.record import StepRecord


class UpdateCheck(ThresholdCheck):
    """Update-to-weight ratio, parameters outside the optimizer, never updated, or without gradient."""

    name = "updates"
    deferrable = True  # reads the record and the run's structure only
    codes = ("update-too-large", "update-too-small", "parameter-not-in-optimizer", "parameter-not-updated",
             "no-gradient")
    instruments: ClassVar[dict[str, Any]] = {"update_to_weight": 10, "grad_norm": 1, "loss": 1}
    defaults: ClassVar[dict[str, float]] = {"ratio_high": 1e-1, "ratio_low": 1e-4, "evaluations": 3, "loss_drop": 0.5,
                "no_gradient_steps": 20, "baseline_steps": 10}

    def __init__(self, **thresholds: float):
        super().__init__(**thresholds)
        self._ratios: deque[list[float]] = deque(maxlen=int(self.t["evaluations"]))
        self._checked_optimizer = False
        self._grad_ever: np.ndarray | None = None
        self._grad_steps = 0
        self._first_losses: list[float] = []
        self._recent_losses: deque[float] = deque(maxlen=20)
        self._zero_streak: list[int] | None = None
        self._first_grads: list[float] = []
        self._recent_grads: deque[float] = deque(maxlen=10)
        self._seen_too_large = False
        self._param_norms: np.ndarray | None = None

    def observe(self, record: StepRecord, ctx: StepContext) -> list[Finding]:
        out: list[Finding] = []
        if not self._checked_optimizer:
            self._checked_optimizer = True
            out += self._optimizer_membership(ctx)
        loss = record.scalars.get("loss")
        if loss is not None and math.isfinite(loss):
            if len(self._first_losses) < self.t["baseline_steps"]:
                self._first_losses.append(loss)
            self._recent_losses.append(loss)
        gn = record.layers.get("layer_grad_norm")
        total = record.scalars.get("grad_norm")
        if total is not None and math.isfinite(total):
            if len(self._first_grads) < self.t["baseline_steps"]:
                self._first_grads.append(total)
            self._recent_grads.append(total)
        if self._grad_steps < self.t["no_gradient_steps"] and gn is not None and np.all(np.isfinite(gn)):
            self._grad_ever = (gn > 0) if self._grad_ever is None else (self._grad_ever | (gn > 0))
            self._grad_steps += 1
            if self._grad_steps == int(self.t["no_gradient_steps"]):
                out += self._no_gradient(ctx)
        pn = record.layers.get("layer_param_norm")
        if pn is not None:
            self._param_norms = pn
        ratio = record.layers.get("layer_update_to_weight")
        if ratio is not None:
            out += self._update_ratio(ratio, gn, ctx)
        return out

    def _optimizer_membership(self, ctx: StepContext) -> list[Finding]:
        opt = ctx.optimizer
        if opt is None:
            return []
        held = {id(p) for g in opt.param_groups for p in g["params"]}
        missing = [i for i, p in enumerate(ctx.params) if id(p) not in held]
        return [Finding(
            code="parameter-not-in-optimizer", severity="error",
            title=f"{ctx.param_names[i]} is trainable but not in the optimizer",
            explanation=(
                "This parameter has requires_grad=True and gets gradients, but no parameter group of the "
                f"optimizer ({type(opt).__name__}) holds it, so it never changes. Usually the optimizer was built "
                "from a sub-module's parameters, or before the layer was added or replaced."
            ),
            evidence={"parameter": ctx.param_names[i], "numel": int(ctx.params[i].numel()),
                      "optimizer_parameters": sum(len(g["params"]) for g in opt.param_groups)},
            remedies=(
                "Build the optimizer from model.parameters() after the model is complete (and after moving it "
                "to its device).",
                "If the layer is meant to be frozen, set requires_grad_(False) on it.",
            ),
            location=param_location(ctx, i),
        ) for i in missing]

    def _no_gradient(self, ctx: StepContext) -> list[Finding]:
        assert self._grad_ever is not None
        return [Finding(
            code="no-gradient", severity="error",
            title=f"{ctx.param_names[i]} received no gradient in {self._grad_steps} steps",
            explanation=(
                "Its gradient was None or exactly zero on every step so far, so it never learns. The computation "
                "graph is cut between it and the loss (a .detach(), .data, torch.no_grad(), .item()/numpy round "
                "trip, argmax or integer cast), or the module is not used in forward(), or every unit feeding it "
                "is dead."
            ),
            evidence={"steps": self._grad_steps, "gradient_norm": 0.0, "threshold": "exactly 0 on every step"},
            remedies=(
                "Find where the forward leaves autograd: search forward() for .detach(), .data, .item(), "
                ".numpy(), torch.no_grad() and in-place replacement of tensors.",
                "If the module is unused on purpose, delete it or set requires_grad_(False).",
            ),
            location=param_location(ctx, i),
        ) for i in np.flatnonzero(~self._grad_ever)]

    def _update_ratio(self, ratio: np.ndarray, gn: np.ndarray | None, ctx: StepContext) -> list[Finding]:
        # runs whenever the ratio is measured (every step with every instrument every step): plain Python floats,
        # since NumPy calls on a vector of a handful of layers cost ~5 µs each here
        out: list[Finding] = []
        ratios = ratio.tolist()
        self._ratios.append(ratios)
        # exactly-zero updates of parameters that do get gradient
        # a gradient too small to move float32 weights (vanishing) is not this fault: require ‖g‖/‖θ‖ > 1e-4
        grads = gn.tolist() if gn is not None else None
        pn = self._param_norms.tolist() if self._param_norms is not None else None
        if grads is None:
            real = [False] * len(ratios)
        elif pn is None:
            real = [g > 0 for g in grads]
        else:
            real = [g > 0 and (w == 0 or g > 1e-4 * w) for g, w in zip(grads, pn)]
        zero = [r == 0 and ok for r, ok in zip(ratios, real)]
        streak = self._zero_streak
        self._zero_streak = streak = [int(z) for z in zero] if streak is None else [
            (k + 1) * z for k, z in zip(streak, zero)]
        evaluations = int(self.t["evaluations"])
        stuck = [i for i, k in enumerate(streak) if k == evaluations]
        if stuck:
            opt = ctx.optimizer
            held = {id(p) for g in opt.param_groups for p in g["params"]} if opt is not None else set()
            for i in stuck:
                if id(ctx.params[i]) not in held:
                    continue  # reported as parameter-not-in-optimizer
                out.append(Finding(
                    code="parameter-not-updated", severity="error",
                    title=f"{ctx.param_names[i]} has a gradient but the optimizer never changes it",
                    explanation=(
                        f"On {evaluations} measurements in a row its update was exactly 0 although its "
                        "gradient was not: its parameter group has learning rate 0, or the update is masked."
                    ),
                    evidence={"update_to_weight": 0.0, "gradient_norm": grads[i] if grads is not None else None},
                    remedies=("Check the learning rate of its parameter group and the scheduler (lr 0?).",
                              "If it is meant to be frozen, set requires_grad_(False) instead."),
                    location=param_location(ctx, i),
                ))
        if len(self._ratios) < self._ratios.maxlen:  # type: ignore[operator]
            return out
        idx = weight_layers(ctx)
        if not idx:
            return out
        window = list(self._ratios)
        med = []
        for i in idx:
            col = [r[i] for r in window if math.isfinite(r[i])]
            med.append(median(col) if col else math.nan)
        hi, lo = self.t["ratio_high"], self.t["ratio_low"]
        for k, i in enumerate(idx):
            if math.isfinite(med[k]) and med[k] > hi:
                self._seen_too_large = True
                out.append(Finding(
                    code="update-too-large", severity="warning",
                    title=f"Updates of {ctx.param_names[i]} are {fmt(med[k])} of its weights per step",
                    explanation=(
                        f"Each optimizer step changes this weight by {fmt(100 * med[k])} % of its norm (median of "
                        f"the last {len(self._ratios)} measurements); around 0.1 % is typical. Steps this large "
                        "make training noisy or unstable and can kill ReLU units."
                    ),
                    evidence={"update_to_weight_median": float(med[k]), "threshold": hi, "target": 1e-3,
                              "measurements": len(self._ratios)},
                    remedies=("Lower the learning rate (by about the factor the ratio exceeds 1e-3).",
                              "Add warmup or gradient clipping."),
                    location=param_location(ctx, i),
                ))
        finite_med = [m for m in med if math.isfinite(m)]
        overall = median(finite_med) if finite_med else math.nan
        if math.isfinite(overall) and overall < lo and self._first_losses and self._recent_losses:
            start = median(self._first_losses)
            now = median(self._recent_losses)
            # small steps because the gradient died (dead units, vanishing) or after steps so large that they
            # broke the network are not a learning rate that is too small
            grads_alive = (not self._first_grads or not self._recent_grads
                           or median(self._recent_grads) >= 0.1 * median(self._first_grads))
            if start > 0 and now > self.t["loss_drop"] * start and grads_alive and not self._seen_too_large:
                out.append(Finding(
                    code="update-too-small", severity="warning",
                    title=f"Updates are only {fmt(overall)} of the weights per step while the loss is still high",
                    explanation=(
                        f"The median weight tensor moves by {fmt(overall)} of its norm per step (about 1e-3 is "
                        f"typical) and the loss is still {fmt(now)} against {fmt(start)} at the start: at this pace "
                        "training will take orders of magnitude longer than it should."
                    ),
                    evidence={"update_to_weight_median": overall, "threshold": lo, "target": 1e-3,
                              "loss_start": start, "loss_now": now,
                              "per_layer": {ctx.param_names[i]: float(m) for i, m in zip(idx, med)}},
                    remedies=("Raise the learning rate (try 10× steps; Adam 1e-3, SGD 0.01–0.1 are common).",
                              "Check that the scheduler did not decay it to ~0, and that the loss is a mean, not "
                              "divided twice."),
                    location="",
                ))
        return out
