"""The training-loss curve: divergence, plateau at the start, oscillation.

All rules compare window medians (robust to single noisy mini-batches) with the loss at the start,
L₀ = median of the first ``baseline_steps`` (3) losses, so they do not depend on the loss's scale:

* ``loss-divergence``: the median of the last ``window`` (10) losses exceeds ``diverge_factor`` (1.5) × L₀
  (training made things worse than the random start: the tuning playbook's "loss goes up instead of
  down"), or it rose back to ≥ 2× the best window median seen (TheDeepChecker: recent loss ≥ 2× the
  minimum) *and* by at least half of the progress made (L₀ − best), so noise around a near-zero loss does
  not count.
* ``loss-plateau``: after ``plateau_steps`` (100) steps, the median of the last ``window`` losses is still
  above (1 − ``min_progress``) × L₀ with ``min_progress`` = 5 % (TheDeepChecker: < 5 % decrease per
  window; DeepDiagnosis: loss flat over 5 checks).
* ``loss-oscillation``: at least ``swings`` (8) of the last ``oscillation_window`` (50) steps change the loss by
  more than ``swing_size`` (0.5) × L₀, and the window's second half is no better than 0.9 × its first half
  (the loss jumps back and forth by amounts comparable to where it started, instead of settling).
  AUTOTRAINER counts accuracy swings ≥ 0.03 in ≥ 20 % of epochs; TheDeepChecker > 50 % derivative sign flips
  — on mini-batch losses sign flips are normal, so the size of the swings is what matters here.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from trainspect.checks._common import ThresholdCheck, fmt, median
from trainspect.checks.base import Finding

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext
    from trainspect.engine.record import StepRecord

LR_HIGH = (
    "Lower the learning rate (try 3–10× smaller), or add warmup.",
    "Clip the gradient norm (torch.nn.utils.clip_grad_norm_).",
    "Check that the loss is a mean over the batch (reduction='mean'), not a sum.",
)


class LossCurveCheck(ThresholdCheck):
    """``loss-divergence``, ``loss-plateau``, ``loss-oscillation`` (rules in the module docstring)."""

    name = "loss_curve"
    deferrable = True  # reads the record and the run's structure only
    codes = ("loss-divergence", "loss-plateau", "loss-oscillation")
    instruments: ClassVar[dict[str, Any]] = {"loss": 1}
    defaults: ClassVar[dict[str, float]] = {
        "baseline_steps": 3, "window": 10, "diverge_factor": 1.5, "rebound_factor": 2.0,
                "plateau_steps": 100, "min_progress": 0.05, "oscillation_window": 50, "swings": 8,
                "swing_size": 0.5,
    }

    def __init__(self, **thresholds: float):
        super().__init__(**thresholds)
        self._first: list[float] = []
        self._recent: deque[float] = deque(maxlen=int(self.t["window"]))
        self._long: deque[float] = deque(maxlen=int(self.t["oscillation_window"]) + 1)
        self._best = float("inf")
        self._steps = 0
        self._start: float | None = None  # L0, fixed once the first losses are in
        self._jumps: deque[bool] = deque(maxlen=int(self.t["oscillation_window"]))

    def observe(self, record: StepRecord, ctx: StepContext) -> list[Finding]:
        loss = record.scalars.get("loss")
        if loss is None or not math.isfinite(loss):
            return []
        self._steps += 1
        if len(self._first) < self.t["baseline_steps"]:
            self._first.append(loss)
        if self._start is None and len(self._first) >= self.t["baseline_steps"]:
            self._start = median(self._first)
        if self._long and self._start is not None:
            self._jumps.append(abs(loss - self._long[-1]) > self.t["swing_size"] * self._start)
        self._recent.append(loss)
        self._long.append(loss)
        if self._start is None or len(self._recent) < self._recent.maxlen:  # type: ignore[operator]
            return []
        start = self._start
        now = median(self._recent)
        self._best = min(self._best, now)
        out: list[Finding] = []
        if start > 0 and now > self.t["diverge_factor"] * start:
            out.append(self._divergence(now, start, f"{fmt(now / start)}× the loss at the start"))
        elif (start > self._best and now >= self.t["rebound_factor"] * self._best
              and now - self._best >= 0.5 * (start - self._best)):
            how = f"{fmt(now / self._best)}× the best loss so far ({fmt(self._best)})"
            out.append(self._divergence(now, start, how))
        if self._steps >= self.t["plateau_steps"] and start > 0 and now > (1 - self.t["min_progress"]) * start:
            out.append(Finding(
                code="loss-plateau", severity="warning",
                title=f"The loss has not improved in {self._steps} steps ({fmt(now)} vs {fmt(start)} at the start)",
                explanation=(
                    f"After {self._steps} steps the loss (median of the last {len(self._recent)}) is within "
                    f"{fmt(100 * self.t['min_progress'])} % of where it started: the model is not learning."
                ),
                evidence={"loss_start": start, "loss_now": now, "steps": self._steps,
                          "threshold": f"decrease < {self.t['min_progress']:.0%} after "
                                       f"{int(self.t['plateau_steps'])} steps"},
                remedies=(
                    "Raise the learning rate if the updates are tiny (see update-too-small); lower it if the loss "
                    "is noisy.",
                    "Look at the other findings: dead or saturated units, vanishing gradients, parameters without "
                    "gradient, probabilities fed to the loss.",
                    "Check the data: do inputs and labels match (shuffled separately)? Try to overfit one batch "
                    "(trainspect.preflight).",
                ),
                location="",
            ))
        big = sum(self._jumps)
        if len(self._jumps) == self._jumps.maxlen and start > 0 and big >= self.t["swings"]:
            arr = np.asarray(self._long)
            half = len(arr) // 2
            settling = median(arr[half:]) < 0.9 * median(arr[:half])
            if not settling:
                out.append(Finding(
                    code="loss-oscillation", severity="warning",
                    title=f"The loss oscillates: {big} jumps larger than {fmt(self.t['swing_size'] * start)} "
                          f"in {len(arr) - 1} steps",
                    explanation=(
                        f"In the last {len(arr) - 1} steps the loss changed by more than "
                        f"{fmt(self.t['swing_size'])}× its starting value {big} times without settling: the steps "
                        "overshoot the valley and bounce between its walls."
                    ),
                    evidence={"large_jumps": big, "window": len(arr) - 1,
                              "jump_threshold": self.t["swing_size"] * start, "loss_start": start,
                              "threshold": f"≥ {int(self.t['swings'])} jumps"},
                    remedies=("Lower the learning rate (or the momentum).", *LR_HIGH[1:]),
                    location="",
                ))
        return out

    def _divergence(self, now: float, start: float, how: str) -> Finding:
        return Finding(
            code="loss-divergence", severity="error",
            title=f"The loss diverges: {fmt(now)} is {how}",
            explanation=(
                f"The median loss of the last {len(self._recent)} steps is {fmt(now)}, which is {how}. Training "
                "is moving away from a solution, usually because the steps are too large."
            ),
            evidence={"loss_now": now, "loss_start": start, "best_window_median": self._best,
                      "threshold": f"> {self.t['diverge_factor']}× start, or ≥ {self.t['rebound_factor']}× best"},
            remedies=LR_HIGH, location="",
        )
