"""Exploding and vanishing gradients, from the per-layer gradient norms of every step.

Scale-aware measure: the *relative* gradient of weight tensor l, ρ_l = ‖∇_{W_l} L‖₂ / ‖W_l‖₂, which does not
depend on the layer's size or the loss scale in the way raw norms do. Two views:

* **across depth** (AUTOTRAINER's rule, Zhang et al. ICSE 2021, ``monitor.py``: ``gra_rate = ‖g_first‖/‖g_last‖``,
  vanishing if < 1e-3 (β₁) and ‖g_first‖ < 1e-4, exploding if > 70 (β₃)): here on relative gradients,
  vanishing if ρ_first/ρ_last < ``depth_ratio_low`` (1e-3), exploding if > ``depth_ratio_high`` (1e3; the
  raw-norm 70 of AUTOTRAINER fires on healthy CNNs whose first layer has few weights);
* **over time** (TheDeepChecker, Ben Braiek & Khomh TOSEM 2023: exploding if the gradient grows ≥ 2× at
  each of 5 checks, i.e. ≥ 32×): exploding if the median ‖∇L‖ of the last ``window`` steps exceeds
  ``growth`` (32 = 2⁵) × its median over the first 10 steps; vanishing if it falls below 1/``growth`` of it
  while the loss has not improved by ``loss_drop`` (a gradient that shrinks because the loss is nearly
  solved is healthy); and a single-step spike above ``spike`` (1e3) × the start is exploding at once (the
  sudden blow-ups that precede NaN rarely last a whole window).

A condition must hold on at least 80 % of the last ``window`` steps (default 10), so one spike is no alarm.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from trainspect.checks._common import ThresholdCheck, fmt, median, module_location, weight_layers
from trainspect.checks.base import Finding

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext
    from trainspect.engine.record import StepRecord

VANISHING_REMEDIES = (
    "Use ReLU/GELU-family activations instead of sigmoid/tanh in deep stacks.",
    "Use He (kaiming_normal_) initialisation for ReLU layers, Xavier for tanh, instead of small random weights.",
    "Add normalisation (BatchNorm/LayerNorm) or residual connections so the gradient has a short path.",
    "Check for a .detach(), torch.no_grad() or an integer cast in the forward that cuts the graph.",
)
EXPLODING_REMEDIES = (
    "Clip the gradient norm (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)) before optimizer.step().",
    "Lower the learning rate or add warmup.",
    "Reduce the initial weight scale (He/Xavier init), add normalisation (BatchNorm/LayerNorm) or residuals.",
)


class GradientScaleCheck(ThresholdCheck):
    """``vanishing-gradients`` and ``exploding-gradients`` (see the module docstring for the rules)."""

    name = "gradient_scale"
    deferrable = True  # reads the record and the run's structure only
    codes = ("vanishing-gradients", "exploding-gradients")
    instruments: ClassVar[dict[str, Any]] = {"grad_norm": 1, "param_norm": 10}
    defaults: ClassVar[dict[str, float]] = {
        "depth_ratio_low": 1e-3, "depth_ratio_high": 1e3, "growth": 32.0, "window": 10,
                "fraction": 0.8, "baseline_steps": 10, "loss_drop": 0.5, "spike": 1e3,
    }

    def __init__(self, **thresholds: float):
        super().__init__(**thresholds)
        w = int(self.t["window"])
        self._ratios: deque[float] = deque(maxlen=w)
        self._norms: deque[float] = deque(maxlen=w)
        self._baseline: list[float] = []
        self._losses: list[float] = []
        self._recent_losses: deque[float] = deque(maxlen=w)
        self._param_norms: np.ndarray | None = None
        self._param_norm_list: list[float] | None = None
        self._held_mask: np.ndarray | None = None
        self._base: float | None = None

    def observe(self, record: StepRecord, ctx: StepContext) -> list[Finding]:
        # runs every step: plain Python floats (a handful of layers) cost less than NumPy calls on tiny arrays
        out: list[Finding] = []
        pn = record.layers.get("layer_param_norm")
        if pn is not None:
            self._param_norms = pn
            self._param_norm_list = pn.tolist()
        loss = record.scalars.get("loss")
        if loss is not None and math.isfinite(loss):
            if len(self._losses) < self.t["baseline_steps"]:
                self._losses.append(loss)
            self._recent_losses.append(loss)
        gn_array = record.layers.get("layer_grad_norm")
        if gn_array is None:
            return out
        gn = gn_array.tolist()
        if not math.isfinite(sum(gn)):  # norms are non-negative: the sum is finite iff every norm is
            return out
        held = self._held(ctx).tolist()
        # parameters outside the optimizer are never zeroed (their .grad accumulates) and are reported by the
        # parameter-not-in-optimizer check: leave them out of both rules
        total = math.sqrt(sum(v * v for v, h in zip(gn, held) if h))
        if len(self._baseline) < self.t["baseline_steps"]:
            self._baseline.append(total)
        self._norms.append(total)
        # weight tensors that get gradient: a tensor with none at all is the no-gradient check's finding
        idx = [i for i in weight_layers(ctx) if held[i] and gn[i] > 0]
        pn_list = self._param_norm_list
        if len(idx) >= 2 and pn_list is not None and pn_list[idx[0]] > 0 and pn_list[idx[-1]] > 0:
            first = gn[idx[0]] / pn_list[idx[0]]
            last = gn[idx[-1]] / pn_list[idx[-1]]
            if math.isfinite(first) and math.isfinite(last) and last > 0:
                self._ratios.append(first / last)
                out += self._depth(record, ctx, idx, gn_array, self._param_norms)
        out += self._time(record)
        return out

    def _held(self, ctx: StepContext) -> np.ndarray:
        if self._held_mask is None:
            opt = ctx.optimizer
            ids = {id(p) for g in opt.param_groups for p in g["params"]} if opt is not None else None
            self._held_mask = np.array([ids is None or id(p) in ids for p in ctx.params], dtype=bool)
        return self._held_mask

    def _persists(self, values: deque[float], test) -> bool:  # type: ignore[no-untyped-def]
        if len(values) < values.maxlen or not test(values[-1]):  # type: ignore[operator]
            return False  # (the latest value must hold too: a cheap pre-test that delays a finding ≤ 1 step)
        return sum(bool(test(v)) for v in values) >= self.t["fraction"] * len(values)

    def _depth(self, record: StepRecord, ctx: StepContext, idx: list[int], gn: np.ndarray,
               pn: np.ndarray) -> list[Finding]:
        lo, hi = self.t["depth_ratio_low"], self.t["depth_ratio_high"]
        vanishing = self._persists(self._ratios, lambda r: r < lo)
        exploding = not vanishing and self._persists(self._ratios, lambda r: r > hi)
        if not (vanishing or exploding):
            return []
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = gn[idx] / pn[idx]
        ratio = median(self._ratios)
        names = [module_location(ctx, i) for i in idx]
        per_layer = {names[k]: float(rho[k]) for k in range(len(idx))}
        if vanishing:
            below = [names[k] for k in range(len(idx)) if rho[k] < lo * rho[-1]]
            where = below[-1] if below else names[0]
            return [Finding(
                code="vanishing-gradients", severity="warning",
                title=f"Gradients vanish toward the input: ρ({names[0]}) / ρ({names[-1]}) = {fmt(ratio)}",
                explanation=(
                    "Relative to their weights, the layers near the input receive gradients more than "
                    f"{fmt(1 / lo)}× smaller than the output layer, so they barely learn. Layers below the "
                    f"threshold: {', '.join(below) or names[0]}; the deepest of them is named as the location."
                ),
                evidence={"depth_ratio_median": ratio, "threshold": lo, "window_steps": len(self._ratios),
                          "relative_gradient_per_layer": per_layer,
                          "rule": "median over the window of ρ_first/ρ_last, ρ_l = ‖∇W_l‖/‖W_l‖ (AUTOTRAINER β₁)"},
                remedies=VANISHING_REMEDIES, location=where,
            )]
        if exploding:
            return [Finding(
                code="exploding-gradients", severity="warning",
                title=f"Gradients explode toward the input: ρ({names[0]}) / ρ({names[-1]}) = {fmt(ratio)}",
                explanation=(
                    f"Relative to their weights, the layers near the input receive gradients more than {fmt(hi)}× "
                    "larger than the output layer: back-propagation amplifies the gradient layer after layer, "
                    "so early layers take huge steps."
                ),
                evidence={"depth_ratio_median": ratio, "threshold": hi, "window_steps": len(self._ratios),
                          "relative_gradient_per_layer": per_layer,
                          "rule": "median over the window of ρ_first/ρ_last (AUTOTRAINER β₃, scaled)"},
                remedies=EXPLODING_REMEDIES, location=names[0],
            )]
        return []

    def _time(self, record: StepRecord) -> list[Finding]:
        if len(self._baseline) < self.t["baseline_steps"] or len(self._norms) < self._norms.maxlen:  # type: ignore[operator]
            return []
        if self._base is None:
            self._base = median(self._baseline)
        base = self._base
        growth = self.t["growth"]
        if base <= 0:
            return []
        last = self._norms[-1]
        if base / growth <= last <= growth * base:
            return []  # neither rule can fire on this step (both need the latest value beyond the band)
        now = median(self._norms)
        if last > self.t["spike"] * base:
            return [Finding(
                code="exploding-gradients", severity="error",
                title=f"Gradient spike: ‖∇L‖ = {fmt(last)} is {fmt(last / base)}× its value at the start",
                explanation=(
                    f"On step {record.step} the gradient norm jumped to {fmt(last)} against {fmt(base)} over the "
                    "first steps: one such step can throw the weights far away (and often precedes NaN)."
                ),
                evidence={"grad_norm": last, "grad_norm_median_first_steps": base, "growth": last / base,
                          "threshold": f"> {fmt(self.t['spike'])}× on a single step"},
                remedies=EXPLODING_REMEDIES, location="",
            )]
        if self._persists(self._norms, lambda v: v > growth * base):
            return [Finding(
                code="exploding-gradients", severity="error",
                title=f"The gradient norm grew {fmt(now / base)}× since the start of training",
                explanation=(
                    f"‖∇L‖ is now {fmt(now)} (median of the last {len(self._norms)} steps) against {fmt(base)} "
                    "over the first steps: the updates feed back into ever larger gradients."
                ),
                evidence={"grad_norm_median_recent": now, "grad_norm_median_first_steps": base,
                          "growth": now / base, "threshold": f"> {fmt(growth)}× (TheDeepChecker: 2× at 5 checks)"},
                remedies=EXPLODING_REMEDIES, location="",
            )]
        if self._losses and self._recent_losses:
            improved = median(self._recent_losses) < self.t["loss_drop"] * median(self._losses)
            if not improved and self._persists(self._norms, lambda v: v < base / growth):
                return [Finding(
                    code="vanishing-gradients", severity="warning",
                    title=f"The gradient norm shrank {fmt(base / max(now, 1e-300))}× while the loss stayed high",
                    explanation=(
                        f"‖∇L‖ fell from {fmt(base)} to {fmt(now)} although the loss has not come down: the "
                        "network stopped passing gradient (saturated or dead units, or a cut graph)."
                    ),
                    evidence={"grad_norm_median_recent": now, "grad_norm_median_first_steps": base,
                              "threshold": f"< 1/{fmt(growth)} of the start with loss above "
                                           f"{self.t['loss_drop']}× its start"},
                    remedies=VANISHING_REMEDIES, location="",
                )]
        return []
