"""The per-step context: what one training step exposes to providers and instruments."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from trainspect.engine.inspector import Inspector


class ProviderError(RuntimeError):
    """A shared per-step computation failed; every instrument that needs it steps aside this step."""


class NotAvailable(ProviderError):
    """A value that does not exist this step (e.g. no update: the optimizer step was skipped).

    Not a failure: the instruments that need it are skipped for this step only.
    """


class _RunStructure:
    """The run's model, optimizer and tracked parameters, read through ``self.inspector``."""

    __slots__ = ()
    inspector: Inspector

    @property
    def model(self) -> torch.nn.Module:
        return self.inspector.model

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        return self.inspector.optimizer

    @property
    def params(self) -> list[torch.nn.Parameter]:
        """Tracked parameters: trainable (``requires_grad``), each once, in ``named_parameters`` order."""
        return self.inspector.params

    @property
    def param_names(self) -> list[str]:
        return self.inspector.param_names


class StepContext(_RunStructure):
    """Everything known about one optimizer step, and the per-step cache of shared computations.

    Providers are computed lazily by :meth:`get`, at most once per step, and released with the context
    at the end of the step. Phases, in order: ``"forward"`` (inside the user's ``with`` block),
    ``"gradients"`` (gradients final, parameters still θ_t), ``"update"`` (after ``optimizer.step()``,
    parameters are θ_{t+1}).

    Attributes:
        step: global step index t (0-based count of optimizer steps seen).
        inputs, targets: the batch the user passed to ``inspector.step``.
        loss: the mini-batch loss tensor (captured from the loss module, or set by the user).
        loss_reduction: ``"mean"`` or ``"sum"``: how the loss combines per-sample losses.
        model_output, loss_target: the loss function's arguments, when captured from a loss module.
        values: the named values computed so far this step.
        extras: non-numeric results an instrument hands to the checks this step (e.g. the name of the first
            module whose output became non-finite); not recorded as series.
        num_micro_batches: how many micro-batches (losses) this optimizer step accumulated (gradient
            accumulation: ``inputs``/``targets``/``model_output``/``loss_target`` then hold all of them,
            concatenated, and ``loss`` is the loss of the whole step).
        local_loss: under ``torch.distributed``, this rank's own loss (``loss`` is then the global batch's).
        global_batch_size: under ``torch.distributed``, the number of samples over all ranks.
        nonfinite_loss_ranks: under ``torch.distributed``, the ranks whose local loss was NaN/inf.
        amp: with a GradScaler, ``{"loss_scale": float, "skipped": bool}`` (the scaler skipped the step).
    """

    # immutable defaults live on the class (an assignment shadows them per step): a context is created on every
    # step, and each attribute set in __init__ costs time there
    loss: torch.Tensor | None = None
    model_output: Any = None
    loss_target: Any = None
    phase = "forward"
    optimizer_stepped = False
    t_optimizer: float | None = None
    user_seconds = 0.0
    overhead_seconds = 0.0
    num_micro_batches = 0
    local_loss: torch.Tensor | None = None
    global_batch_size: int | None = None
    amp: dict[str, Any] | None = None
    _loss_value: tuple[Any, float] = (None, math.nan)
    # set by the engine when the step begins
    due_instruments: list = []  # noqa: RUF012 - replaced, never mutated
    scheduled_instruments: list = []  # noqa: RUF012 - due by schedule, disabled ones included (same on every rank)
    needed_providers: frozenset[str] | set[str] = frozenset()
    #: the engine's plan for this step (``Inspector._plan``)
    plan: tuple[Any, ...] = (frozenset(), (), (), (), (), (), (), ())

    def __init__(self, inspector: Inspector, step: int, inputs: Any = None, targets: Any = None):
        self.inspector = inspector
        self.step = step
        self.inputs = inputs
        self.targets = targets
        self.loss_reduction: str = inspector.loss_reduction
        self.values: dict[str, Any] = {}
        self.extras: dict[str, Any] = {}
        self.t_enter = time.perf_counter()
        self.nonfinite_loss_ranks: list[int] = []
        self._micro: list[tuple[Any, Any]] = [] if inputs is None and targets is None else [(inputs, targets)]
        self._micro_losses: list[tuple[torch.Tensor, int]] = []
        self._micro_outputs: list[tuple[Any, Any]] = []
        self._cache: dict[str, Any] = {}
        self._failed: dict[str, BaseException] = {}
        self._computing: set[str] = set()

    # -- the model, as tracked: model, optimizer, params, param_names (_RunStructure) ------------------------
    @property
    def batch_size(self) -> int | None:
        """Number of samples in the step's batch (first dimension of the inputs or targets)."""
        for candidate in (self.inputs, self.targets, self.loss_target):
            if isinstance(candidate, torch.Tensor) and candidate.dim() > 0:
                return int(candidate.shape[0])
            if isinstance(candidate, (list, tuple)) and candidate and isinstance(candidate[0], torch.Tensor):
                return int(candidate[0].shape[0])
            if isinstance(candidate, dict):
                for v in candidate.values():
                    if isinstance(v, torch.Tensor) and v.dim() > 0:
                        return int(v.shape[0])
        return None

    # -- gradient accumulation: several micro-batches (and losses) per optimizer step --------------------
    def add_micro_batch(self, inputs: Any, targets: Any = None) -> None:
        """One more micro-batch: ``inputs``/``targets`` become the concatenation over all of them."""
        self._micro.append((inputs, targets))
        self.inputs = _concat([m[0] for m in self._micro])
        self.targets = _concat([m[1] for m in self._micro])

    @property
    def micro_batch_index(self) -> int:
        """Index of the micro-batch whose forward pass is running (0 without gradient accumulation).

        Counted from both signals an accumulation loop gives: micro-batches added (``add_batch``, before
        their forward) and losses seen (after their forward). Per-sample capture tags each layer call with it,
        so that the calls of k micro-batches are concatenated (k·B samples), not summed.
        """
        return max(len(self._micro) - 1, self.num_micro_batches, 0)

    def set_targets(self, targets: Any) -> None:
        """The targets of the latest micro-batch, when they become known after its inputs (``trainspect run``)."""
        if self._micro:
            self._micro[-1] = (self._micro[-1][0], targets)
        else:
            self._micro.append((self.inputs, targets))
        self.inputs = _concat([m[0] for m in self._micro])
        self.targets = _concat([m[1] for m in self._micro])

    def add_loss(self, loss: torch.Tensor, args: Any = None) -> None:
        """Record the loss of one micro-batch (and the loss function's arguments, if known).

        The first loss of the step is kept as it is (with its graph). Further ones (gradient accumulation)
        are combined into the loss of the whole step, detached: Σ_j n_j L_j / Σ_j n_j for a mean reduction
        (n_j: micro-batch size), Σ_j L_j for a sum; ``model_output``/``loss_target`` are concatenated.
        """
        output = args[0] if args else None
        target = args[1] if args and len(args) > 1 else None
        n = 1
        for candidate in (target, output):
            if isinstance(candidate, torch.Tensor) and candidate.dim() > 0:
                n = int(candidate.shape[0])
                break
        self._micro_losses.append((loss, n))
        self._micro_outputs.append((output, target))
        self.num_micro_batches = len(self._micro_losses)
        if self.num_micro_batches == 1:
            self.loss = loss
            if args:
                self.model_output, self.loss_target = output, target
            return
        values = torch.stack([l.detach().reshape(()).to(torch.float64) for l, _ in self._micro_losses])
        if self.loss_reduction == "mean":
            sizes = torch.tensor([k for _, k in self._micro_losses], dtype=torch.float64, device=values.device)
            self.loss = (values * sizes).sum() / sizes.sum()
        else:
            self.loss = values.sum()
        if args:
            self.model_output = _concat([o for o, _ in self._micro_outputs], detach=True)
            self.loss_target = _concat([t for _, t in self._micro_outputs], detach=True)

    # -- shared computations ------------------------------------------------------------------------
    def get(self, name: str) -> Any:
        """The value of provider ``name`` for this step, computed once and cached.

        Raises:
            ProviderError: if the provider failed (now or earlier this step).
        """
        if name in self._cache:
            return self._cache[name]
        if name in self._failed:
            if isinstance(self._failed[name], NotAvailable):
                raise self._failed[name]
            raise ProviderError(f"provider {name!r} failed this step: {self._failed[name]}") from self._failed[name]
        if name in self._computing:
            raise ProviderError(f"provider {name!r} depends on itself")
        provider = self.inspector.provider(name)
        self._computing.add(name)
        try:
            value = provider.compute(self)
        except NotAvailable as error:
            self._failed[name] = error
            raise
        except Exception as error:  # recorded, re-raised as a ProviderError for the consumer
            self._failed[name] = error
            raise ProviderError(f"provider {name!r} failed: {error}") from error
        finally:
            self._computing.discard(name)
        self._cache[name] = value
        return value

    def floats(self, name: str) -> list[float]:
        """Provider ``name``'s 1-D tensor as Python floats, converted once per step (one device sync, and
        cheap arithmetic for the instruments that need a few scalars from it)."""
        key = name + ":floats"
        out = self._cache.get(key)
        if out is None:
            out = self._cache[key] = self.get(name).tolist()
        return out

    @property
    def loss_value(self) -> float | None:
        """The step's loss as a float (converted once, and again only if the loss is replaced, e.g. by the
        global batch's loss under ``torch.distributed``)."""
        loss = self.loss
        if loss is None:
            return None
        if self._loss_value[0] is not loss:
            # .item() reads a one-element tensor whether or not it requires grad: one operation, where
            # detach/reshape/float were three (each costs microseconds of dispatch inside a step)
            value = loss.item() if isinstance(loss, torch.Tensor) else float(loss)
            self._loss_value = (loss, value)
        return self._loss_value[1]

    def offer_floats(self, name: str, values: list[float]) -> None:
        """Provide what :meth:`floats` would return for provider ``name``, when its provider had the floats first
        (e.g. read back from the device in one go): no second conversion."""
        self._cache.setdefault(name + ":floats", values)

    def cached(self, name: str) -> bool:
        """Whether provider ``name`` has already been computed this step (to reuse work opportunistically)."""
        return name in self._cache

    def offer(self, name: str, value: Any) -> None:
        """Provide provider ``name``'s value for this step, computed as a by-product of another provider's pass
        (e.g. the parameter norms from the same read of θ as the distance from θ₀); ignored if already known."""
        if name not in self._cache and name not in self._failed:
            self._cache[name] = value

    def release(self) -> None:
        """Drop every cached computation (called at the end of the step)."""
        self._cache.clear()
        self._failed.clear()
        self.inputs = self.targets = self.loss = self.model_output = self.loss_target = None
        self.local_loss = None
        self._micro.clear()
        self._micro_losses.clear()
        self._micro_outputs.clear()


