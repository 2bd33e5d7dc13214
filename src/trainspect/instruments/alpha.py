"""Alpha: where along the step the optimizer landed on a noise-aware quadratic fit of the loss (Cockpit's
``Alpha``; formula in :func:`trainspect.functional.batch_tests.alpha_quadratic_fit`).

Two steps are needed. At a scheduled step t (parameters θ_t) the optimizer takes the update d_t =
θ_{t+1} − θ_t — the update actually taken, whatever the optimizer (momentum, Adam, weight decay, clipping),
from the engine's ``update`` provider (a copy of θ_t before the step), or, for ``torch.optim.SGD`` with momentum,
from the optimizer's own state (see :class:`Alpha`). Then:

* at step t (after ``optimizer.step()``): f0 = mean_i ℓ_i(θ_t), its sample variance, and the per-sample
  directional derivatives g_iᵀd_t/‖d_t‖ (their mean df0 and variance) — projected from the captured
  layer inputs and output-gradients, so no N×D per-sample gradients are formed on fast-path layers;
* at step t+1 (the next batch, at θ_{t+1}): the same on the new batch along the *same* d_t: f1, df1 and
  variances. The instrument is therefore due at t+1 whenever it was due at t (``is_due``).

α is recorded **at step t+1** (when it becomes known) and describes the update of step t; the store's
step t holds the start of the pair. If step t+1 is not run (training ends, or the optimizer skipped the
step) the pair is dropped. Cockpit's convention: −1 no progress, 0 landed in the valley's minimum, +1
landed at the same height on the other side; > 1 overshoots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from trainspect.engine.distributed import all_reduce_sum, world_size
from trainspect.engine.values import SeriesInfo
from trainspect.functional.batch_tests import alpha_quadratic_fit
from trainspect.instruments.base import Instrument
from trainspect.providers.per_sample import project_per_sample
from trainspect.providers.snapshots import SGDStep, tensor_norms

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext


@dataclass
class _Start:
    """The first half of a pair, measured at step t along d_t = scale_p · direction_p (per parameter tensor p)."""

    step: int
    #: the update tensor Δθ_t (scale None), SGD's momentum buffers b_t (live: the next step overwrites them in
    #: place, so they are projected just before it) or a copy of ∇L_t (plain SGD)
    direction: list[torch.Tensor]
    scale: torch.Tensor | None  # [P] float64 (−lr_p), None for the update tensor itself
    live: bool
    versions: list[int] | None  # the live buffers' in-place versions after step t
    length: float
    f0: float
    var_f0: float
    df0: float
    var_df0: float
    buffer_sq_norms: torch.Tensor | None = None  # [P] ‖b_{t,p}‖² of live buffers (the shortcut's check)


@dataclass
class _Prepared:
    """What :meth:`Alpha.before_update` found just before the step's ``optimizer.step()``."""

    step: int
    rule: SGDStep | None  # this step's update is SGD's −lr·b (usable for alpha)
    pending_projection: torch.Tensor | None  # [N, P] g_{i,p}(θ_t)ᵀ b_{t−1,p}, for a live pending start


def _mean_var(total: torch.Tensor, total_sq: torch.Tensor, n: float) -> tuple[float, float]:
    """Mean and unbiased variance (ddof=1) from Σx, Σx² and the count."""
    mean = float(total) / n
    var = (float(total_sq) - n * mean * mean) / (n - 1) if n > 1 else 0.0
    return mean, max(var, 0.0)


#: relative agreement, per parameter tensor, of ‖b_t‖² with its value if ∇L_t were the per-sample gradients' mean
#: (the SGD shortcut's check): float32 noise is far below it, clipping or any other change of the gradient above
GRADIENT_TOLERANCE = 1e-3


