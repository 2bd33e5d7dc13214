"""Mixed precision: the GradScaler's loss scale and the steps it skipped.

A ``torch.amp.GradScaler`` multiplies the loss by a scale S before backward, divides the gradients by S
before the optimizer step, and *skips* the step when a gradient is inf/NaN (then lowers S). A run whose
steps are often skipped is not training; a scale that keeps falling points to a real overflow. Values
exist only when ``trainspect.attach(..., grad_scaler=scaler)`` was given an enabled scaler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainspect.engine.values import SeriesInfo
from trainspect.instruments.base import Instrument

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext


class MixedPrecision(Instrument):
    """The loss scale S of the step and whether the scaler skipped it (1) or not (0)."""

    name = "amp"
    local_only = True
    after_update = True
    series = (
        SeriesInfo("loss_scale", "scalar", "GradScaler loss scale S used by this step's backward",
                   "stable or growing", log_scale=True, group="health"),
        SeriesInfo("amp_step_skipped", "scalar", "1 if the GradScaler skipped the optimizer step (inf/NaN grads)",
                   "0 (rare 1s while the scale settles)", group="health"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        if ctx.amp is None:
            return {}
        return {"loss_scale": ctx.amp["loss_scale"], "amp_step_skipped": float(ctx.amp["skipped"])}
