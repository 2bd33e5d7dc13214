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


def _mean_var(total: torch.Tensor, total_sq: torch.Tensor, n: float) -> tuple[float, float]:
    """Mean and unbiased variance (ddof=1) from Σx, Σx² and the count."""
    mean = float(total) / n
    var = (float(total_sq) - n * mean * mean) / (n - 1) if n > 1 else 0.0
    return mean, max(var, 0.0)


class Alpha(Instrument):
    """Normalized step length α of the update actually taken (any optimizer)."""

    name = "alpha"
    requires = ("per_sample_layers", "per_sample_losses", "update")
    after_update = True
    series = (
        SeriesInfo("alpha", "scalar", "normalized step length α of the previous step's update (Cockpit)",
                   "around 0 (−1: no progress, > 1: overshooting)", group="step_size"),
    )

    def __init__(self, schedule: Any = None):
        super().__init__(schedule)
        self._start: _Start | None = None

    def is_due(self, step: int) -> bool:
        return self.schedule(step) or (self._start is not None and self._start.step == step - 1)

    def compute(self, ctx: StepContext) -> dict[str, Any]:
        pending = self._start if self._start is not None and self._start.step == ctx.step - 1 else None
        self._start = None
        starting = self.schedule(ctx.step)
        directions = []
        if pending is not None:
            directions.append(pending.direction)
        update = None
        if starting:
            # needed again at the next step: the provider's buffers stay valid until then (they alternate)
            update = ctx.get("update")
            directions.append(update)
        if not directions:
            return {}
        losses = ctx.get("per_sample_losses")
        proj = project_per_sample(ctx, directions).sum(1)  # [N, K]: g_iᵀd over all parameters
        lengths = []
        if pending is not None:
            lengths.append(pending.length)
        if update is not None:
            lengths.append(float(torch.stack(torch._foreach_norm(update)).to(torch.float64).square().sum().sqrt()))
        scale = torch.tensor([1.0 / v if v > 0 else 0.0 for v in lengths], dtype=torch.float64)
        slopes = proj * scale  # g_iᵀd/‖d‖
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
            self._start = _Start(ctx.step, update, lengths[-1], f, var_f, df0, var_df0)
        return out
