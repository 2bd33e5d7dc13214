"""Curvature instruments: Hessian spectrum edges, trace, sharpness vs. stability, 1-D loss slices.

All of them use the step's shared Hessian operator (``providers/hvp.py``): one forward and one backward with
a stored graph per step, then one extra backward per Hessian-vector product. They are the expensive
instruments (tens of products each), so their default schedule is logarithmic in the step (dense early,
sparse later) plus a regular interval.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from trainspect.engine.context import NotAvailable, ProviderError
from trainspect.engine.schedules import Schedule, every, logarithmic
from trainspect.engine.values import Curve, SeriesInfo
from trainspect.functional.hvp import flatten
from trainspect.functional.lanczos import lanczos_extreme_eigenvalues
from trainspect.functional.loss_slice import filter_normalized_direction, loss_along_direction
from trainspect.functional.stability import effective_step_scale
from trainspect.functional.trace import exact_diagonal, hutchpp_layer_traces
from trainspect.instruments.base import Instrument
from trainspect.providers.hvp import HessianExtremeEigenvalues, basis_dtype, curvature_data

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext

#: default schedule of the curvature instruments: ~10 per decade of steps, and every 250 steps
CURVATURE_SCHEDULE: Schedule = logarithmic(per_decade=10) | every(250)


class HessianMaxEigenvalue(Instrument):
    """λ_max(H) of the mini-batch loss Hessian by Lanczos (Cockpit's ``HessMaxEV``, which uses power iteration).

    Lanczos with full reorthogonalization and a relative-accuracy stop (``rtol`` 1e-3 by default, see
    :class:`~trainspect.providers.hvp.HessianExtremeEigenvalues`); it returns the largest *algebraic*
    eigenvalue, where power iteration returns the largest in magnitude. Series: the value, the number of
    Hessian-vector products used, and the a-posteriori error estimate.
    """

    name = "hessian_max_eigenvalue"
    requires = ("hessian_extreme_eigenvalues",)
    default_schedule = CURVATURE_SCHEDULE
    series = (
        SeriesInfo("hessian_max_eigenvalue", "scalar", "λ_max of the mini-batch loss Hessian (sharpness)",
                   "rises early, then stabilizes; at most 2/lr for SGD", log_scale=True, group="curvature"),
        SeriesInfo("hessian_max_eigenvalue_products", "scalar", "Hessian-vector products used by Lanczos",
                   "well below the budget (100)", group="curvature"),
        SeriesInfo("hessian_max_eigenvalue_error", "scalar", "a-posteriori error estimate of λ_max",
                   "below 1e-3 · λ_max", log_scale=True, group="curvature"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        res = ctx.get("hessian_extreme_eigenvalues")
        return {
            "hessian_max_eigenvalue": res.largest,
            "hessian_max_eigenvalue_products": res.num_matvecs,
            "hessian_max_eigenvalue_error": res.error_bound_largest,
        }


class HessianMinEigenvalue(Instrument):
    """λ_min(H), the most negative Hessian eigenvalue, from the same Lanczos run as λ_max.

    Negative curvature is a phase signal: large early in training, shrinking as training settles into a
    basin (Ghorbani, Krishnan & Xiao 2019; Sagun et al. 2017). Also reports −λ_min/λ_max (0 if λ_min ≥ 0),
    the relative size of the negative part of the spectrum.
    """

    name = "hessian_min_eigenvalue"
    requires = ("hessian_extreme_eigenvalues",)
    default_schedule = CURVATURE_SCHEDULE
    series = (
        SeriesInfo("hessian_min_eigenvalue", "scalar", "λ_min of the mini-batch loss Hessian",
                   "negative early, tending to a small negative value or 0", group="curvature"),
        SeriesInfo("hessian_min_eigenvalue_products", "scalar", "Hessian-vector products used by Lanczos",
                   "well below the budget (100)", group="curvature"),
        SeriesInfo("hessian_negative_curvature_ratio", "scalar", "max(0, −λ_min) / λ_max",
                   "shrinks during training", unit="ratio", group="curvature"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        res = ctx.get("hessian_extreme_eigenvalues")
        out: dict[str, Any] = {
            "hessian_min_eigenvalue": res.smallest,
            "hessian_min_eigenvalue_products": res.num_matvecs,
        }
        if res.converged_largest and res.largest > 0:
            out["hessian_negative_curvature_ratio"] = max(0.0, -res.smallest) / res.largest
        return out


class HessianTrace(Instrument):
    """tr(H) by Hutch++ with its standard error, and per-parameter-tensor traces tr(H_ll).

    Cockpit's ``HessTrace`` computes the exact diagonal with BackPACK (Linear/Conv with MSE/cross-entropy
    only); here any twice-differentiable model works. Per block: the diagonal of the deflated part is exact
    and the residual is estimated by the diagonal Hutchinson estimator (``hutchpp_layer_traces``).
    Exact where affordable: if the model has at most ``exact_max_dim`` parameters (default 90, 3 × the
    Hutch++ budget), or if a TIC instrument is due and has computed the exact diagonal anyway (shared
    ``hessian_diagonal`` provider), the trace is exact (standard error 0); otherwise the smallest
    parameter tensors (biases) are exact up to ``exact_budget`` extra products.

    Class attributes: ``num_matvecs`` (Hutch++ products, 30), ``exact_budget`` (30), ``exact_max_dim`` (90).
    """

    name = "hessian_trace"
    requires = ("hessian_operator",)
    default_schedule = CURVATURE_SCHEDULE
    num_matvecs: ClassVar[int] = 30
    exact_budget: ClassVar[int] = 30
    exact_max_dim: ClassVar[int] = 90
    series = (
        SeriesInfo("hessian_trace", "scalar", "tr(H), the summed curvature of the mini-batch loss",
                   "positive, stabilizing", group="curvature"),
        SeriesInfo("hessian_trace_standard_error", "scalar", "standard error of the tr(H) estimate",
                   "small relative to tr(H)", group="curvature"),
        SeriesInfo("layer_hessian_trace", "layers", "tr(H_ll) per parameter tensor (diagonal blocks)",
                   "positive", group="curvature"),
        SeriesInfo("hessian_trace_products", "scalar", "Hessian-vector products used", "", group="curvature"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        op = ctx.get("hessian_operator")
        sizes = [p.numel() for p in ctx.params]
        if op.dim <= self.exact_max_dim:
            exact = list(range(len(sizes)))
            num = 4
        else:
            exact, spent = [], 0
            for i in sorted(range(len(sizes)), key=lambda i: sizes[i]):
                if spent + sizes[i] > self.exact_budget:
                    break
                exact.append(i)
                spent += sizes[i]
            num = self.num_matvecs
        dtype = basis_dtype(op.dim, op.dtype)
        shared = None
        if "hessian_diagonal" in ctx.needed_providers:  # TIC is due too: reuse its exact diagonal if it has one
            try:
                shared = ctx.get("hessian_diagonal")
            except ProviderError:
                shared = None
        if shared is not None and shared.kind == "hessian":
            scale = float(curvature_data(ctx)[2] or 1) if ctx.loss_reduction == "sum" else 1.0  # undo its 1/N
            diag = torch.cat([d.reshape(-1) for d in shared.diagonal]) * scale
        elif len(exact) == len(sizes):
            diag = exact_diagonal(op.matmat, op.dim, dtype=dtype, device=op.device)
        else:
            diag = None
        if diag is not None:
            layers = torch.stack([b.sum() for b in torch.split(diag, sizes)]).to(torch.float64).cpu()
            return {"hessian_trace": layers.sum(), "hessian_trace_standard_error": 0.0,
                    "layer_hessian_trace": layers, "hessian_trace_products": op.dim}
        res = hutchpp_layer_traces(op.matmat, sizes, num, seed=ctx.step, exact_layers=exact, dtype=dtype,
                                   device=op.device)
        return {
            "hessian_trace": res.total.value,
            "hessian_trace_standard_error": res.total.standard_error,
            "layer_hessian_trace": res.values,
            "hessian_trace_products": res.total.num_matvecs,
        }


class Sharpness(Instrument):
    """Sharpness versus the optimizer's stability limit (edge of stability; Cohen et al. 2021, 2022).

    ``sharpness_lr`` is λ_max(M^{1/2} H M^{1/2}) with M the effective step matrix: η·λ_max(H) for SGD with
    one learning rate (from the shared Lanczos run), and the preconditioned sharpness η·λ_max(P⁻¹H) for
    Adam/AdamW (its own Lanczos run). ``stability_threshold`` is the limit c of the optimizer (2 for SGD,
    2 + 2β with momentum β, (2 + 2β)/(1 + 2β) with Nesterov, (2 + 2β₁)/(1 − β₁) = 38 for Adam with
    β₁ = 0.9), and ``stability_ratio`` = sharpness_lr / c: 1 means the learning rate is at the stability
    limit of the local quadratic model; above 1, the step overshoots along the sharpest direction.
    See :mod:`trainspect.functional.stability`.
    """

    name = "sharpness"
    requires = ("hessian_extreme_eigenvalues", "hessian_operator", "grads")
    default_schedule = CURVATURE_SCHEDULE
    series = (
        SeriesInfo("sharpness_lr", "scalar", "η·λ_max(H) (SGD) or η·λ_max(P⁻¹H) (Adam): sharpness × step size",
                   "below the stability threshold", log_scale=True, group="step_size"),
        SeriesInfo("stability_threshold", "scalar", "the optimizer's stability limit for sharpness_lr",
                   "constant", group="step_size"),
        SeriesInfo("stability_ratio", "scalar", "sharpness_lr / stability_threshold (edge of stability at 1)",
                   "below 1; hovering at 1 = edge of stability", unit="ratio", group="step_size"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        if ctx.optimizer is None:
            raise RuntimeError("sharpness needs the optimizer: pass it to trainspect.attach(model, optimizer, ...)")
        scale = effective_step_scale(ctx.optimizer, ctx.params, ctx.get("grads"))
        wd = scale.weight_decay
        if scale.uniform_lr is not None and (wd is None or len(set(wd)) == 1):
            # M = ηI: reuse the step's λ_max (shift by a uniform weight decay, H + wd·I).
            res = ctx.get("hessian_extreme_eigenvalues")
            value = scale.uniform_lr * (res.largest + (wd[0] if wd else 0.0))
        else:
            value = self._preconditioned(ctx, scale.scale, wd)
        return {
            "sharpness_lr": value,
            "stability_threshold": scale.threshold,
            "stability_ratio": value / scale.threshold,
        }

    @staticmethod
    def _preconditioned(ctx: StepContext, scale: list[torch.Tensor], wd: list[float] | None) -> float:
        op = ctx.get("hessian_operator")
        dtype = basis_dtype(op.dim, op.dtype)
        root = flatten([s.to(dtype) for s in scale]).sqrt()
        shift = None
        if wd is not None:
            shift = flatten([torch.full_like(s, w, dtype=dtype) for s, w in zip(scale, wd)])

        def matvec(v: torch.Tensor) -> torch.Tensor:
            u = root * v
            hu = op.matvec(u)
            if shift is not None:
                hu = hu + shift * u
            return root * hu

        res = lanczos_extreme_eigenvalues(
            matvec, op.dim, rtol=HessianExtremeEigenvalues.rtol, max_iter=HessianExtremeEigenvalues.max_iter,
            seed=ctx.step, dtype=dtype, device=op.device, which="largest",
        )
        return res.largest


class LossSlice(Instrument):
    """1-D slices of the mini-batch loss around θ_t, for the dashboard (Li et al. 2018).

    * ``loss_slice_update``: L(θ_t + α Δθ_t) for α ∈ [−1, 2], along the update just taken (α = 1 is
      θ_{t+1}); on the step's own batch, so it shows exactly where the step landed: past the valley floor
      (loss at α = 1 above its minimum, on the far wall) means the step is too long along its direction.
    * ``loss_slice_random``: L(θ_t + α d) for α ∈ [−1, 1] along a random filter-normalized direction d
      (a new direction each time; biases and other 1-D parameters are not perturbed).

    Dropout masks are held fixed along each slice. Class attributes: ``points`` (25 and 21).
    """

    name = "loss_slice"
    requires = ("params_before_update", "update")
    after_update = True
    default_schedule = CURVATURE_SCHEDULE
    update_alphas: ClassVar[tuple[float, float, int]] = (-1.0, 2.0, 25)
    random_alphas: ClassVar[tuple[float, float, int]] = (-1.0, 1.0, 21)
    series = (
        SeriesInfo("loss_slice_update", "curve", "L(θ_t + α Δθ_t): the loss along the last update (α=1: θ_{t+1})",
                   "minimum near α ∈ [0.5, 1]", group="step_size"),
        SeriesInfo("loss_slice_random", "curve", "L(θ_t + α d), d random filter-normalized (Li et al. 2018)",
                   "a smooth bowl around α = 0", group="curvature"),
        SeriesInfo("loss_slice_update_argmin", "scalar", "α minimizing the loss along the update (grid)",
                   "around 1 (0: no progress; 2: overshoot)", group="step_size"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        loss_fn = ctx.inspector.user_loss_fn
        if loss_fn is None or ctx.inputs is None or ctx.targets is None:
            raise RuntimeError(
                "loss_slice needs the loss function (trainspect.attach(..., loss_fn=...)) and the batch "
                "(`with inspector.step(x, y)`)"
            )
        base = ctx.get("params_before_update")
        update = ctx.get("update")
        if not any(bool(u.any()) for u in update):
            raise NotAvailable("the update is zero: there is no direction to slice along")
        out: dict[str, Any] = {}
        a = torch.linspace(*self.update_alphas, dtype=torch.float64)
        y = loss_along_direction(ctx.model, loss_fn, ctx.inputs, ctx.targets, ctx.param_names, base, update, a,
                                 seed=ctx.step)
        out["loss_slice_update"] = Curve(a, y)
        finite = torch.isfinite(y)
        if bool(finite.any()):
            out["loss_slice_update_argmin"] = float(a[finite][int(torch.argmin(y[finite]))])
        d = filter_normalized_direction(base, seed=ctx.step)
        a = torch.linspace(*self.random_alphas, dtype=torch.float64)
        out["loss_slice_random"] = Curve(
            a, loss_along_direction(ctx.model, loss_fn, ctx.inputs, ctx.targets, ctx.param_names, base, d, a,
                                    seed=ctx.step)
        )
        return out
