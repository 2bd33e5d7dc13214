"""Faults local to one process of a ``torch.distributed`` run.

Under DDP the gradients are averaged over ranks, so a NaN on one rank reaches every rank's gradients and
the run-wide checks cannot say where it came from. The engine reduces the step's loss over ranks and notes
which ranks had a non-finite *local* loss (``StepContext.nonfinite_loss_ranks``); this check names them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainspect.checks.base import Check, Finding

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext
    from trainspect.engine.record import StepRecord


class RankLocalNonFinite(Check):
    """The loss is NaN/inf on some ranks but not on all: bad data or a numerical fault on those ranks."""

    name = "rank_local_nonfinite"
    deferrable = True  # reads the record, the run's structure and the step's extras only
    codes = ("nonfinite-loss-on-rank",)

    def observe(self, record: StepRecord, ctx: StepContext) -> list[Finding]:
        ranks = list(getattr(ctx, "nonfinite_loss_ranks", None) or ())
        world = ctx.inspector.world_size
        if not ranks or len(ranks) == world:  # all ranks: not rank-local (the non-finite checks say so)
            return []
        return [
            Finding(
                code="nonfinite-loss-on-rank",
                severity="error",
                title=f"Loss is NaN/inf on rank {r} only",
                explanation=(
                    f"At step {ctx.step} the local loss of rank {r} was not finite while "
                    f"{world - len(ranks)} of {world} ranks had a finite loss. DDP averages gradients over ranks, "
                    "so this one rank's NaN/inf spreads to every rank's gradients and parameters."
                ),
                evidence={"step": ctx.step, "ranks_with_nonfinite_loss": ranks, "world_size": world},
                remedies=(
                    f"inspect the batch rank {r} received at this step (data shard, corrupt sample, NaN inputs)",
                    "check that every rank runs the same code and configuration (e.g. a rank-dependent branch)",
                    "guard against non-finite losses (skip the step) and log the offending sample",
                ),
                location=f"rank {r}",
                rank=r,
            )
            for r in ranks
        ]
