"""What the parameters' ``.grad`` hold when a step *begins* (before the user's forward and backward).

After ``optimizer.zero_grad()`` they are ``None`` (or zero with ``set_to_none=False``); a non-zero
gradient at the start of a step that follows an optimizer step means the loop forgot ``zero_grad`` and
this step's gradient will be added to the previous one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from trainspect.providers.base import Provider

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext


class GradientsAtStepStart(Provider):
    """Per-parameter norms of ``p.grad`` at the start of the step (float64; None if no parameter had a
    ``.grad``; 0 where ``.grad`` is None, or
    where the step replaced the tensor, e.g. ``zero_grad()`` called inside the ``with inspector.step`` block)."""

    name = "grad_norms_at_start"

    def __init__(self, inspector) -> None:  # type: ignore[no-untyped-def]
        super().__init__(inspector)
        self._norms: torch.Tensor | None = None
        self._objects: list[torch.Tensor | None] = []

    def arm(self, ctx: StepContext) -> None:
        grads = [p.grad for p in ctx.params]
        present = [i for i, g in enumerate(grads) if g is not None]
        self._objects = grads
        if not present:  # the usual case after zero_grad(set_to_none=True): nothing to compute
            self._norms = None
            return
        dense = [grads[i].to_dense() if grads[i].is_sparse else grads[i].detach() for i in present]
        values = torch.stack(torch._foreach_norm(dense)).to(torch.float64)
        norms = torch.zeros(len(grads), dtype=torch.float64, device=values.device)
        norms[present] = values
        self._norms = norms

    def compute(self, ctx: StepContext) -> torch.Tensor | None:
        norms, objects = self._norms, self._objects
        self._norms, self._objects = None, []
        if norms is None:
            return None  # no .grad at all when the step began (the usual case): nothing to compute
        # zero_grad() inside the step block (set_to_none) replaces the tensor: only a .grad that backward
        # accumulated into (the same tensor object) carries the old gradient into this step
        kept = [p.grad is not None and p.grad is g for p, g in zip(ctx.params, objects)]
        return norms * torch.tensor(kept, dtype=torch.float64, device=norms.device)
