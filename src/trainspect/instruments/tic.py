"""The Takeuchi information criterion (TIC), Cockpit's ``TICDiag`` and ``TICTrace`` (cockpit.md §1.18).

Thomas et al. (2020) revived the TIC, tr(H⁻¹C) with C the (uncentered) second moment of the per-sample
gradients, as an estimate of the generalization gap near a local minimum; Cockpit approximates H by its
diagonal (``tic_diag``) or by its trace (``tic_trace``). Here M_d = (1/N) Σ_i g_{i,d}² comes from the
shared per-sample gradient pass (``per_sample_grads``) and diag(H) from the shared Hessian operator
(``hessian_diagonal``: exact Hessian diagonal for small models, exact GGN diagonal for larger ones).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from trainspect.engine.values import SeriesInfo
from trainspect.functional.diagonal import tic_diag, tic_trace
from trainspect.instruments.base import Instrument
from trainspect.instruments.curvature import CURVATURE_SCHEDULE

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext


def _second_moment(ctx: StepContext) -> list:
    stats = ctx.get("per_sample_grads")
    if stats.sum_grads_squared is None:  # pragma: no cover - the provider honours per_sample_quantities
        raise RuntimeError("per_sample_grads did not compute Σ_i g_i² (sum_grads_squared)")
    return [s / stats.batch_size for s in stats.sum_grads_squared]


class TICDiag(Instrument):
    """TICDiag = Σ_d M_d / (diag(H)_d + ε), M_d = (1/N) Σ_i g_{i,d}² (Cockpit's definition, ε = 1e-7)."""

    name = "tic_diag"
    requires = ("per_sample_grads", "hessian_diagonal")
    per_sample_quantities = ("sum_grads_squared",)
    default_schedule = CURVATURE_SCHEDULE
    epsilon: ClassVar[float] = 1e-7
    series = (
        SeriesInfo("tic_diag", "scalar", "Takeuchi information criterion, diagonal form Σ M_d/(H_dd + ε)",
                   "at a minimum: an estimate of the generalization gap (× N)", log_scale=True, group="curvature"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        diag = ctx.get("hessian_diagonal").diagonal
        return {"tic_diag": tic_diag(_second_moment(ctx), diag, self.epsilon)}


class TICTrace(Instrument):
    """TICTrace = Σ_d M_d / (Σ_d diag(H)_d + ε) (Cockpit's definition, ε = 1e-7)."""

    name = "tic_trace"
    requires = ("per_sample_grads", "hessian_diagonal")
    per_sample_quantities = ("sum_grads_squared",)
    default_schedule = CURVATURE_SCHEDULE
    epsilon: ClassVar[float] = 1e-7
    series = (
        SeriesInfo("tic_trace", "scalar", "Takeuchi information criterion, trace form Σ M_d / tr(H)",
                   "at a minimum: an estimate of the generalization gap (× N)", log_scale=True, group="curvature"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        diag = ctx.get("hessian_diagonal").diagonal
        return {"tic_trace": tic_trace(_second_moment(ctx), diag, self.epsilon)}
