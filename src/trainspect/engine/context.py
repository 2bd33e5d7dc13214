"""The per-step context: what one training step exposes to providers and instruments."""

from __future__ import annotations

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


class StepContext:
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
    """

    def __init__(self, inspector: Inspector, step: int, inputs: Any = None, targets: Any = None):
        self.inspector = inspector
        self.step = step
        self.inputs = inputs
        self.targets = targets
        self.loss: torch.Tensor | None = None
        self.loss_reduction: str = inspector.loss_reduction
        self.model_output: Any = None
        self.loss_target: Any = None
        self.phase = "forward"
        self.due_instruments: list = []
        self.needed_providers: set[str] = set()
        self.values: dict[str, Any] = {}
        self.extras: dict[str, Any] = {}
        self.optimizer_stepped = False
        self.t_enter = time.perf_counter()
        self.t_optimizer: float | None = None
        self.user_seconds = 0.0
        self.overhead_seconds = 0.0
        self._cache: dict[str, Any] = {}
        self._failed: dict[str, BaseException] = {}
        self._computing: set[str] = set()

    # -- the model, as tracked ----------------------------------------------------------------------
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

    def cached(self, name: str) -> bool:
        """Whether provider ``name`` has already been computed this step (to reuse work opportunistically)."""
        return name in self._cache

    def release(self) -> None:
        """Drop every cached computation (called at the end of the step)."""
        self._cache.clear()
        self._failed.clear()
        self.inputs = self.targets = self.loss = self.model_output = self.loss_target = None
