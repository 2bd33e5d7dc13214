"""Activation statistics of element-wise nonlinearities, collected by forward hooks on due steps only.

Per *unit* (a feature of a 2-D output, a channel of a 4-D/5-D output, the last dimension of a 3-D
output such as a transformer's ``(batch, tokens, features)``), over every other dimension of the batch:

* rectifiers (``ReLU``, ``ReLU6``, ``LeakyReLU``, ``RReLU``, ``Hardtanh``-free kinds): how many entries were
  *active*, i.e. on the part of the curve where the derivative is not zero (``x > 0``);
* bounded squashing functions (``Sigmoid``, ``Tanh``, ``Hardsigmoid``, ``Hardtanh``, ``Softsign``): how many
  entries were *saturated*, i.e. where the derivative is below 1 % of its maximum (the unit barely passes
  gradient): ``|x| > 3.0`` for tanh (``1 − tanh²(3) = 0.0099``), ``|x| > 6.0`` for the logistic sigmoid
  (``σ'(6)/σ'(0) = 0.0099``). DeepDiagnosis uses ``|x| ≥ 5`` for both and SageMaker Debugger the 1e-7
  derivative points (tanh ±9.5, sigmoid −23/+17); the 1 % rule keeps the same meaning for both functions.

A module called several times per forward pass (one ``nn.ReLU()`` reused after every layer) gets one entry
per call, ``name#k``, because each call belongs to a different layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainspect.providers.base import Provider

if TYPE_CHECKING:
    from trainspect.engine.context import StepContext

RECTIFIERS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.RReLU)

#: |pre-activation| beyond which the derivative is below 1 % of its maximum.
SATURATION_THRESHOLDS: dict[type[nn.Module], float] = {
    nn.Tanh: 3.0,
    nn.Sigmoid: 6.0,
    nn.Softsign: 9.0,  # d/dx x/(1+|x|) = 1/(1+|x|)² < 0.01 for |x| > 9
}
#: hard-bounded functions: saturated exactly where the derivative is 0
HARD_BOUNDED: dict[type[nn.Module], tuple[float, float]] = {
    nn.Hardtanh: (-1.0, 1.0),  # uses the module's own min_val/max_val
    nn.Hardsigmoid: (-3.0, 3.0),
}


@dataclass
class UnitStats:
    """Counts of one call of one activation module on one step.

    Attributes:
        module: the module's qualified name (``name#k`` for the k-th call, k ≥ 1, when called more than once).
        module_class: e.g. ``"ReLU"``.
        kind: ``"rectifier"`` or ``"squashing"``.
        count: per unit, the number of entries that were active (rectifier) or saturated (squashing).
        entries: entries per unit in this call (batch × positions).
        threshold: the saturation threshold on |x| (squashing), else None.
    """

    module: str
    module_class: str
    kind: str
    count: torch.Tensor
    entries: int
    threshold: float | None = None


def unit_dim(x: torch.Tensor) -> int:
    """The dimension that indexes units: channels of 4-D/5-D maps, the last dimension otherwise."""
    return 1 if x.dim() in (4, 5) else x.dim() - 1


def _per_unit_sum(mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    d = unit_dim(mask)
    dims = [i for i in range(mask.dim()) if i != d]
    if not dims:
        return mask.to(torch.int64), 1
    counts = mask.sum(dim=dims)
    return counts, mask.numel() // max(mask.shape[d], 1)


def activation_modules(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(name, module, kind)`` of every hookable nonlinearity in ``model``."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, RECTIFIERS):
            out.append((name, module, "rectifier"))
        elif isinstance(module, tuple(SATURATION_THRESHOLDS)) or isinstance(module, tuple(HARD_BOUNDED)):
            out.append((name, module, "squashing"))
    return out


class Activations(Provider):
    """Per-unit activity (rectifiers) and saturation (sigmoid/tanh) counts of this step's forward pass.

    Value: ``list[UnitStats]`` in call order. Hooks are installed only on steps where an instrument that
    needs them is due, and removed after the backward pass.
    """

    name = "activations"

    def __init__(self, inspector: Any):
        super().__init__(inspector)
        self._modules = activation_modules(inspector.model)
        self._handles: list[Any] = []
        self._stats: list[UnitStats] = []
        self._calls: dict[str, int] = {}

    def arm(self, ctx: StepContext) -> None:
        self._stats = []
        self._calls = {}
        for name, module, kind in self._modules:
            self._handles.append(module.register_forward_hook(self._hook(name, module, kind)))

    def _hook(self, name: str, module: nn.Module, kind: str) -> Any:
        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            if not torch.is_grad_enabled() or not isinstance(output, torch.Tensor) or output.dim() == 0:
                return  # evaluation passes (no_grad) inside a step are not the training forward
            self._calls[name] = self._calls.get(name, 0) + 1
            with torch.no_grad():
                if kind == "rectifier":
                    mask = output > 0
                    threshold = None
                else:
                    x = args[0] if args and isinstance(args[0], torch.Tensor) else output
                    if isinstance(mod, nn.Hardtanh):
                        mask = (x <= mod.min_val) | (x >= mod.max_val)
                        threshold = float(mod.max_val)
                    elif isinstance(mod, nn.Hardsigmoid):
                        mask = x.abs() >= 3.0
                        threshold = 3.0
                    else:
                        threshold = next(t for cls, t in SATURATION_THRESHOLDS.items() if isinstance(mod, cls))
                        mask = x.abs() > threshold
                counts, entries = _per_unit_sum(mask)
            self._stats.append(UnitStats(name, type(mod).__name__, kind, counts, entries, threshold))

        return hook

    def disarm(self, ctx: StepContext) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def compute(self, ctx: StepContext) -> list[UnitStats]:
        # a module called more than once per forward gets one entry per call: name#1, name#2, ...
        seen: dict[str, int] = {}
        out = []
        for s in self._stats:
            k = seen[s.module] = seen.get(s.module, 0) + 1
            label = f"{s.module}#{k}" if self._calls.get(s.module, 1) > 1 else s.module
            out.append(UnitStats(label, s.module_class, s.kind, s.count, s.entries, s.threshold))
        self._stats = []
        return out

    def close(self) -> None:
        self.disarm(None)  # type: ignore[arg-type]
