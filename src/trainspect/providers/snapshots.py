"""Cheap shared computations on parameters and gradients (no extra forward or backward pass).

Everything here works on flat lists of tensors with ``torch._foreach_*`` kernels: one Python call for all
parameters instead of one per parameter, which is what keeps the per-step cost of the default
instruments small on tiny models (a plain step of the digits MLP takes a fraction of a millisecond).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.optim.optimizer as optimizer_module

from trainspect.engine.context import NotAvailable
from trainspect.engine.distributed import world_size
from trainspect.providers.base import Provider

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext
    from trainspect.engine.inspector import Inspector


def tensor_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per-tensor 2-norms as one float64 vector (float64 so that huge values do not overflow).

    Large contiguous float tensors get ``√(x·x)`` from one ``torch.dot`` each: on CPU it is both faster than
    ``torch._foreach_norm`` (0.98 vs 1.44 ms over the 3.3 M parameters of 2c2d, 2 cores) and more accurate
    (relative error 2e-6 vs 1e-4 against float64 on its 3.2 M-element weight: ``_foreach_norm`` accumulates
    float32 in float32). Both overflow to inf alike once a square exceeds the float32 range.
    """
    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    return _stack64(_norm_list(tensors))


def _norm_list(tensors: list[torch.Tensor], known: dict[int, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """0-d norms, one per tensor, in as few kernel calls as possible (each costs microseconds on a tiny model):
    ``known`` ones as given, large ones by ``torch.dot``, all others by one ``torch._foreach_norm``."""
    out: list[torch.Tensor | None] = [None] * len(tensors)
    if known:
        for i, v in known.items():
            out[i] = v
    for i, t in enumerate(tensors):
        if out[i] is None and _dottable(t):
            flat = t.view(-1)
            out[i] = torch.dot(flat, flat).sqrt()
    small = [i for i, v in enumerate(out) if v is None]
    if len(small) == len(tensors):
        return torch._foreach_norm(tensors)
    if small:
        for i, norm in zip(small, torch._foreach_norm([tensors[i] for i in small])):
            out[i] = norm
    return out  # type: ignore[return-value]


def _stack64(values: list[torch.Tensor]) -> torch.Tensor:
    """One float64 vector from 0-d tensors (one stack and one conversion when they share a dtype)."""
    dtype = values[0].dtype
    if all(v.dtype == dtype for v in values):
        return torch.stack(values).to(torch.float64)
    return torch.stack([v.to(torch.float64) for v in values])


def _dottable(t: torch.Tensor) -> bool:
    return t.numel() >= _LARGE and t.is_contiguous() and t.dtype in (torch.float32, torch.float64) and not t.is_sparse


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


#: elements per block in :func:`difference_norms`: 1 MiB of float32, which stays in a core's L2 cache between
#: being written and being read back
_BLOCK = 1 << 18


def difference_norms(a: list[torch.Tensor], b: list[torch.Tensor],
                     with_norms: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """‖a_l − b_l‖₂ per pair, as one float64 vector, without a difference tensor of the parameters' size; with
    ``with_norms`` also ‖a_l‖₂ from the same read of a (else None).

    Large contiguous float tensors on the CPU are taken a cache-sized block at a time: the block's difference is
    written into a small buffer and its squared norm read back while it is still in cache (measured on the
    784-1000-500-100-10 MLP, 2 cores: 0.44 instead of 0.53 ms for a full-size subtraction and a dot, and no
    5 MB buffer), the squares summed in float64; the block of a is still in cache for its own square. All others
    by one foreach subtraction and norm.
    """
    if not a:
        empty = torch.zeros(0, dtype=torch.float64)
        return empty, (empty if with_norms else None)
    # the blocks' squared norms of every large tensor and the small tensors' norms are read back in one stack each,
    # and the square roots and float64 sums taken in Python: each tensor operation costs microseconds inside a
    # training step, so this does a fixed handful besides the blocks' subtractions and dots
    distances: list[float | torch.Tensor] = [0.0] * len(a)
    own_norms: list[float | torch.Tensor] = [0.0] * len(a)
    squares: list[torch.Tensor] = []
    owners: list[tuple[int, int]] = []  # (0: distance, 1: own norm; tensor index) of each square
    rest: list[int] = []
    block: torch.Tensor | None = None
    for i, (x, y) in enumerate(zip(a, b)):
        if not (_dottable(x) and x.device.type == "cpu" and y.dtype == x.dtype and y.is_contiguous()):
            rest.append(i)
            continue
        fx, fy = x.view(-1), y.view(-1)
        if block is None or block.dtype != x.dtype:
            block = torch.empty(_BLOCK, dtype=x.dtype)
        numel = fx.numel()
        for start in range(0, numel, _BLOCK):
            stop = min(start + _BLOCK, numel)
            part = fx[start:stop]
            d = torch.sub(part, fy[start:stop], out=block[:stop - start])
            squares.append(torch.dot(d, d))
            owners.append((0, i))
            if with_norms:
                squares.append(torch.dot(part, part))
                owners.append((1, i))
    targets = (distances, own_norms)
    if squares:
        sums = [0.0] * (2 * len(a))
        for (kind, i), value in zip(owners, _stack64(squares).tolist()):
            sums[kind * len(a) + i] += value  # float64 sums of the blocks' squares
        for kind, i in set(owners):
            targets[kind][i] = math.sqrt(sums[kind * len(a) + i])
    if rest:
        on_cpu = all(a[i].device.type == "cpu" for i in rest)
        differences = torch._foreach_sub([a[i] for i in rest], [b[i] for i in rest])
        parts = [(distances, torch._foreach_norm(differences))]
        if with_norms:
            parts.append((own_norms, _norm_list([a[i] for i in rest])))
        for target, values in parts:
            # on the CPU read back at once; elsewhere left on the device (no synchronization here)
            for i, v in zip(rest, _stack64(values).tolist() if on_cpu else [v.to(torch.float64) for v in values]):
                target[i] = v
    return _vector(distances), (_vector(own_norms) if with_norms else None)


def _vector(values: list[float | torch.Tensor]) -> torch.Tensor:
    """A float64 vector from Python floats (one tensor creation) or, if some values are device tensors, a stack."""
    if all(type(v) is float for v in values):
        return torch.tensor(values, dtype=torch.float64)
    return torch.stack([v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=torch.float64) for v in values])


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
            grads.append(g.detach() if g.requires_grad else g)  # (a gradient of create_graph=True has a graph)
        return grads


class GradientNorms(Provider):
    """Per-parameter gradient norms ‖∇_{θ_l} L‖₂ (a float64 NumPy vector, one entry per tracked parameter: they
    are read back from the device every step anyway, for the global norm and the non-finite test).

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
        self._small_only = not big and not any(p.numel() >= _LARGE for p in inspector.params)
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

    def compute(self, ctx: StepContext) -> np.ndarray:
        grads = ctx.get("grads")
        if self._small_only:  # a small model: every norm from one foreach call, read back in one stack
            # (stack promotes mixed dtypes: a float32 norm is exact in float64)
            floats = torch.stack(torch._foreach_norm(grads)).tolist() if grads else []
            ctx.offer_floats(self.name, floats)
            return np.array(floats)
        hot, self._hot = self._hot, {}
        params = ctx.params
        # squared norms from the hooks and from one dot per large tensor, norms of the rest from one foreach call;
        # all read back in one stack and conversion, and the square roots taken in Python: this runs every step,
        # and inside a step each distinct tensor operation costs 5–30 µs of cold dispatch on a small model
        values: list[torch.Tensor | None] = [None] * len(grads)
        squared = [False] * len(grads)
        for i, (g, version, sq) in hot.items():
            if params[i].grad is g and g._version == version:
                values[i], squared[i] = sq, True
        for i, t in enumerate(grads):
            if values[i] is None and _dottable(t):
                flat = t.view(-1)
                values[i], squared[i] = torch.dot(flat, flat), True
        small = [i for i, v in enumerate(values) if v is None]
        if small:
            for i, norm in zip(small, torch._foreach_norm([grads[i] for i in small])):
                values[i] = norm
        if not values:
            return np.zeros(0)
        dtype = values[0].dtype  # type: ignore[union-attr]
        read = (torch.stack(values).tolist() if all(v.dtype == dtype for v in values)  # type: ignore[union-attr, arg-type]
                else [v.item() for v in values])  # type: ignore[union-attr]
        floats = [math.sqrt(v) if sq else v for v, sq in zip(read, squared)]
        ctx.offer_floats(self.name, floats)
        return np.array(floats)  # a NumPy vector: a new float64 tensor would cost ~10 µs more in a step

    def close(self) -> None:
        for h in self._handles:
            h.remove()  # type: ignore[attr-defined]
        self._handles.clear()
        self._hot.clear()


def _norms_and_distances(ctx: StepContext, wanted: str) -> torch.Tensor:
    """``param_norms`` or ``param_distances`` (``wanted``); if this step also needs the other one and it is not
    known yet, both from one read of θ_t, the other offered to the context."""
    other = "param_distances" if wanted == "param_norms" else "param_norms"
    both = other in ctx.needed_providers and not ctx.cached(other)
    params = [p.detach() for p in ctx.params]
    if wanted == "param_norms" and not both:
        return tensor_norms(params)
    distances, norms = difference_norms(params, ctx.get("initial_params"), with_norms=both)
    values = {"param_distances": distances, "param_norms": norms}
    if both:
        ctx.offer(other, values[other])
    return values[wanted]  # type: ignore[return-value]


class ParameterNorms(Provider):
    """Per-parameter norms ‖θ_{t,l}‖₂ of the parameters *before* this step's update (with the distances from θ₀
    in the same pass when those are needed too)."""

    name = "param_norms"

    def before_update(self, ctx: StepContext) -> None:
        # Consumers after the update (update-to-weight ratio) need the norms of θ_t, not θ_{t+1}.
        ctx.get(self.name)

    def compute(self, ctx: StepContext) -> torch.Tensor:
        if ctx.phase == "update":
            return tensor_norms(ctx.get("params_before_update"))
        return _norms_and_distances(ctx, self.name)


class ParameterDistances(Provider):
    """‖θ_{t,l} − θ_{0,l}‖₂ per parameter, the distance travelled from the initialization (with the parameter
    norms in the same pass when those are needed too)."""

    name = "param_distances"
    requires = ("initial_params",)

    def compute(self, ctx: StepContext) -> torch.Tensor:
        if ctx.phase == "update":
            raise NotAvailable("the distance from θ₀ is measured at θ_t, before the update: ask for it before the step")
        return _norms_and_distances(ctx, self.name)


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
    """Per-parameter update norms ‖θ_{t+1,l} − θ_{t,l}‖₂.

    In general from the update Δθ_t (a copy of θ_t before the step, then a subtraction: two passes over the
    parameters and a third for the norms). For ``torch.optim.SGD`` with momentum the step is known exactly from
    its own state, so nothing is copied: heavy-ball (any dampening, weight decay or maximize) sets
    θ_{t+1} = θ_t − lr·b_t with its momentum buffer b_t as the step leaves it, so ‖Δθ_l‖ = lr·‖b_l‖. One pass
    instead of three: on the 784-1000-500-100-10 MLP (2 cores) 0.3 instead of 1.3 ms per step.

    That rule is taken only where it holds by construction: the optimizer is exactly ``torch.optim.SGD`` (not
    a subclass, which may step differently), with momentum, without Nesterov or the fused kernel, every tracked
    parameter is in it, no ``GradScaler`` may skip or unscale inside the step, and no other step post-hook may
    change the parameters after it. Which parameters moved is read off the buffers (SGD updates a buffer exactly
    when it moves its parameter), so gradients made inside a closure or zeroed right after the step do not
    matter. Without momentum the update is −lr·∇L with ∇L as it was inside the step (after pre-hooks, closures,
    a framework's clipping), which cannot be known before it: those steps take the copy. Where an update is
    needed as a tensor anyway this step (``update``: the curvature instruments, CABS), its norms are taken from
    it. The two agree up to float32 rounding of θ_{t+1}: per entry ulp(θ)/2, negligible unless the update is
    below the parameters' resolution (update-to-weight ratios of 1e-7), where the rounded update taken may
    differ from the one SGD computed, even be 0.
    """

    name = "update_norms"

    def __init__(self, inspector: Inspector):
        super().__init__(inspector)
        self._rule: SGDStep | None = None  # decided before each step

    def before_update(self, ctx: StepContext) -> None:
        self._rule = None if "update" in ctx.needed_providers else ctx.get("sgd_step")
        if self._rule is None:
            ctx.get("params_before_update")  # the general path needs θ_t before the optimizer overwrites it

    def compute(self, ctx: StepContext) -> torch.Tensor:
        rule, self._rule = self._rule, None
        if rule is None or ctx.phase != "update" or not ctx.optimizer_stepped:
            return tensor_norms(ctx.get("update"))
        lrs = torch.tensor(rule.lr, dtype=torch.float64)
        return lrs * rule.buffer_norms(ctx.params, self.inspector.optimizer)


@dataclass
class SGDStep:
    """``torch.optim.SGD`` with momentum, per tracked parameter, taken just before a step known to be
    θ ← θ − lr·b with the momentum buffer b as the step leaves it (see :func:`sgd_step`)."""

    lr: list[float]
    momentum: list[float]
    dampening: list[float]
    weight_decay: list[float]
    maximize: list[bool]
    #: each parameter's momentum buffer before the step and its in-place version: SGD updates the buffer (in
    #: place, or creates it) exactly when it moves the parameter, so the step's effect is read off the buffers,
    #: whenever and however the gradients were made (inside a closure, zeroed afterwards)
    before: list[tuple[torch.Tensor | None, int]]

    _moved: list[bool] | None = field(default=None, repr=False)
    _buffer_norms: torch.Tensor | None = field(default=None, repr=False)

    # The methods below read the step's effect: call them after the step. Each step has its own SGDStep (the
    # ``sgd_step`` provider's value), so what they compute is kept and shared by its consumers.
    def moved(self, params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> list[bool]:
        """Which parameters the step moved (SGD skips those without gradient)."""
        if self._moved is None:
            out = []
            for p, (old, version) in zip(params, self.before):
                new = optimizer.state.get(p, {}).get("momentum_buffer")
                out.append(new is not None and (new is not old or new._version != version))
            self._moved = out
        return self._moved

    def buffers(self, params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        """The momentum buffers b after the step (the live tensors: valid until the next ``optimizer.step()``);
        a zero of one element for a parameter the step did not move."""
        return [optimizer.state[p]["momentum_buffer"] if m else torch.zeros(1, dtype=p.dtype, device=p.device)
                for p, m in zip(params, self.moved(params, optimizer))]

    def buffer_norms(self, params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> torch.Tensor:
        """‖b_l‖ per parameter (float64), computed once for update norms and alpha."""
        if self._buffer_norms is None:
            self._buffer_norms = tensor_norms(self.buffers(params, optimizer))
        return self._buffer_norms


def sgd_step(inspector: Inspector) -> SGDStep | None:
    """The coming ``optimizer.step()``'s settings if it will be exactly ``torch.optim.SGD``'s θ ← θ − lr·b with
    momentum (b its momentum buffer); None where that cannot be guaranteed (see :class:`UpdateNorms`)."""
    optimizer = inspector.optimizer
    if type(optimizer) is not torch.optim.SGD or inspector.grad_scaler is not None:
        return None
    own = getattr(optimizer, "_optimizer_step_post_hooks", None)
    global_hooks = getattr(optimizer_module, "_global_optimizer_post_hooks", None)
    if own is None or global_hooks is None or len(own) + len(global_hooks) > 1:  # 1: trainspect's own hook
        return None
    by_param: dict[int, tuple[float, float, float, float, bool]] = {}
    for group in optimizer.param_groups:
        momentum = float(group.get("momentum", 0.0))
        # without momentum the update is −lr·∇L with ∇L as it was *inside* the step (after any pre-hook, closure
        # or clipping by a framework): not knowable here, so those take the copy; the fused kernel does not
        # mark the buffers it changes (their in-place version stays), so its steps cannot be read off them
        if group.get("nesterov", False) or momentum == 0.0 or group.get("fused", False):
            return None
        settings = (float(group["lr"]), momentum, float(group.get("dampening", 0.0)),
                    float(group.get("weight_decay", 0.0)), bool(group.get("maximize", False)))
        for p in group["params"]:
            by_param[id(p)] = settings
    rule = [by_param.get(id(p)) for p in inspector.params]
    if any(r is None for r in rule):
        return None
    state = optimizer.state
    before = []
    for p in inspector.params:
        b = state.get(p, {}).get("momentum_buffer") if p in state else None
        before.append((b, b._version if b is not None else -1))
    return SGDStep(*(list(column) for column in zip(*rule)), before=before)  # type: ignore[arg-type]


class SGDStepRule(Provider):
    """:func:`sgd_step` for this step, shared by its consumers (update norms, alpha). It describes the coming
    ``optimizer.step()`` (the momentum buffers as they are before it), so it must be asked for before the step."""

    name = "sgd_step"

    def compute(self, ctx: StepContext) -> SGDStep | None:
        if ctx.phase == "update":
            raise NotAvailable("the SGD rule describes the coming optimizer.step(): ask for it before the step")
        return sgd_step(self.inspector)


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
