"""Learning rate at or past the stability edge, and a batch too small for its gradient noise.

These consume the series of the curvature and gradient-statistics instruments when a configuration runs
them (``alpha``, ``hessian_max_eigenvalue``, ``norm_test``) and stay silent otherwise.

* ``lr-past-stability-edge``:
  - sharpness: gradient descent on a quadratic diverges when lr · λ_max > 2 (with heavy-ball momentum β:
    > 2(1 + β)); Cohen et al., "Gradient Descent on Neural Networks Typically Occurs at the Edge of
    Stability" (ICLR 2021). Flagged when the median of lr · λ_max / edge over the last ``evaluations`` (5)
    values is ≥ ``edge_fraction`` (1.0). Applies to SGD only (adaptive optimizers precondition λ).
  - alpha: Cockpit's α (Schneider et al., NeurIPS 2021) places the step on the local parabola: 0 = lands in
    the minimum, 1 = lands at the same height on the other side, > 1 = the loss increases along the step.
    Flagged when the median of the last 5 values is ≥ ``alpha_limit`` (1.0).
* ``batch-too-small``: the norm test (Byrd et al., "Sample size selection in optimization methods for
  machine learning", Math. Prog. 2012; Cockpit's ``NormTest``) compares the gradient's sample variance with
  its squared norm; a value above 1 says the mini-batch gradient is dominated by noise. Flagged when the
  median of the last 5 values is above ``norm_test_limit`` (1.0).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, ClassVar

import torch

from trainspect.checks._common import ThresholdCheck, fmt, median
from trainspect.checks.base import Finding

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext
    from trainspect.engine.record import StepRecord

#: series names produced by the curvature / gradient-statistics instruments
ALPHA, SHARPNESS, NORM_TEST = "alpha", "hessian_max_eigenvalue", "norm_test"


class StabilityCheck(ThresholdCheck):
    """``lr-past-stability-edge`` and ``batch-too-small`` (when the needed series exist)."""

    name = "stability"
    deferrable = True  # reads the record and the run's structure only
    codes = ("lr-past-stability-edge", "batch-too-small")
    defaults: ClassVar[dict[str, float]] = {"evaluations": 5, "edge_fraction": 1.0, "alpha_limit": 1.0,
                                            "norm_test_limit": 1.0}

    def __init__(self, **thresholds: float):
        super().__init__(**thresholds)
        n = int(self.t["evaluations"])
        self._edge: deque[float] = deque(maxlen=n)
        self._alpha: deque[float] = deque(maxlen=n)
        self._norm: deque[float] = deque(maxlen=n)

    def observe(self, record: StepRecord, ctx: StepContext) -> list[Finding]:
        out: list[Finding] = []
        lam = record.scalars.get(SHARPNESS)
        opt = ctx.optimizer
        if lam is not None and isinstance(opt, torch.optim.SGD) and lam > 0:
            group = opt.param_groups[0]
            lr = float(group["lr"])
            beta = float(group.get("momentum", 0.0) or 0.0)
            edge = 2.0 * (1.0 + beta)
            self._edge.append(lr * lam / edge)
            if len(self._edge) == self._edge.maxlen and median(self._edge) >= self.t["edge_fraction"]:
                m = median(self._edge)
                out.append(Finding(
                    code="lr-past-stability-edge", severity="warning",
                    title=f"lr · λ_max is {fmt(m)}× the stability limit {fmt(edge)}",
                    explanation=(
                        f"With lr {fmt(lr)} and sharpness λ_max {fmt(lam)}, lr·λ_max = {fmt(lr * lam)} ≥ {fmt(edge)}: "
                        "along the sharpest direction each step overshoots the minimum, so the loss can only "
                        "stay stable by the network becoming flatter (edge of stability) or it diverges."
                    ),
                    evidence={"lr": lr, "hessian_max_eigenvalue": lam, "momentum": beta, "edge": edge,
                              "lr_times_sharpness_over_edge_median": m, "threshold": self.t["edge_fraction"]},
                    remedies=(f"Lower the learning rate below {fmt(edge / lam)} (= {fmt(edge)}/λ_max).",
                              "Add warmup, or normalisation layers that reduce sharpness."),
                    location="",
                ))
        alpha = record.scalars.get(ALPHA)
        if alpha is not None:
            self._alpha.append(alpha)
            if len(self._alpha) == self._alpha.maxlen and median(self._alpha) >= self.t["alpha_limit"]:
                out.append(Finding(
                    code="lr-past-stability-edge", severity="warning",
                    title=f"Steps overshoot the valley (Cockpit α = {fmt(median(self._alpha))})",
                    explanation=(
                        "Along the update direction the loss ends higher than the local parabola's minimum by at "
                        "least as much as it started: every step jumps over the valley."
                    ),
                    evidence={"alpha_median": median(self._alpha), "threshold": self.t["alpha_limit"]},
                    remedies=("Lower the learning rate until α settles between 0 and 1.",),
                    location="",
                ))
        nt = record.scalars.get(NORM_TEST)
        if nt is not None:
            self._norm.append(nt)
            if len(self._norm) == self._norm.maxlen and median(self._norm) > self.t["norm_test_limit"]:
                out.append(Finding(
                    code="batch-too-small", severity="info",
                    title=f"Gradient noise dominates: norm test {fmt(median(self._norm))} > 1",
                    explanation=(
                        "The variance of the per-sample gradients is larger than the squared norm of their mean "
                        "(Byrd et al. 2012 norm test): the mini-batch gradient often points the wrong way."
                    ),
                    evidence={"norm_test_median": median(self._norm), "threshold": self.t["norm_test_limit"],
                              "batch_size": ctx.batch_size},
                    remedies=(f"Increase the batch size (roughly by the norm-test factor, "
                              f"{fmt(median(self._norm))}×), or accumulate gradients over micro-batches.",
                              "Or lower the learning rate."),
                    location="",
                ))
        return out
