"""Cheap instruments: loss, norms, update size, distance, learning rate, non-finite counts, time.

None of them needs an extra forward or backward pass; all per-parameter work is vectorized with
``torch._foreach_*``. Per-layer values have one entry per tracked parameter tensor.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from trainspect.engine.values import SeriesInfo
from trainspect.instruments.base import Instrument

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext


def _global(norms: torch.Tensor) -> float:
    """Global 2-norm from per-layer norms: √(Σ_l ‖x_l‖²), in Python floats (one conversion instead of three
    tensor operations and a read-back: on a tiny model each costs more than the arithmetic)."""
    return math.sqrt(sum(v * v for v in norms.tolist()))


class Loss(Instrument):
    """The mini-batch training loss L(θ_t) as computed by the user's loss function."""

    name = "loss"
    local_only = True  # values identical on every rank (DDP gradients are global); no collective
    series = (
        SeriesInfo("loss", "scalar", "mini-batch training loss", "decreasing, finite", group="performance"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        if ctx.loss is None:
            raise RuntimeError(
                "no loss was seen this step: pass an nn.Module loss (e.g. nn.CrossEntropyLoss()) to "
                "trainspect.attach(loss_fn=...), or set `step.loss = loss` inside `with inspector.step(...)`"
            )
        return {"loss": ctx.loss_value}


class GradNorm(Instrument):
    """Gradient norms: ‖∇L‖₂ over all parameters, and ‖∇_{θ_l} L‖₂ per parameter tensor.

    Cockpit's ``GradNorm`` (per-parameter list, aggregated as root-sum-of-squares in its gauge).
    """

    name = "grad_norm"
    local_only = True  # values identical on every rank (DDP gradients are global); no collective
    requires = ("grad_norms",)
    series = (
        SeriesInfo("grad_norm", "scalar", "‖∇L‖₂, norm of the mini-batch gradient", "finite, no sudden jumps",
                   log_scale=True, group="gradients"),
        SeriesInfo("layer_grad_norm", "layers", "‖∇_θ L‖₂ per parameter tensor",
                   "similar orders of magnitude across layers", log_scale=True, group="gradients"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        norms = ctx.get("grad_norms")
        # the global norm in Python floats: this runs every step, and a few float operations cost less than
        # three tensor operations on a tiny model
        return {"grad_norm": math.sqrt(sum(v * v for v in ctx.floats("grad_norms"))), "layer_grad_norm": norms}


class ParamNorm(Instrument):
    """Parameter norms ‖θ_t‖₂, total and per parameter tensor."""

    name = "param_norm"
    local_only = True  # values identical on every rank (DDP gradients are global); no collective
    requires = ("param_norms",)
    series = (
        SeriesInfo("param_norm", "scalar", "‖θ‖₂ over all parameters", "slowly varying", group="step_size"),
        SeriesInfo("layer_param_norm", "layers", "‖θ_l‖₂ per parameter tensor", "slowly varying",
                   log_scale=True, group="step_size"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        norms = ctx.get("param_norms")
        return {"param_norm": _global(norms), "layer_param_norm": norms}


class UpdateSize(Instrument):
    """Length of the step actually taken, ‖θ_{t+1} − θ_t‖₂ (Cockpit's ``UpdateSize``), total and per layer."""

    name = "update_size"
    local_only = True  # values identical on every rank (DDP gradients are global); no collective
    requires = ("update_norms",)
    after_update = True
    series = (
        SeriesInfo("update_size", "scalar", "‖θ_{t+1} − θ_t‖₂, length of the step taken", "non-zero, stable",
                   log_scale=True, group="step_size"),
        SeriesInfo("layer_update_size", "layers", "‖Δθ_l‖₂ per parameter tensor", "non-zero",
                   log_scale=True, group="step_size"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        norms = ctx.get("update_norms")
        return {"update_size": _global(norms), "layer_update_size": norms}


class UpdateToWeight(Instrument):
    """Update-to-weight ratio ‖Δθ_l‖₂ / ‖θ_{t,l}‖₂ per layer (Karpathy's rule of thumb: about 1e-3).

    A zero-norm parameter (e.g. a bias initialized to 0) gives ``inf`` if it moved and ``nan`` if not,
    rather than a misleading finite number.
    """

    name = "update_to_weight"
    local_only = True  # values identical on every rank (DDP gradients are global); no collective
    requires = ("update_norms", "param_norms")
    after_update = True
    series = (
        SeriesInfo("update_to_weight", "scalar", "‖Δθ‖₂ / ‖θ‖₂ over all parameters", "around 1e-3",
                   unit="ratio", log_scale=True, group="step_size"),
        SeriesInfo("layer_update_to_weight", "layers", "‖Δθ_l‖₂ / ‖θ_l‖₂ per parameter tensor",
                   "around 1e-3 (1e-4 … 1e-2)", unit="ratio", log_scale=True, group="step_size"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        update = ctx.get("update_norms")
        weight = ctx.get("param_norms")
        total_weight = _global(weight)
        ratio = _global(update) / total_weight if total_weight > 0 else (math.inf if _global(update) > 0 else math.nan)
        return {"update_to_weight": ratio, "layer_update_to_weight": update / weight}


class DistanceFromInit(Instrument):
    """Distance travelled from the initialization, ‖θ_t − θ_0‖₂ (Cockpit's ``Distance``), total and per layer."""

    name = "distance"
    local_only = True  # values identical on every rank (DDP gradients are global); no collective
    requires = ("param_distances",)
    series = (
        SeriesInfo("distance", "scalar", "‖θ_t − θ_0‖₂, distance from initialization", "growing, then levelling",
                   group="step_size"),
        SeriesInfo("layer_distance", "layers", "‖θ_{t,l} − θ_{0,l}‖₂ per parameter tensor", "non-zero",
                   group="step_size"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        distances = ctx.get("param_distances")
        return {"distance": _global(distances), "layer_distance": distances}


class LearningRate(Instrument):
    """The learning rate of each optimizer parameter group (``lr``; ``lr_group_i`` for groups i > 0)."""

    name = "learning_rate"
    local_only = True  # values identical on every rank (DDP gradients are global); no collective
    series = (
        SeriesInfo("lr", "scalar", "learning rate (first parameter group)", "as scheduled",
                   log_scale=True, group="hyperparameters"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        optimizer = ctx.optimizer
        if optimizer is None:
            return {}
        out: dict[str, Any] = {}
        for i, group in enumerate(optimizer.param_groups):
            lr = group.get("lr")
            if lr is None:
                continue
            lr = float(lr) if not isinstance(lr, torch.Tensor) else lr.detach()
            out["lr" if i == 0 else f"lr_group_{i}"] = lr
        return out

    def series_info(self, name: str) -> SeriesInfo:
        if name == "lr":
            return self.series[0]
        return SeriesInfo(name, "scalar", f"learning rate of parameter group {name[9:]}", "as scheduled",
                          log_scale=True, group="hyperparameters")


class NonFinite(Instrument):
    """Counts of non-finite values (NaN or ±inf) in the loss, the gradients and the parameters.

    Exact, and cheap: a norm is finite exactly when every entry is, so the element-wise count runs only
    when the (already computed) gradient norm is not finite. Parameters are counted on steps where their
    norms are computed anyway (an instrument needing them is due), or whenever the loss or gradients are
    non-finite.
    """

    name = "nonfinite"
    local_only = True  # values identical on every rank (DDP gradients are global); no collective
    requires = ("grad_norms",)
    series = (
        SeriesInfo("nonfinite_loss", "scalar", "1 if the loss is NaN/inf", "0", group="health"),
        SeriesInfo("nonfinite_grads", "scalar", "number of NaN/inf gradient entries", "0", group="health"),
        SeriesInfo("nonfinite_params", "scalar", "number of NaN/inf parameter entries", "0", group="health"),
    )

    @staticmethod
    def _count(tensors: list[torch.Tensor]) -> torch.Tensor:
        return sum((~torch.isfinite(t)).sum() for t in tensors)  # type: ignore[return-value]

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        out: dict[str, Any] = {}
        loss_bad = False
        if ctx.loss is not None:
            loss_bad = not math.isfinite(ctx.loss_value)
            out["nonfinite_loss"] = float(loss_bad)
        # norms are non-negative: their sum is finite exactly when every norm is
        grads_bad = not math.isfinite(sum(ctx.floats("grad_norms")))
        out["nonfinite_grads"] = self._count(ctx.get("grads")) if grads_bad else 0.0
        if "param_norms" in ctx.needed_providers or grads_bad or loss_bad:
            params_bad = not math.isfinite(ctx.get("param_norms").sum().item())
            out["nonfinite_params"] = self._count([p.detach() for p in ctx.params]) if params_bad else 0.0
        return out


class StepTime(Instrument):
    """Wall time of the user's step (forward, backward, optimizer), without trainspect's own time."""

    name = "step_time"
    local_only = True  # values identical on every rank (DDP gradients are global); no collective
    after_update = True
    series = (
        SeriesInfo("step_time", "scalar", "seconds per training step (excluding trainspect)", "stable",
                   unit="s", group="performance"),
    )

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        return {"step_time": ctx.user_seconds}