def _concat(parts: list[Any], detach: bool = False) -> Any:
    """Concatenate micro-batches along the batch dimension: tensors, tuples/lists and dicts of tensors.

    ``None`` parts are ignored; parts of other types cannot be concatenated and are returned as a list.
    """
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first, torch.Tensor) and all(isinstance(p, torch.Tensor) for p in parts):
        if first.dim() == 0:
            return list(parts)
        out = torch.cat([p.detach() if detach else p for p in parts])
        return out
    if isinstance(first, (list, tuple)) and all(isinstance(p, type(first)) and len(p) == len(first) for p in parts):
        return type(first)(_concat([p[i] for p in parts], detach) for i in range(len(first)))
    if isinstance(first, dict) and all(isinstance(p, dict) and p.keys() == first.keys() for p in parts):
        return {k: _concat([p[k] for p in parts], detach) for k in first}
    return list(parts)


class CheckFacts(_RunStructure):
    """What a deferrable check (``Check.deferrable``) may read besides the record: the run's structure, and of
    its step the number, the batch size, the probes' ``extras`` and the ranks with a non-finite local loss. It
    stands in for the :class:`StepContext` when the engine hands a check the records of several past steps at
    once; anything else a check asks of it is an ``AttributeError`` (the check is then disabled with that error,
    never fed another step's data)."""

    __slots__ = ("batch_size", "extras", "inspector", "nonfinite_loss_ranks", "step")

    def __init__(self, inspector: Inspector):
        self.inspector = inspector
        self.step = 0
        self.batch_size: int | None = None
        self.extras: dict[str, Any] = {}
        self.nonfinite_loss_ranks: list[int] | None = None
