"""Cheap shared computations on parameters and gradients (no extra forward or backward pass).

Everything here works on flat lists of tensors with ``torch._foreach_*`` kernels: one Python call for all
parameters instead of one per parameter, which is what keeps the per-step cost of the default
instruments small on tiny models (a plain step of the digits MLP takes a fraction of a millisecond).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from trainspect.engine.context import NotAvailable
from trainspect.engine.distributed import world_size
from trainspect.providers.base import Provider

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext
    from trainspect.engine.inspector import Inspector


def _norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per-tensor 2-norms as one float64 vector (float64 so that huge values do not overflow)."""
    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    return torch.stack(torch._foreach_norm(tensors)).to(torch.float64)


#: tensors with at least this many elements get their own fused kernels (one Python call each is cheap next
#: to their size); smaller ones go through one ``torch._foreach_*`` call for all of them
_LARGE = 1 << 16


def subtract_into(out: list[torch.Tensor], a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    """out_l = a_l − b_l in place: one ``torch.sub(..., out=)`` pass per large tensor (not a copy then a
    subtraction), one foreach copy and subtraction for the small ones."""
    small = [i for i, t in enumerate(a) if t.numel() < _LARGE]
    if small:
        dst = [out[i] for i in small]
        torch._foreach_copy_(dst, [a[i] for i in small])
        torch._foreach_sub_(dst, [b[i] for i in small])
    for i, t in enumerate(a):
        if t.numel() >= _LARGE:
            torch.sub(t, b[i], out=out[i])


class Gradients(Provider):
    """The mini-batch gradients ``p.grad`` of the tracked parameters, as the optimizer will see them.

    A parameter that received no gradient this step gets a zero tensor (and ``no_grad_mask`` marks it),
    so every instrument sees one tensor per tracked parameter.
    """

    name = "grads"

    def compute(self, ctx: StepContext) -> list[torch.Tensor]:
        grads = []
        for p in ctx.params:
            g = p.grad
            if g is None:
                g = torch.zeros_like(p)
            elif g.is_sparse:
                g = g.to_dense()
            grads.append(g.detach())
        return grads


class GradientNorms(Provider):
    """Per-parameter gradient norms ‖∇_{θ_l} L‖₂ (float64 vector, one entry per tracked parameter).

    Large gradients (``hot_min_numel`` elements or more) get their squared norm in a post-accumulate-grad hook,
    right after autograd wrote them, while they are still in cache: measured on the 784-1000-500-100-10 MLP
    (2 cores), 0.1 ms instead of 0.3 ms per step for the norms read back from memory later. The value is used
    only if the gradient is still the same tensor at the same version (autograd's in-place counter) when the
    norms are computed, so anything that changes it afterwards — further micro-batches, clipping, AMP's
    unscaling, ``p.grad = ...`` — falls back to computing the norm then. Under ``torch.distributed`` (gradients
    are averaged after the hooks, possibly in place in DDP's buckets) the norms are always computed at the end.
    """

    name = "grad_norms"
    requires = ("grads",)
    hot_min_numel: int = 1 << 16

    def __init__(self, inspector: Inspector):
        super().__init__(inspector)
        self._armed = False
        self._hot: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}  # index -> (grad, version, ‖g‖²)
        self._handles: list[object] = []
        big = [i for i, p in enumerate(inspector.params) if p.numel() >= self.hot_min_numel]
        if big and inspector.wrapper is None and world_size() == 1:
            for i in big:
                self._handles.append(inspector.params[i].register_post_accumulate_grad_hook(self._hook(i)))

    def _hook(self, index: int):
        def post_accumulate(p: torch.Tensor) -> None:
            if not self._armed:
                return
            g = p.grad
            if g is None or g.is_sparse or not g.is_contiguous() or g.dtype not in (torch.float32, torch.float64):
                self._hot.pop(index, None)
                return
            flat = g.detach().view(-1)
            self._hot[index] = (g, g._version, torch.dot(flat, flat))

        return post_accumulate

    def arm(self, ctx: StepContext) -> None:
        self._hot.clear()
        self._armed = True

    def disarm(self, ctx: StepContext) -> None:
        self._armed = False

    def compute(self, ctx: StepContext) -> torch.Tensor:
        grads = ctx.get("grads")
        hot, self._hot = self._hot, {}
        out: list[torch.Tensor | None] = [None] * len(grads)
        for i, (g, version, sq) in hot.items():
            if ctx.params[i].grad is g and g._version == version:
                out[i] = sq.to(torch.float64).sqrt()
        rest = [i for i, v in enumerate(out) if v is None]
        if len(rest) == len(grads):
            return _norms(grads)
        if rest:
            for i, norm in zip(rest, _norms([grads[i] for i in rest])):
                out[i] = norm
        return torch.stack(out)  # type: ignore[arg-type]

    def close(self) -> None:
        for h in self._handles:
            h.remove()  # type: ignore[attr-defined]
        self._handles.clear()
        self._hot.clear()


