"""Gradients that accumulate across steps: the loop forgot ``optimizer.zero_grad()``.

``p.grad`` is added to by every ``backward()``. If it still holds the previous step's gradient when the
next backward runs (same tensor object, non-zero, and an optimizer step happened in between), the
optimizer sees the running sum of all gradients so far: the effective step grows linearly with time.
Intentional accumulation over micro-batches (``optimizer.step()`` every k steps) is not flagged, because no
optimizer step happened in between.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from trainspect.checks._common import ThresholdCheck, fmt
from trainspect.checks.base import Finding

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext
    from trainspect.engine.record import StepRecord


class GradientAccumulationCheck(ThresholdCheck):
    """``gradient-accumulation``: a non-zero ``.grad`` at the start of a step that follows an optimizer step,
    on ``consecutive`` steps in a row (default 2)."""

    name = "gradient_accumulation"
    deferrable = True  # reads the record and the run's structure only
    codes = ("gradient-accumulation",)
    instruments: ClassVar[dict[str, Any]] = {"grad_at_step_start": 1}
    defaults: ClassVar[dict[str, float]] = {"consecutive": 2}

    def __init__(self, **thresholds: float):
        super().__init__(**thresholds)
        self._prev_stepped = False
        self._prev_grad_norm: float | None = None
        self._streak = 0

    def observe(self, record: StepRecord, ctx: StepContext) -> list[Finding]:
        start = record.scalars.get("grad_norm_at_step_start")
        out: list[Finding] = []
        if start is not None and start > 0 and self._prev_stepped:
            self._streak += 1
            if self._streak >= self.t["consecutive"]:
                prev = self._prev_grad_norm
                out.append(Finding(
                    code="gradient-accumulation", severity="error",
                    title="Gradients accumulate across steps: optimizer.zero_grad() is missing",
                    explanation=(
                        "When this step's backward began, the parameters' .grad still held the previous "
                        "gradient, although optimizer.step() had run in between. Every update therefore uses "
                        "the sum of all gradients so far, so steps grow and training goes unstable."
                    ),
                    evidence={"grad_norm_at_step_start": start, "previous_step_grad_norm": prev,
                              "ratio": (start / prev) if prev else None,
                              "consecutive_steps": self._streak, "threshold": "> 0 after an optimizer step"},
                    remedies=(
                        "Call optimizer.zero_grad() (or model.zero_grad()) once per step, before backward().",
                        "If you accumulate on purpose, call optimizer.step() and zero_grad() together every "
                        "k micro-batches.",
                    ),
                    location="",
                ))
                if prev:
                    out[-1].title += f" (‖grad‖ at step start {fmt(start)} = {fmt(start / prev)}× the last one)"
        else:
            self._streak = 0
        self._prev_stepped = record.optimizer_stepped
        self._prev_grad_norm = record.scalars.get("grad_norm", self._prev_grad_norm)
        return out
