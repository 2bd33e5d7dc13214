"""Dead rectifier units and saturated sigmoid/tanh units, from forward-hook statistics on a schedule.

Rules (per activation module, or per call ``name#k`` of a module reused across layers):

* a unit (feature / channel) is **dead** on a batch if it is active (x > 0) on fewer than 1 % of the batch's
  entries (SageMaker Debugger ``dead_relu``: active < 1 %; TheDeepChecker: 95th percentile of |a| < 1e-5);
  a layer is flagged (``dead-relu``) if more than ``dead_fraction`` (50 %, SMD and TheDeepChecker) of its units
  are dead on each of the last ``evaluations`` (3) evaluations — the *same* units, so units that merely did
  not fire on one batch do not count;
* a unit is **saturated** on a batch if its pre-activation is in the flat region (derivative < 1 % of its
  maximum: |x| > 3 for tanh, |x| > 6 for sigmoid; DeepDiagnosis uses |x| ≥ 5) on at least 90 % of the
  entries; a layer is flagged (``saturated-activations``) if more than ``saturated_fraction`` (50 %,
  TheDeepChecker and SMD) of its units are saturated on each of the last 3 evaluations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from trainspect.checks._common import ThresholdCheck, fmt
from trainspect.checks.base import Finding

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext
    from trainspect.engine.record import StepRecord

DEAD_REMEDIES = (
    "Lower the learning rate: one large step can push a unit's bias so negative that it never fires again.",
    "Initialise with He (kaiming) init and zero or small positive biases, not large negative ones.",
    "Use LeakyReLU/GELU/ELU, which keep a gradient for negative inputs.",
    "Add normalisation (BatchNorm/LayerNorm) before the activation so pre-activations stay centred.",
)
SATURATION_REMEDIES = (
    "Initialise with Xavier/Glorot (tanh, sigmoid) so pre-activations start near 0, not with large weights.",
    "Normalise the inputs (zero mean, unit variance) and add BatchNorm/LayerNorm before the activation.",
    "Lower the learning rate; use ReLU-family activations in hidden layers.",
)


class ActivationHealthCheck(ThresholdCheck):
    """``dead-relu`` and ``saturated-activations`` (rules in the module docstring)."""

    name = "activation_health"
    codes = ("dead-relu", "saturated-activations")
    instruments: ClassVar[dict[str, Any]] = {"activations": 10}
    deferrable = True  # reads the per-unit verdicts the activations instrument leaves in the step's extras
    defaults: ClassVar[dict[str, float]] = {"dead_fraction": 0.5, "saturated_fraction": 0.5, "evaluations": 3}

    def __init__(self, **thresholds: float):
        super().__init__(**thresholds)
        self._masks: dict[str, tuple[torch.Tensor, int]] = {}  # module -> (units bad on every evaluation, streak)

    def observe(self, record: StepRecord, ctx: StepContext) -> list[Finding]:
        units = ctx.extras.get("activation_units")
        if not units:
            return []
        out: list[Finding] = []
        for s in units:
            bad = s.bad
            prev = self._masks.get(s.module)
            if prev is not None and prev[0].shape == bad.shape:
                mask, streak = prev[0] & bad, prev[1] + 1
            else:
                mask, streak = bad, 1
            self._masks[s.module] = (mask, streak)
            limit = self.t["dead_fraction"] if s.kind == "rectifier" else self.t["saturated_fraction"]
            share = float(mask.double().mean()) if mask.numel() else 0.0
            if streak < self.t["evaluations"] or share <= limit:
                continue
            where = f"{s.module} ({s.module_class})"
            n_units = mask.numel()
            if s.kind == "rectifier":
                out.append(Finding(
                    code="dead-relu", severity="warning",
                    title=f"{100 * share:.0f}% of the units after {where} are dead",
                    explanation=(
                        f"{int(mask.sum())} of {n_units} units were active on fewer than 1 % of the inputs on "
                        f"each of the last {streak} checks. A dead ReLU outputs 0 and gets no gradient, so it "
                        "cannot recover: the layer has lost that much capacity."
                    ),
                    evidence={"dead_units": int(mask.sum()), "units": n_units, "dead_share": share,
                              "threshold": f"> {fmt(limit)} of units active on < 1 % of entries",
                              "evaluations": streak},
                    remedies=DEAD_REMEDIES, location=where,
                ))
            else:
                out.append(Finding(
                    code="saturated-activations", severity="warning",
                    title=f"{100 * share:.0f}% of the units of {where} are saturated",
                    explanation=(
                        f"{int(mask.sum())} of {n_units} units had |pre-activation| > {fmt(s.threshold or 0)} "
                        f"on ≥ 90 % of the inputs on each of the last {streak} checks: there the derivative is "
                        "below 1 % of its maximum, so almost no gradient passes and the units stop learning."
                    ),
                    evidence={"saturated_units": int(mask.sum()), "units": n_units, "saturated_share": share,
                              "abs_preactivation_threshold": s.threshold,
                              "threshold": f"> {fmt(limit)} of units saturated on ≥ 90 % of entries",
                              "evaluations": streak},
                    remedies=SATURATION_REMEDIES, location=where,
                ))
        return out
