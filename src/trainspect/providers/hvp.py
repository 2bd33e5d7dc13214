"""The step's curvature operator (Hessian-vector products) and its extreme eigenvalues, shared per step.

``hessian_operator`` builds one :class:`~trainspect.functional.hvp.HessianOperator` for the mini-batch
loss L(θ_t; x_t, y_t) of the step, in the gradient phase (before ``optimizer.step()``): the user's loss
function is re-evaluated functionally on the batch given to ``inspector.step(x, y)``, so the user's own
``loss.backward()`` needs no ``create_graph=True``. Every curvature instrument of the step (eigenvalues,
trace, sharpness, TIC) multiplies with the same operator, so its forward and first backward are paid once.

Under ``torch.distributed`` each product is averaged over the processes (one all-reduce per product), so
the operator is the Hessian of the global mini-batch loss (mean over ranks) and every rank runs the same
Lanczos iteration; with one process there is no communication.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from trainspect.engine.context import NotAvailable
from trainspect.engine.distributed import all_reduce_sum, world_size
from trainspect.functional.diagonal import ggn_diagonal
from trainspect.functional.hvp import HessianOperator, unflatten
from trainspect.functional.lanczos import LanczosResult, lanczos_extreme_eigenvalues
from trainspect.functional.trace import exact_diagonal
from trainspect.providers.base import Provider

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext


class ProcessAveragedOperator:
    """Wraps an operator so each product is averaged over the processes of a distributed run."""

    def __init__(self, operator: HessianOperator):
        self.operator = operator
        self.dim = operator.dim
        self.world = world_size()

    @property
    def num_matvecs(self) -> int:
        return self.operator.num_matvecs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.operator, name)

    def _average(self, x: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return x
        (total,) = all_reduce_sum([x])
        return total / self.world

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._average(self.operator.matvec(v))

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self._average(self.operator.matmat(V))


def basis_dtype(dim: int, param_dtype: torch.dtype) -> torch.dtype:
    """float64 Krylov/probe vectors for models up to a million parameters, else the parameters' dtype.

    float64 makes the reorthogonalization and the trace sums exact to far below the estimators' own error;
    above 1M parameters the memory of max_iter basis vectors (8 bytes × dim × max_iter) matters more.
    """
    return torch.float64 if dim <= 1_000_000 or param_dtype == torch.float64 else torch.float32


def curvature_data(ctx: StepContext) -> tuple[Any, Any, int | None]:
    """(inputs, targets, batch size) the curvature is measured on: the inspector's ``curvature_batch`` if
    one was given (a fixed batch, moved to the parameters' device), else the step's own batch."""
    fixed = ctx.inspector.curvature_batch
    if isinstance(fixed, str) and ctx.inputs is not None and ctx.targets is not None:
        # "first", and the batch reached the inspector only after the step began (e.g. the transformers
        # callback sees it in a forward hook): this step's batch is the first one seen
        from trainspect.engine.inspector import _copy_batch

        fixed = ctx.inspector.curvature_batch = _copy_batch(ctx.inputs, ctx.targets)
    if isinstance(fixed, tuple):
        device = ctx.params[0].device
        if ctx.inspector._curvature_batch_device != device:  # moved once, not at every measurement
            from torch.utils._pytree import tree_map

            fixed = tree_map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, fixed)
            ctx.inspector.curvature_batch, ctx.inspector._curvature_batch_device = fixed, device
        inputs, targets = fixed
        first = inputs if isinstance(inputs, torch.Tensor) else targets
        n = int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() > 0 else None
        return inputs, targets, n
    if ctx.inputs is None or ctx.targets is None:
        raise RuntimeError(
            "curvature instruments need the step's batch: wrap the step as `with inspector.step(x, y): ...` "
            "(inputs and targets), or pass a fixed curvature_batch=(inputs, targets) to trainspect.attach, so "
            "that the loss can be re-evaluated for Hessian-vector products"
        )
    return ctx.inputs, ctx.targets, ctx.batch_size


class HessianOperatorProvider(Provider):
    """H_t = ∇²_θ L(θ_t; x_t, y_t) as a linear operator (double backward, built once per step)."""

    name = "hessian_operator"

    def compute(self, ctx: StepContext) -> ProcessAveragedOperator:
        if ctx.phase == "update":
            raise NotAvailable("the Hessian operator is built from θ_t, which the optimizer step has replaced")
        loss_fn = ctx.inspector.user_loss_fn
        if loss_fn is None:
            raise RuntimeError(
                "curvature instruments need the loss function: pass it to trainspect.attach(model, optimizer, "
                "loss_fn=...) so that the loss can be re-evaluated for Hessian-vector products"
            )
        inputs, targets, _ = curvature_data(ctx)
        op = HessianOperator(ctx.model, loss_fn, inputs, targets, params=ctx.params)
        return ProcessAveragedOperator(op)


#: instruments that need the largest / the smallest Hessian eigenvalue from the shared Lanczos run
NEEDS_LARGEST = {"hessian_max_eigenvalue", "sharpness"}
NEEDS_SMALLEST = {"hessian_min_eigenvalue"}


class HessianExtremeEigenvalues(Provider):
    """λ_max and λ_min of H_t by one Lanczos run (both ends from the same products).

    Only the ends that this step's due instruments need must converge: if just the largest is wanted,
    Lanczos stops as soon as it has converged. Warm start: the Krylov space starts from the previous
    measurement's Ritz vectors (plus 5 % random noise, so no direction is missing), because the dominant
    eigenvectors move slowly during training. How much that saves depends on the data the curvature is
    measured on (``curvature_batch`` of :class:`~trainspect.engine.inspector.Inspector`). Measured along
    Adam training on digits (``benchmarks/curvature.py``, Gauss–Radau estimate, median products to 1e-3 at
    the logarithmic schedule between steps 100 and 398): on each step's own batch (default) the warm start
    saves little, 5 → 4.5 (MLP), 5 → 3.5 (CNN), 6 → 3.5 (transformer), because the top eigenvector of one
    batch's Hessian is only a fair start for another batch's (cosine 0.2–0.9); on a fixed curvature batch,
    where it changes only as θ does, 5 → 3, 5 → 2 and 6 → 3.5. The noise level does not matter (5 %, 1 %,
    0.1 % and none give the same counts); starting from sums of the previous top 2–10 eigenvectors, or
    spending products on them first (block start), or adding the gradient was no better or worse. Class
    attributes (set before attaching to change them): ``rtol`` (relative accuracy, default 1e-3), ``max_iter``
    (products, default 100, Cockpit's budget), ``warm_start``.
    """

    name = "hessian_extreme_eigenvalues"
    requires = ("hessian_operator",)
    rtol: ClassVar[float] = 1e-3
    max_iter: ClassVar[int] = 100
    warm_start: ClassVar[bool] = True

    def __init__(self, inspector: Any):
        super().__init__(inspector)
        self._previous: dict[str, torch.Tensor] = {}

    def compute(self, ctx: StepContext) -> LanczosResult:
        op = ctx.get("hessian_operator")
        due = {i.name for i in ctx.due_instruments}
        want_hi, want_lo = bool(due & NEEDS_LARGEST), bool(due & NEEDS_SMALLEST)
        which = "both" if want_hi == want_lo else ("largest" if want_hi else "smallest")
        dtype = basis_dtype(op.dim, op.dtype)
        start = self._start(op.dim, which, ctx.step, dtype) if self.warm_start else None
        before = op.num_matvecs
        result = lanczos_extreme_eigenvalues(
            op.matvec, op.dim, rtol=self.rtol, max_iter=self.max_iter, seed=ctx.step,
            dtype=dtype, device=op.device, which=which, return_vectors=self.warm_start, start=start,
        )
        result.num_matvecs = op.num_matvecs - before
        if self.warm_start:
            self._previous = {"largest": result.largest_vector, "smallest": result.smallest_vector}
            result.largest_vector = result.smallest_vector = None  # kept here, not in the step's cache
        return result

    def _start(self, dim: int, which: str, step: int, dtype: torch.dtype) -> torch.Tensor | None:
        """Previous Ritz vector(s) of the wanted ends + 5 % noise (None on the first call)."""
        ends = ["largest", "smallest"] if which == "both" else [which]
        vecs = [self._previous.get(e) for e in ends]
        if any(v is None or v.shape != (dim,) for v in vecs):
            return None
        start = sum(v.to(dtype) for v in vecs)
        gen = torch.Generator().manual_seed(step)
        noise = torch.randn(dim, generator=gen, dtype=torch.float64).to(dtype=dtype, device=start.device)
        start = start / start.norm() + 0.05 * noise / noise.norm()
        return start

    def close(self) -> None:
        self._previous = {}


@dataclass
class HessianDiagonalValue:
    """diag of the curvature of the *mean* mini-batch loss, one tensor per tracked parameter.

    Attributes:
        diagonal: the diagonal entries, per parameter (parameter's shape).
        kind: ``"hessian"`` (exact diag(H), one product per parameter) or ``"ggn"`` (exact diag of the
            generalized Gauss-Newton matrix, for models too large for the first).
    """

    diagonal: list[torch.Tensor]
    kind: str


class HessianDiagonal(Provider):
    """The exact curvature diagonal of the step's mean loss, for TIC (Cockpit's ``DiagHessian``/``DiagGGNExact``).

    Models with at most ``exact_max_dim`` parameters (default 4096) get the exact Hessian diagonal from
    ``dim`` Hessian-vector products (any twice-differentiable model); larger ones the exact GGN diagonal
    (:func:`~trainspect.functional.diagonal.ggn_diagonal`; K per-sample passes, K = outputs per sample),
    which needs a per-sample loss and a model that treats samples independently. A ``reduction="sum"``
    loss is rescaled by 1/N, because Cockpit's definitions (TIC) use the mean loss.
    """

    name = "hessian_diagonal"
    requires = ("hessian_operator",)
    exact_max_dim: ClassVar[int] = 4096

    def compute(self, ctx: StepContext) -> HessianDiagonalValue:
        op = ctx.get("hessian_operator")
        inputs, targets, n = curvature_data(ctx)
        if op.dim <= self.exact_max_dim:
            flat = exact_diagonal(op.matmat, op.dim, dtype=basis_dtype(op.dim, op.dtype), device=op.device)
            diag, kind = unflatten(flat, [p.shape for p in ctx.params]), "hessian"
        else:
            try:
                diag = ggn_diagonal(ctx.model, ctx.inspector.user_loss_fn, inputs, targets, ctx.param_names)
            except Exception as error:
                raise RuntimeError(
                    f"hessian_diagonal: the model has {op.dim} parameters (> exact_max_dim = {self.exact_max_dim}), "
                    "so the curvature diagonal for TIC is the exact GGN diagonal, which evaluates the model one "
                    f"sample at a time and failed ({type(error).__name__}: {error}). Models that mix samples "
                    "(BatchNorm in training mode) or return several outputs need the exact Hessian diagonal: set "
                    "trainspect.providers.hvp.HessianDiagonal.exact_max_dim above the parameter count "
                    "(one Hessian-vector product per parameter)"
                ) from error
            diag, kind = all_reduce_sum(diag), "ggn"
            if world_size() > 1:
                diag = [d / world_size() for d in diag]
        if ctx.loss_reduction == "sum":
            if not n:
                raise RuntimeError("hessian_diagonal: cannot tell the batch size to rescale a reduction='sum' loss")
            diag = [d / n for d in diag]
        return HessianDiagonalValue(diag, kind)