class ParameterNorms(Provider):
    """Per-parameter norms ‖θ_{t,l}‖₂ of the parameters *before* this step's update."""

    name = "param_norms"

    def before_update(self, ctx: StepContext) -> None:
        # Consumers after the update (update-to-weight ratio) need the norms of θ_t, not θ_{t+1}.
        ctx.get(self.name)

    def compute(self, ctx: StepContext) -> torch.Tensor:
        if ctx.phase == "update":
            return _norms(ctx.get("params_before_update"))
        return _norms([p.detach() for p in ctx.params])


class ParametersBeforeUpdate(Provider):
    """A copy of θ_t taken just before ``optimizer.step()``.

    The copy goes into buffers kept for the whole run: allocating (and page-faulting) a fresh copy of a
    large model every step would cost more than the copy itself. So the tensors are valid during this step
    only: a consumer that keeps θ_t beyond the step must copy it.
    """

    name = "params_before_update"

    def __init__(self, inspector: Inspector):
        super().__init__(inspector)
        self._buffers: list[torch.Tensor] | None = None

    def before_update(self, ctx: StepContext) -> None:
        ctx.get(self.name)

    def compute(self, ctx: StepContext) -> list[torch.Tensor]:
        if ctx.phase == "update":
            raise NotAvailable("the parameters before the update were not captured (no optimizer step hook ran)")
        params = [p.detach() for p in ctx.params]
        if self._buffers is None:
            self._buffers = [torch.empty_like(p) for p in params]
        torch._foreach_copy_(self._buffers, params)
        return self._buffers

    def close(self) -> None:
        self._buffers = None


class Update(Provider):
    """The update actually taken, Δθ_t = θ_{t+1} − θ_t, whatever the optimizer (momentum, Adam, decay).

    Written into buffers kept for the whole run: a fresh 1.3 M-parameter tensor per step cost ~1 ms here
    (allocation and page faults), 4x the subtraction itself. So the tensors are valid during this step only,
    except for an instrument with ``keeps_update = True`` (alpha: it needs the update again at the next step,
    on the next batch): while one is due, two sets of buffers alternate, so the update stays valid during the
    next step on which the update is computed too, without a copy.
    """

    name = "update"
    requires = ("params_before_update",)

    def __init__(self, inspector: Inspector):
        super().__init__(inspector)
        self._buffers: list[list[torch.Tensor]] = []
        self._next = 0

    def compute(self, ctx: StepContext) -> list[torch.Tensor]:
        if ctx.phase != "update" or not ctx.optimizer_stepped:
            raise NotAvailable("no update this step: optimizer.step() did not run (or was skipped)")
        before = ctx.get("params_before_update")
        params = [p.detach() for p in ctx.params]
        sets = 2 if any(getattr(i, "keeps_update", False) for i in ctx.due_instruments) else 1
        while len(self._buffers) < sets:
            self._buffers.append([torch.empty_like(p) for p in params])
        self._next = (self._next + 1) % sets
        buffers = self._buffers[self._next]
        subtract_into(buffers, params, before)
        return buffers

    def close(self) -> None:
        self._buffers = []


class UpdateNorms(Provider):
    """Per-parameter update norms ‖θ_{t+1,l} − θ_{t,l}‖₂."""

    name = "update_norms"
    requires = ("update",)

    def compute(self, ctx: StepContext) -> torch.Tensor:
        return _norms(ctx.get("update"))


class InitialParameters(Provider):
    """θ_0: a copy of the parameters when the inspector was attached, kept for the whole run."""

    name = "initial_params"

    def __init__(self, inspector: Inspector):
        super().__init__(inspector)
        self.initial = torch._foreach_mul([p.detach() for p in inspector.params], 1.0)

    def compute(self, ctx: StepContext) -> list[torch.Tensor]:
        return self.initial

    def close(self) -> None:
        self.initial = []
