"""Capturing each layer's input and output-gradient during the user's own forward and backward pass.

Only on due steps: the hooks are installed by ``arm`` and removed by ``disarm``. The output-gradient is
taken with ``tensor.register_hook`` on the layer's output (installed by a forward hook), not with
``register_full_backward_hook``: the latter wraps the output in a ``BackwardHookFunction`` view, which
breaks a following ``ReLU(inplace=True)`` ("a view of a leaf ... modified inplace") and costs an extra
node per layer. A tensor hook on the output sees the gradient of the loss w.r.t. that output even if
the output is later modified in place (autograd keeps the hook on the version it was registered on).

A module called several times in one forward pass (a shared layer, an RNN-like loop written by hand)
gets one :class:`Call` per call; the layer handlers combine them (per-sample gradient = sum over calls).

Gradient accumulation (k micro-batches per optimizer step) also calls each module k times, but on
*different* samples: each call is tagged with the step's micro-batch index, and
:meth:`ModuleCapture.complete_calls` concatenates the j-th call of every micro-batch along the batch
dimension (k·B samples), so the handlers see one batch of all the step's samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class Call:
    """One call of a captured module: its (detached) input and the gradient of the loss w.r.t. its output."""

    inputs: torch.Tensor
    grad_output: torch.Tensor | None = None
    micro_batch: int = 0


@dataclass
class ModuleCapture:
    """Everything captured for one module during one step."""

    module: nn.Module
    name: str
    calls: list[Call] = field(default_factory=list)

    def complete_calls(self) -> list[Call]:
        """Calls whose output received a gradient (an output that does not reach the loss gets none).

        Under gradient accumulation, the j-th calls of all micro-batches are concatenated into one call.
        """
        complete = [c for c in self.calls if c.grad_output is not None]
        groups: dict[int, list[Call]] = {}
        for c in complete:
            groups.setdefault(c.micro_batch, []).append(c)
        if len(groups) <= 1:
            return complete
        counts = {k: len(v) for k, v in groups.items()}
        if len(set(counts.values())) != 1:
            raise RuntimeError(
                f"module {self.name!r} was called a different number of times in different micro-batches of one "
                f"optimizer step ({counts}); per-sample gradients cannot pair its calls"
            )
        ordered = [groups[k] for k in sorted(groups)]
        return [
            Call(torch.cat([g[j].inputs for g in ordered]), torch.cat([g[j].grad_output for g in ordered]))
            for j in range(len(ordered[0]))
        ]


class LayerCapture:
    """Installs forward hooks (and output tensor hooks) on the given modules; holds what they record."""

    def __init__(self, modules: dict[str, nn.Module], micro_batch_index: Callable[[], int] | None = None):
        self.records: dict[str, ModuleCapture] = {name: ModuleCapture(m, name) for name, m in modules.items()}
        self._handles: list[Any] = []
        self._micro_batch_index = micro_batch_index or (lambda: 0)
        for name, module in modules.items():
            self._handles.append(module.register_forward_hook(self._make_hook(self.records[name])))

    def _make_hook(self, record: ModuleCapture):
        def forward_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if not torch.is_grad_enabled() or not isinstance(output, torch.Tensor) or not output.requires_grad:
                return
            if not args or not isinstance(args[0], torch.Tensor):
                return
            call = Call(args[0].detach(), micro_batch=self._micro_batch_index())
            record.calls.append(call)

            def grad_hook(grad: torch.Tensor) -> None:
                # a hook may fire more than once if the output is used in several graph branches that
                # are back-propagated separately; the gradients add up like in autograd
                call.grad_output = grad.detach() if call.grad_output is None else call.grad_output + grad.detach()

            output.register_hook(grad_hook)

        return forward_hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