class Alpha(Instrument):
    """Normalized step length α of the update actually taken (any optimizer).

    Cost: the per-sample projections g_iᵀd (``project_per_sample``: as much as a forward pass through the layers
    per direction) along the previous and the current update, plus, in general, a copy of θ_t to know the update.

    For ``torch.optim.SGD`` with momentum the update is known from the optimizer itself
    (``providers.snapshots.sgd_step``: exact by construction, decided before every step), so nothing is copied:
    d_t = −lr·b_t with the momentum buffer b_t as the step leaves it. The buffer is overwritten in place by the
    next step, so its projection at θ_{t+1} is taken just before that step (:meth:`before_update`), after checking
    that the buffers are still those tensors at that in-place version (else that pair is dropped). And the
    current update's projection follows from it and the gradient tests' g_iᵀḡ when those are computed anyway
    (no weight decay, no maximize, one process): with b_t = μ b_{t−1} + (1−τ)∇L_t,

        g_iᵀd_t = −lr_t (μ g_iᵀb_{t−1} + (1−τ) g_iᵀ∇L_t)   per parameter tensor,

    so each step costs one projection (Cockpit's own alpha has a fast path for SGD without momentum). That
    shortcut needs ∇L_t to be the per-sample gradients' mean (or sum) as the tests saw it, which is checked on
    what the step actually did: ‖b_t‖² must equal μ²‖b_{t−1}‖² + 2μ(1−τ) b_{t−1}ᵀ∇L + (1−τ)²‖∇L‖² with that ∇L
    (every term known: the first from the previous step, the second from the projection just taken), per
    parameter tensor, to :data:`GRADIENT_TOLERANCE`; with clipping, even by a framework after the gradients were
    measured, the projection along b_t is computed. ``fast_steps`` counts the steps that took the shortcut.
    Without momentum (−lr·∇L with ∇L as it was inside the step) and for other optimizers θ_t is copied and the
    update taken is projected.
    """

    name = "alpha"
    requires = ("per_sample_layers", "per_sample_losses")  # and the update, requested before the step if needed
    after_update = True
    keeps_update = True  # reads this step's update again at the next step (the provider keeps it valid)
    series = (
        SeriesInfo("alpha", "scalar", "normalized step length α of the previous step's update (Cockpit)",
                   "around 0 (−1: no progress, > 1: overshooting)", group="step_size"),
    )

    def __init__(self, schedule: Any = None):
        super().__init__(schedule)
        self._start: _Start | None = None
        self._prepared: _Prepared | None = None
        self.fast_steps = 0

    def is_due(self, step: int) -> bool:
        return self.schedule(step) or (self._start is not None and self._start.step == step - 1)

    def _pending(self, ctx: StepContext) -> _Start | None:
        start = self._start
        return start if start is not None and start.step == ctx.step - 1 else None

    def before_update(self, ctx: StepContext) -> None:
        pending = self._pending(ctx)
        projection = None
        if pending is not None and pending.live and self._intact(pending, ctx):
            projection = project_per_sample(ctx, [pending.direction])[:, :, 0]  # g_i(θ_t)ᵀ b_{t−1}
        rule = ctx.get("sgd_step") if self.schedule(ctx.step) else None
        if rule is None and self.schedule(ctx.step):
            ctx.get("params_before_update")  # the update as a tensor, after the step
        self._prepared = _Prepared(ctx.step, rule, projection)

    @staticmethod
    def _intact(pending: _Start, ctx: StepContext) -> bool:
        """The live momentum buffers are still those of step t−1 (same tensors, not changed in place since)."""
        state = ctx.optimizer.state if ctx.optimizer is not None else {}
        return pending.versions is not None and all(
            state.get(p, {}).get("momentum_buffer") is b and b._version == v
            for p, b, v in zip(ctx.params, pending.direction, pending.versions))

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        pending = self._pending(ctx)
        self._start = None
        prepared = self._prepared if self._prepared is not None and self._prepared.step == ctx.step else None
        self._prepared = None
        starting = self.schedule(ctx.step)
        if pending is not None and pending.live and (prepared is None or prepared.pending_projection is None):
            pending = None  # its direction was overwritten before it could be projected: the pair is dropped
        if pending is None and not starting:
            return {}
        directions: list[list[torch.Tensor]] = []  # projected now, with their per-parameter scales
        scales: list[torch.Tensor | None] = []
        pending_slopes = None  # [N, P]: g_{i,p}ᵀ d_{t−1,p}
        if pending is not None:
            if pending.live:
                pending_slopes = prepared.pending_projection * pending.scale  # type: ignore[union-attr]
            else:
                directions.append(pending.direction)
                scales.append(pending.scale)
        start = None
        start_slopes = None
        if starting:
            rule = prepared.rule if prepared is not None else None
            if rule is not None and ctx.optimizer_stepped:
                start, start_slopes = self._sgd_start(ctx, rule, pending, prepared)  # type: ignore[arg-type]
            elif rule is None:
                update = ctx.get("update")  # valid until the next step (the buffers alternate)
                length = float(tensor_norms(update).square().sum().sqrt())
                start = _Start(ctx.step, update, None, False, None, length, 0.0, 0.0, 0.0, 0.0)
            if start is None:
                if pending is None:
                    return {}
            elif start_slopes is None:
                directions.append(start.direction)
                scales.append(start.scale)
            else:
                self.fast_steps += 1
        losses = ctx.get("per_sample_losses")
        proj = project_per_sample(ctx, directions) if directions else None  # [N, P, K]: g_{i,p}ᵀ v_p
        k = 0
        columns, lengths = [], []
        for slopes, part in ((pending_slopes, pending), (start_slopes, start)):
            if part is None:
                continue
            if slopes is None:
                slopes = proj[:, :, k] if scales[k] is None else proj[:, :, k] * scales[k]  # type: ignore[index]
                k += 1
            columns.append(slopes.sum(1))
            lengths.append(part.length)
        scale = torch.tensor([1.0 / v if v > 0 else 0.0 for v in lengths], dtype=torch.float64)
        slopes = torch.stack(columns, 1) * scale  # g_iᵀd/‖d‖
        sums = all_reduce_sum([
            losses.sum().reshape(1), losses.square().sum().reshape(1),
            torch.tensor([float(losses.shape[0])], dtype=torch.float64),
            slopes.sum(0), slopes.square().sum(0),
        ])
        n = float(sums[2][0])
        f, var_f = _mean_var(sums[0][0], sums[1][0], n)
        out: dict[str, Any] = {}
        k = 0
        if pending is not None:
            df1, var_df1 = _mean_var(sums[3][k], sums[4][k], n)
            alpha = alpha_quadratic_fit(pending.length, pending.f0, f, pending.df0, df1,
                                        pending.var_f0, var_f, pending.var_df0, var_df1)
            if alpha is not None:
                out["alpha"] = alpha
            k += 1
        if start is not None:
            start.f0, start.var_f0 = f, var_f
            start.df0, start.var_df0 = _mean_var(sums[3][k], sums[4][k], n)
            self._start = start
        return out

    def _sgd_start(self, ctx: StepContext, rule: SGDStep, pending: _Start | None, prepared: _Prepared):
        """This step's update from SGD's rule: the start record (direction b_t, scale −lr) and, where the shortcut
        applies, its slopes g_{i,p}ᵀd_{t,p} [N, P] (else None: project the direction). No start (None, None) if
        the step left a parameter unmoved (no gradient): b would not be its update, and θ_t was not copied."""
        optimizer = ctx.optimizer
        moved = rule.moved(ctx.params, optimizer)  # type: ignore[arg-type]
        if not all(moved):
            return None, None
        direction = rule.buffers(ctx.params, optimizer)  # type: ignore[arg-type]
        buffer_sq = rule.buffer_norms(ctx.params, optimizer).square()  # type: ignore[arg-type]  (shared)
        # [P]-sized arithmetic in Python floats: this runs every step, and each tensor operation on a handful of
        # numbers costs microseconds
        buffer_sq_list = buffer_sq.tolist()
        length = math.sqrt(sum(lr * lr * b for lr, b in zip(rule.lr, buffer_sq_list)))
        scale = torch.tensor([-lr for lr in rule.lr], dtype=torch.float64)
        start = _Start(ctx.step, direction, scale, True, [b._version for b in direction], length, 0.0, 0.0, 0.0, 0.0,
                       buffer_sq)
        return start, self._shortcut(ctx, rule, pending, prepared, direction, buffer_sq_list)

    @staticmethod
    def _shortcut(ctx: StepContext, rule: SGDStep, pending: _Start | None, prepared: _Prepared | None,
                  direction: list[torch.Tensor], buffer_sq: list[float]) -> torch.Tensor | None:
        """g_{i,p}ᵀd_{t,p} = −lr (μ g_iᵀb_{t−1} + (1−τ) g_iᵀ∇L) without a projection (class docstring); None where
        it does not apply."""
        if any(rule.weight_decay) or any(rule.maximize) or world_size() > 1 or not ctx.cached("per_sample_grads"):
            return None
        # b_{t−1}: the pending start's buffers, projected before this step, and still the same tensors now
        if (pending is None or not pending.live or pending.buffer_sq_norms is None or prepared is None
                or prepared.pending_projection is None
                or any(a is not b for a, b in zip(pending.direction, direction))):
            return None
        stats = ctx.get("per_sample_grads")
        if stats.proj_mean is None:
            return None
        s = 1.0 if stats.loss_reduction == "mean" else float(stats.batch_size)
        previous = prepared.pending_projection  # [N, P] g_{i,p}ᵀ b_{t−1,p}
        # the step's own check: ‖b_t‖² if ∇L_t = s·ḡ (ḡ the per-sample mean), against ‖b_t‖² as the step left it
        # (per parameter tensor; a NaN anywhere fails it)
        for mu, tau, old_sq, projected, mean_sq, got in zip(
                rule.momentum, rule.dampening, pending.buffer_sq_norms.tolist(), previous.mean(0).tolist(),
                stats.mean_grad_sq_norms.tolist(), buffer_sq):
            old = mu * mu * old_sq
            cross = 2 * mu * (1 - tau) * s * projected  # 2μ(1−τ) b_{t−1}ᵀ∇L
            new = (1 - tau) ** 2 * s * s * mean_sq
            if not abs(old + cross + new - got) <= GRADIENT_TOLERANCE * (old + abs(cross) + new) + 1e-30:
                return None
        # −lr μ g_iᵀb_{t−1} − lr (1−τ) s g_iᵀḡ, per parameter tensor
        on_previous = torch.tensor([-lr * mu for lr, mu in zip(rule.lr, rule.momentum)], dtype=torch.float64)
        on_mean = torch.tensor([-lr * (1 - tau) * s for lr, tau in zip(rule.lr, rule.dampening)], dtype=torch.float64)
        return torch.addcmul(previous * on_previous, stats.proj_mean, on_mean)
