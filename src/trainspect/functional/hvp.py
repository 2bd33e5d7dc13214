"""Curvature matrices of the mini-batch loss as matrix-free linear operators (curvlinops-style).

``HessianOperator`` multiplies by the Hessian ∇²_θ L(θ; x, y) of the user's loss, ``GGNOperator`` by the
generalized Gauss-Newton matrix G = Jᵀ (∇²_f ℓ) J (Schraudolph 2002; Martens 2010), with J = ∂f/∂θ the
Jacobian of the model output and ∇²_f ℓ the Hessian of the loss with respect to the output. Both act on
*flat* vectors: the concatenation of the selected parameters in order, so that estimators (Lanczos,
Hutchinson, Hutch++) only see ``dim``, ``matvec`` and ``matmat``.

How the products are computed (chosen by measurement, see ``benchmarks/curvature.py`` and
``docs/curvature.md``):

* ``method="double_backward"`` (default): one forward and one backward with ``create_graph=True`` when the
  operator is built, then every Hessian-vector product Hv = ∂(∇L·v)/∂θ is one extra backward through that
  stored gradient graph (Pearlmutter 1994). The forward and first backward are paid **once per step**, not
  once per product, which is what made it the fastest on the digits MLP/CNN and a small transformer on CPU
  (1.5-2.1x faster per product than forward-over-reverse, which re-runs the forward and backward for every
  product; forward-over-reverse also fails for ``MSELoss`` in torch 2.13). A block of k products
  (``matmat``) is one vmapped backward (``is_grads_batched``), falling back to a loop for operations
  without a batching rule.
* ``method="forward_over_reverse"``: ``jvp(grad(L))`` with ``torch.func`` (curvlinops' recipe): no stored
  graph (lower memory), a full forward+backward per product; ``matmat`` is ``vmap`` over it.

The loss is re-evaluated functionally (``torch.func.functional_call``) on the module's own parameters: the
user's ``loss.backward()`` needs no ``create_graph`` and the model is not modified. Buffers are *copied*
for the re-evaluation so that a BatchNorm in training mode does not update its running statistics a
second time. A model with dropout gets one mask for the whole operator (double backward), so all products
of one step see the same function.

Why not ``curvlinops-for-pytorch``: its ``HessianLinearOperator`` is the ``forward_over_reverse`` recipe
above plus a data-loader loop, determinism check and SciPy export. Measured in ``benchmarks/curvature.py``
(version 3.0.1) it is 2.6-3.9x slower per product than the double-backward operator here on the digits
CNN/MLP (it cannot reuse the forward/backward across the products of one step), it fails on a transformer
on CPU (no forward-mode AD for the fused attention kernel), and it would add a dependency to the core
install for ~200 lines of code. Its estimators (Hutch++, XTrace) follow the same
papers as ``trainspect.functional.trace``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from trainspect.functional.model_loss import call_model

_METHODS = ("double_backward", "forward_over_reverse")


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one flat vector (parameter order)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: torch.Tensor, shapes: Sequence[torch.Size]) -> list[torch.Tensor]:
    """Split a flat vector (or a ``[k, dim]`` block) back into tensors of the given shapes."""
    lead = vector.shape[:-1]
    out, start = [], 0
    for shape in shapes:
        n = 1
        for s in shape:
            n *= s
        out.append(vector[..., start:start + n].reshape(*lead, *shape))
        start += n
    return out


def _resolve_params(model: nn.Module, params: Sequence[torch.Tensor] | None) -> tuple[list[str], list[torch.Tensor]]:
    """Names and tensors of the parameters the operator differentiates with respect to (deduplicated)."""
    named: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) not in seen:
            seen.add(id(p))
            named.append((name, p))
    if params is None:
        chosen = [(n, p) for n, p in named if p.requires_grad]
    else:
        by_id = {id(p): n for n, p in named}
        chosen = []
        for i, p in enumerate(params):
            if id(p) not in by_id:
                raise ValueError(
                    f"curvature operator: params[{i}] (shape {tuple(p.shape)}) is not a parameter of the model "
                    f"{type(model).__name__}; pass tensors from model.parameters()"
                )
            chosen.append((by_id[id(p)], p))
    if not chosen:
        raise ValueError(f"curvature operator: the model {type(model).__name__} has no parameters to differentiate")
    return [n for n, _ in chosen], [p for _, p in chosen]


class _CurvatureOperator:
    """Shared plumbing: parameter selection, flat-vector conversion, the re-evaluated loss."""

    SELF_ADJOINT = True

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[..., torch.Tensor],
        inputs: Any,
        targets: Any,
        params: Sequence[torch.Tensor] | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"curvature operator: model must be an nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"curvature operator: loss_fn must be callable, got {type(loss_fn).__name__}")
        self.model = model
        self.loss_fn = loss_fn
        self.inputs = inputs
        self.targets = targets
        self.param_names, self.params = _resolve_params(model, params)
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.dim = sum(self.numels)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.num_matvecs = 0  # products computed so far (a block of k counts k)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dim, self.dim)

    def _state(self, values: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        # Buffers are cloned: a BatchNorm in training mode updates its running statistics in place during
        # the forward, and the user's model must not see a second update from our re-evaluation.
        state: dict[str, torch.Tensor] = {k: v.detach().clone() for k, v in self.model.named_buffers()}
        state.update({k: v.detach() for k, v in self.model.named_parameters()})
        state.update(zip(self.param_names, values))
        return state

    def model_output(self, values: Sequence[torch.Tensor]) -> Any:
        # The fused CPU/GPU attention kernels have no second derivative (nor forward-mode AD); the "math"
        # kernel is plain differentiable ops, so attention models become twice differentiable.
        with sdpa_kernel(SDPBackend.MATH):
            return call_model(self.model, self._state(values), self.inputs)

    def loss(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        out = self.loss_fn(self.model_output(values), self.targets)
        if not isinstance(out, torch.Tensor) or out.numel() != 1:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"curvature operator: the loss must be a scalar tensor, got {shape}")
        return out.reshape(())

    def _check_vector(self, v: torch.Tensor, what: str) -> None:
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{type(self).__name__}.{what}: expected a torch.Tensor, got {type(v).__name__}")
        size = v.shape[0] if v.dim() >= 1 else -1
        if size != self.dim or v.dim() > 2:
            raise ValueError(
                f"{type(self).__name__}.{what}: expected shape [{self.dim}]"
                f"{' or [' + str(self.dim) + ', k]' if what == 'matmat' else ''} (the number of selected "
                f"parameters), got {tuple(v.shape)}"
            )

    def _blocks(self, v: torch.Tensor) -> list[torch.Tensor]:
        return unflatten(v.to(self.dtype), self.shapes)

    # -- the public interface -------------------------------------------------------------------------
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """A·v for a flat vector ``v`` of length ``dim`` (returned in ``v``'s dtype)."""
        self._check_vector(v, "matvec")
        if v.dim() != 1:
            raise ValueError(f"{type(self).__name__}.matvec: expected a 1-D vector, got shape {tuple(v.shape)}")
        self.num_matvecs += 1
        return flatten(self._matvec(self._blocks(v))).to(v.dtype)

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """A·V for a block ``V`` of shape ``[dim, k]`` (k products, batched where the model allows)."""
        self._check_vector(V, "matmat")
        if V.dim() == 1:
            return self.matvec(V)
        k = V.shape[1]
        self.num_matvecs += k
        if k == 0:
            return V.clone()
        rows = V.T.contiguous()  # [k, dim]
        blocks = self._matmat(self._blocks(rows))
        return torch.cat([b.reshape(k, -1) for b in blocks], dim=1).T.to(V.dtype)

    def __matmul__(self, other: torch.Tensor) -> torch.Tensor:
        return self.matvec(other) if other.dim() == 1 else self.matmat(other)

    def to_dense(self) -> torch.Tensor:
        """The full ``dim × dim`` matrix (``dim`` products): for tests and tiny models only."""
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return self.matmat(eye)

    def _matvec(self, v: list[torch.Tensor]) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _matmat(self, rows: list[torch.Tensor]) -> list[torch.Tensor]:
        """Default block product: a Python loop over the k rows."""
        k = rows[0].shape[0]
        cols = [self._matvec([r[i] for r in rows]) for i in range(k)]
        return [torch.stack([c[j] for c in cols]) for j in range(len(rows))]


class HessianOperator(_CurvatureOperator):
    """The Hessian H = ∇²_θ L(θ; x, y) of the mini-batch loss, as a linear operator on flat vectors.

    Args:
        model: the module; its current parameter values are θ.
        loss_fn: ``loss_fn(model(inputs), targets) -> scalar`` (its own reduction, e.g. mean).
        inputs, targets: the mini-batch.
        params: the parameters to differentiate (default: every trainable one, ``named_parameters`` order).
        method: ``"double_backward"`` (default; one stored gradient graph reused by every product) or
            ``"forward_over_reverse"`` (``torch.func.jvp(grad)``; no stored graph, more compute).

    Attributes:
        dim: number of selected parameters; ``matvec`` takes and returns vectors of this length.
        loss_value, gradient: L(θ) and ∇L(θ) (flat), by-products of building the operator (double backward).
        num_matvecs: number of products computed so far.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[..., torch.Tensor],
        inputs: Any,
        targets: Any,
        params: Sequence[torch.Tensor] | None = None,
        *,
        method: str = "double_backward",
    ):
        super().__init__(model, loss_fn, inputs, targets, params)
        if method not in _METHODS:
            raise ValueError(f"HessianOperator: method must be one of {_METHODS}, got {method!r}")
        self.method = method
        self._values = tuple(p.detach() for p in self.params)
        self._batched_backward = True
        self.loss_value: torch.Tensor | None = None
        self._grads: tuple[torch.Tensor, ...] | None = None
        if method == "double_backward":
            # Linearize once: the gradient with its graph; every product is one backward through it.
            leaves = tuple(v.detach().requires_grad_(True) for v in self._values)
            with torch.enable_grad():
                loss = self.loss(leaves)
                grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
            self._leaves = leaves
            # A parameter the loss does not depend on has a zero gradient and zero curvature.
            self._grads = tuple(
                g if g is not None else torch.zeros_like(v) for g, v in zip(grads, leaves)
            )
            self._connected = [g is not None and g.requires_grad for g in grads]
            self.loss_value = loss.detach()

    @property
    def gradient(self) -> torch.Tensor:
        """∇L(θ) as a flat vector (a by-product of the double-backward build)."""
        if self._grads is None:
            grads = torch.func.grad(lambda vals: self.loss(vals))(self._values)
            return flatten(grads).detach()
        return flatten([g.detach() for g in self._grads])

    def _hvp_autograd(self, v: list[torch.Tensor], batched: bool) -> list[torch.Tensor]:
        outs = [g for g, c in zip(self._grads, self._connected) if c]
        vs = [x for x, c in zip(v, self._connected) if c]
        if not outs:
            return [torch.zeros_like(x) for x in v]
        res = torch.autograd.grad(
            outs, self._leaves, grad_outputs=vs, retain_graph=True, allow_unused=True, is_grads_batched=batched
        )
        return [r if r is not None else torch.zeros_like(x) for r, x in zip(res, v)]

    def _hvp_functorch(self, v: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        grad_fn = torch.func.grad(lambda vals: self.loss(vals))
        return torch.func.jvp(grad_fn, (self._values,), (tuple(v),))[1]

    def _matvec(self, v: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.method == "double_backward":
            return self._hvp_autograd(v, batched=False)
        return list(self._hvp_functorch(v))

    def _matmat(self, rows: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.method == "double_backward":
            if self._batched_backward:
                try:
                    return self._hvp_autograd(rows, batched=True)
                except Exception:  # an op without a vmap batching rule: loop instead, from now on
                    self._batched_backward = False
            return super()._matmat(rows)
        return list(torch.func.vmap(self._hvp_functorch, randomness="same")(tuple(rows)))


class GGNOperator(_CurvatureOperator):
    """The generalized Gauss-Newton matrix G = Jᵀ (∇²_f ℓ) J of the mini-batch loss (Schraudolph 2002).

    f = model output, J = ∂f/∂θ, ∇²_f ℓ = Hessian of the loss with respect to the output. G is positive
    semi-definite whenever the loss is convex in the output (mean-squared error, cross-entropy, …), and
    equals the Hessian minus the terms Σ_c (∂ℓ/∂f_c) ∇²_θ f_c from the model's own second derivatives
    (these vanish for a model linear in θ, and near a perfect fit where ∂ℓ/∂f → 0).

    Each product is three autograd passes through graphs built once: J·v by the double-vjp trick, (∇²_f ℓ)·u
    by a backward through the output-gradient graph, and Jᵀ·w by a backward through the model.
    The model output must be a single tensor.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[..., torch.Tensor],
        inputs: Any,
        targets: Any,
        params: Sequence[torch.Tensor] | None = None,
    ):
        super().__init__(model, loss_fn, inputs, targets, params)
        leaves = tuple(p.detach().requires_grad_(True) for p in self.params)
        with torch.enable_grad():
            out = self.model_output(leaves)
            if not isinstance(out, torch.Tensor):
                raise TypeError(
                    f"GGNOperator: the model output must be one tensor (got {type(out).__name__}); the GGN "
                    "J^T H J needs the loss as a function of a single output tensor"
                )
            out_leaf = out.detach().requires_grad_(True)
            loss = self.loss_fn(out_leaf, self.targets)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError("GGNOperator: the loss must be a scalar tensor")
            (grad_out,) = torch.autograd.grad(loss.reshape(()), out_leaf, create_graph=True)
            # double-vjp trick: g(u) = Jᵀu is linear in u, so ∂(Jᵀu · v)/∂u = J v.
            dummy = torch.zeros_like(out, requires_grad=True)
            jt_dummy = torch.autograd.grad(out, leaves, dummy, create_graph=True, allow_unused=True)
        self._leaves, self._out, self._out_leaf, self._grad_out = leaves, out, out_leaf, grad_out
        self._dummy = dummy
        self._connected = [g is not None for g in jt_dummy]
        self._jt_dummy = [g for g in jt_dummy if g is not None]
        self.loss_value = loss.detach()
        self._loss_is_quadratic_free = grad_out.requires_grad  # False: ∇²_f ℓ = 0 (loss linear in f)

    def _jvp(self, v: list[torch.Tensor], batched: bool) -> torch.Tensor:
        vs = [x for x, c in zip(v, self._connected) if c]
        if not vs:
            shape = (v[0].shape[0], *self._out.shape) if batched else self._out.shape
            return torch.zeros(shape, dtype=self._out.dtype, device=self._out.device)
        (jv,) = torch.autograd.grad(self._jt_dummy, self._dummy, vs, retain_graph=True, is_grads_batched=batched)
        return jv

    def _products(self, v: list[torch.Tensor], batched: bool) -> list[torch.Tensor]:
        jv = self._jvp(v, batched)
        if not self._loss_is_quadratic_free:
            return [torch.zeros_like(x) for x in v]
        (hjv,) = torch.autograd.grad(self._grad_out, self._out_leaf, jv, retain_graph=True, is_grads_batched=batched)
        res = torch.autograd.grad(
            self._out, self._leaves, hjv, retain_graph=True, allow_unused=True, is_grads_batched=batched
        )
        return [r if r is not None else torch.zeros_like(x) for r, x in zip(res, v)]

    def _matvec(self, v: list[torch.Tensor]) -> list[torch.Tensor]:
        return self._products(v, batched=False)

    def _matmat(self, rows: list[torch.Tensor]) -> list[torch.Tensor]:
        try:
            return self._products(rows, batched=True)
        except Exception:
            return super()._matmat(rows)
