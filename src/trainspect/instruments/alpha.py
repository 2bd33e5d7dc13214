"""Alpha: where along the step the optimizer landed on a noise-aware quadratic fit of the loss (Cockpit's
``Alpha``; formula in :func:`trainspect.functional.batch_tests.alpha_quadratic_fit`).

Two steps are needed. At a scheduled step t (parameters θ_t) the optimizer takes the update d_t =
θ_{t+1} − θ_t — the update actually taken, whatever the optimizer (momentum, Adam, weight decay, clipping),
from the engine's ``update`` provider. Then:

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

from trainspect.engine.distributed import all_reduce_sum
from trainspect.engine.values import SeriesInfo
from trainspect.functional.batch_tests import alpha_quadratic_fit
from trainspect.instruments.base import Instrument
from trainspect.providers.per_sample import project_per_sample

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext


@dataclass
class _Start:
    step: int
    direction: list[torch.Tensor]
    length: float
    f0: float
    var_f0: float
    df0: float
    var_df0: float
    #: per tracked parameter, the learning rate lr_p for which the update was checked to be d_p = −lr_p·b_p
    #: (b: SGD's momentum buffer, or the gradient without momentum); None if unchecked or not plain SGD
    sgd_lr: torch.Tensor | None = None


def _mean_var(total: torch.Tensor, total_sq: torch.Tensor, n: float) -> tuple[float, float]:
    """Mean and unbiased variance (ddof=1) from Σx, Σx² and the count."""
    mean = float(total) / n
    var = (float(total_sq) - n * mean * mean) / (n - 1) if n > 1 else 0.0
    return mean, max(var, 0.0)


@dataclass
class _SGD:
    """Per tracked parameter: learning rate, momentum μ, dampening τ and the buffers d = −lr·b was checked with."""

    lr: torch.Tensor
    momentum: torch.Tensor
    dampening: torch.Tensor
    buffers: list[torch.Tensor]


#: relative size of ‖d − (−lr·b)‖ up to which the update counts as SGD's: float32 rounding of θ + Δ leaves
#: ~eps·‖θ‖ ≈ 1e-4·‖d‖ at an update-to-weight ratio of 1e-3; anything that changed the step (clipping after
#: the hook, a scheduler inside the step, a custom rule) is far above
SGD_TOLERANCE = 1e-3


def _plain_sgd(ctx: StepContext) -> _SGD | None:
    """``torch.optim.SGD`` without weight decay, Nesterov or maximize, with every tracked parameter in it."""
    optimizer = ctx.optimizer
    if type(optimizer) is not torch.optim.SGD:
        return None
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    lr, momentum, dampening, buffers = [], [], [], []
    for p in ctx.params:
        group = group_of.get(id(p))
        if group is None or group.get("weight_decay", 0) != 0 or group.get("nesterov") or group.get("maximize"):
            return None
        lr.append(float(group["lr"]))
        momentum.append(float(group.get("momentum", 0.0)))
        dampening.append(float(group.get("dampening", 0.0)))
        b = optimizer.state.get(p, {}).get("momentum_buffer") if momentum[-1] != 0 else p.grad
        if b is None:
            return None
        buffers.append(b.detach())
    f64 = torch.float64
    return _SGD(torch.tensor(lr, dtype=f64), torch.tensor(momentum, dtype=f64), torch.tensor(dampening, dtype=f64),
                buffers)


def _is_sgd_update(update: list[torch.Tensor], sgd: _SGD, length: float, scratch: list[torch.Tensor]) -> bool:
    """Whether the update taken is d_p = −lr_p·b_p (to :data:`SGD_TOLERANCE`): one pass over the parameters,
    into ``scratch`` (kept by the instrument: a fresh parameter-sized tensor per step costs page faults)."""
    if length <= 0:
        return False
    for u, b, v, r in zip(update, sgd.buffers, sgd.lr.tolist(), scratch):
        torch.add(u, b, alpha=v, out=r)
    norm = float(torch.stack(torch._foreach_norm(scratch)).to(torch.float64).square().sum().sqrt())
    return math.isfinite(norm) and norm <= SGD_TOLERANCE * length


class Alpha(Instrument):
    """Normalized step length α of the update actually taken (any optimizer).

    Cost: the per-sample projections g_iᵀd (``project_per_sample``: as much as a forward pass through the layers
    per direction) along the previous and the current update. For plain ``torch.optim.SGD`` (with or without
    heavy-ball momentum and dampening; no weight decay or Nesterov) the current one follows from the previous
    one and the gradient tests' projections g_iᵀḡ, when those are computed this step anyway: with momentum
    buffer b_t = μ b_{t−1} + (1−τ)∇L_t and update d_t = −lr_t b_t,

        g_iᵀd_t = −lr_t (−μ g_iᵀd_{t−1}/lr_{t−1} + (1−τ) g_iᵀ∇L_t)   per parameter tensor,

    so each step costs one projection instead of two (Cockpit's own alpha has a fast path for SGD without
    momentum). It is used only after checking, at both steps, that the update taken really was −lr·b (one pass
    over the parameters), and that ∇L is the per-sample gradients' mean (or sum) as the tests saw it (their
    norms agree); otherwise, e.g. with gradient clipping or a custom update, the projection is computed.
    ``fast_steps`` counts the steps that took this path.
    """

    name = "alpha"
    requires = ("per_sample_layers", "per_sample_losses", "update")
    after_update = True
    keeps_update = True  # reads this step's update again at the next step (the provider keeps it valid)
    series = (
        SeriesInfo("alpha", "scalar", "normalized step length α of the previous step's update (Cockpit)",
                   "around 0 (−1: no progress, > 1: overshooting)", group="step_size"),
    )

    def __init__(self, schedule: Any = None):
        super().__init__(schedule)
        self._start: _Start | None = None
        self.fast_steps = 0
        self._scratch: list[torch.Tensor] | None = None  # the SGD check's residual, reused every step

    def is_due(self, step: int) -> bool:
        return self.schedule(step) or (self._start is not None and self._start.step == step - 1)

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        pending = self._start if self._start is not None and self._start.step == ctx.step - 1 else None
        self._start = None
        starting = self.schedule(ctx.step)
        if pending is None and not starting:
            return {}
        update = ctx.get("update") if starting else None  # valid until the next step (the buffers alternate)
        length = _norm(update) if update is not None else 0.0
        sgd = _plain_sgd(ctx) if update is not None else None
        if sgd is not None and self._scratch is None:
            self._scratch = [torch.empty_like(u) for u in update]
        sgd_lr = sgd.lr if sgd is not None and _is_sgd_update(update, sgd, length, self._scratch) else None
        fast = self._from_previous(ctx, pending, sgd) if sgd is not None and sgd_lr is not None else None
        directions = []
        if pending is not None:
            directions.append(pending.direction)
        if update is not None and fast is None:
            directions.append(update)
        losses = ctx.get("per_sample_losses")
        proj = project_per_sample(ctx, directions) if directions else None  # [N, P, K]: g_{i,p}ᵀd_p
        columns = [] if proj is None else [proj[:, :, k].sum(1) for k in range(proj.shape[2])]
        if fast is not None:
            columns.append(fast(proj[:, :, 0] if pending is not None else None))
            self.fast_steps += 1
        lengths = []
        if pending is not None:
            lengths.append(pending.length)
        if update is not None:
            lengths.append(length)
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
        if update is not None:
            df0, var_df0 = _mean_var(sums[3][k], sums[4][k], n)
            self._start = _Start(ctx.step, update, length, f, var_f, df0, var_df0, sgd_lr)
        return out

    def _from_previous(self, ctx: StepContext, pending: _Start | None, sgd: _SGD):
        """The SGD shortcut for g_iᵀd_t (see the class docstring), as a function of the pending direction's
        per-parameter projections [N, P]; None where it does not apply this step."""
        if not ctx.cached("per_sample_grads"):
            return None
        stats = ctx.get("per_sample_grads")
        if stats.proj_mean is None:
            return None
        with_momentum = sgd.momentum != 0
        if bool(with_momentum.any()) and (pending is None or pending.sgd_lr is None):
            return None  # b_{t−1} = −d_{t−1}/lr_{t−1} is known only if the previous update was checked too
        # ∇L as the optimizer used it must be the per-sample gradients' mean (mean loss) or sum (sum loss)
        s = 1.0 if stats.loss_reduction == "mean" else float(stats.batch_size)
        grad_sq = ctx.get("grad_norms").square()
        expected = stats.mean_grad_sq_norms * s * s
        if not torch.allclose(grad_sq, expected, rtol=SGD_TOLERANCE, atol=1e-30):
            return None
        pi = stats.proj_mean * s  # [N, P]: g_{i,p}ᵀ∇_p L
        lr, mu, tau = sgd.lr, sgd.momentum, sgd.dampening
        previous_lr = pending.sgd_lr if pending is not None else None

        def projection(previous: torch.Tensor | None) -> torch.Tensor:
            buffer_proj = pi
            if previous is not None and previous_lr is not None:
                # g_iᵀb_t = μ g_iᵀb_{t−1} + (1−τ) g_iᵀ∇L, with b_{t−1} = −d_{t−1}/lr_{t−1}; μ = 0: b_t = ∇L
                momentum_part = -previous / previous_lr.clamp_min(1e-300)
                buffer_proj = torch.where(with_momentum, mu * momentum_part + (1 - tau) * pi, pi)
            return (-lr * buffer_proj).sum(1)

        return projection


def _norm(tensors: list[torch.Tensor]) -> float:
    return float(torch.stack(torch._foreach_norm(tensors)).to(torch.float64).square().sum().sqrt())
