"""Gradient tests: how far individual gradients scatter around the mini-batch gradient (Cockpit's
``NormTest``, ``InnerTest``, ``OrthoTest``).

All three come from the same per-sample statistics (``per_sample_grads``), computed once per step.
Formulas and papers: :mod:`trainspect.functional.batch_tests`. Large values mean the mini-batch gradient
is noisy relative to its size (grow the batch, or lower the learning rate); values ≲ 1 are the usual
thresholds of the adaptive-batch-size methods these tests come from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainspect.engine.values import SeriesInfo, to_numpy
from trainspect.functional.batch_tests import inner_product_test, norm_test, orthogonality_test
from trainspect.instruments.base import Instrument

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext


def _need_two(n: int, name: str) -> None:
    if n < 2:
        raise ValueError(f"{name} needs at least 2 samples per step (sample variance), got a batch of {n}")


class NormTest(Instrument):
    """Norm test θ (Byrd et al. 2012, Eq. 3.9), over all parameters and per parameter tensor:
    θ = √( (Σ_i‖g_i‖² − N‖ḡ‖²) / ((N−1)·N·‖ḡ‖²) )."""

    name = "norm_test"
    requires = ("per_sample_grads",)
    series = (
        SeriesInfo("norm_test", "scalar", "norm test θ: per-sample gradient spread / ‖ḡ‖ (Byrd et al. 2012)",
                   "≲ 1 (larger: increase the batch size)", log_scale=True, group="gradients"),
        SeriesInfo("layer_norm_test", "layers", "norm test θ per parameter tensor", "≲ 1",
                   log_scale=True, group="gradients"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        stats = ctx.get("per_sample_grads")
        n = stats.batch_size
        _need_two(n, self.name)
        # NumPy float64 views of the statistics: the tests are a few operations on P numbers each
        sq, g2 = to_numpy(stats.sum_sq_norms), to_numpy(stats.mean_grad_sq_norms)
        return {
            "norm_test": norm_test(float(sq.sum()), float(g2.sum()), n),
            "layer_norm_test": norm_test(sq, g2, n),
        }


class InnerTest(Instrument):
    """Inner-product test (Bollapragada et al. 2017, Eq. 2.6): spread of g_iᵀḡ relative to ‖ḡ‖²."""

    name = "inner_test"
    requires = ("per_sample_grads",)
    per_sample_quantities = ("proj_mean",)
    series = (
        SeriesInfo("inner_test", "scalar", "inner-product test θ (Bollapragada et al. 2017)",
                   "≲ 1 (larger: increase the batch size)", log_scale=True, group="gradients"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        stats = ctx.get("per_sample_grads")
        _need_two(stats.batch_size, self.name)
        return {"inner_test": inner_product_test(float(to_numpy(stats.sum_proj_mean_total_sq)),
                                                 float(to_numpy(stats.mean_grad_sq_norms).sum()), stats.batch_size)}


class OrthoTest(Instrument):
    """Orthogonality test ν (Bollapragada et al. 2017, Eq. 3.3): spread of g_i orthogonal to ḡ."""

    name = "ortho_test"
    requires = ("per_sample_grads",)
    per_sample_quantities = ("proj_mean",)
    series = (
        SeriesInfo("ortho_test", "scalar", "orthogonality test ν (Bollapragada et al. 2017)",
                   "≲ 1 (larger: gradient directions disagree)", log_scale=True, group="gradients"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        stats = ctx.get("per_sample_grads")
        _need_two(stats.batch_size, self.name)
        value = orthogonality_test(float(to_numpy(stats.sum_sq_norms).sum()),
                                   float(to_numpy(stats.sum_proj_mean_total_sq)),
                                   float(to_numpy(stats.mean_grad_sq_norms).sum()), stats.batch_size)
        return {"ortho_test": 0.0 if value < 0 else value}  # (NaN stays NaN)
