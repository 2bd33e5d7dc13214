"""Re-evaluating the user's loss as a pure function of the parameters (for ``torch.func`` transforms).

Per-sample gradients (``vmap(grad(...))``), Hessian-vector products (``jvp(grad(...))``) and directional
derivatives all need ``L(θ; x, y)`` as a function of a parameter dict. These helpers build it from the
user's own model and loss function, via ``torch.func.functional_call``, without modifying the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call


def call_model(model: nn.Module, params_and_buffers: Mapping[str, torch.Tensor], inputs: Any) -> Any:
    """``model(inputs)`` with the given parameters; a tuple/list is passed as positional arguments, a dict
    as keyword arguments, anything else as the single argument."""
    if isinstance(inputs, tuple):
        return functional_call(model, dict(params_and_buffers), inputs)
    if isinstance(inputs, dict):
        return functional_call(model, dict(params_and_buffers), (), inputs)
    return functional_call(model, dict(params_and_buffers), (inputs,))


def make_loss_function(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    param_names: list[str],
) -> Callable[[tuple[torch.Tensor, ...], Any, Any], torch.Tensor]:
    """``f(param_values, inputs, targets) -> loss`` with the model's buffers held fixed.

    ``param_values`` is a tuple aligned with ``param_names``; parameters not listed keep their current
    values. The loss is whatever ``loss_fn(model(inputs), targets)`` returns (its own reduction).
    """
    names = list(param_names)

    def loss(param_values: tuple[torch.Tensor, ...], inputs: Any, targets: Any) -> torch.Tensor:
        state: dict[str, torch.Tensor] = {k: v.detach() for k, v in model.named_buffers()}
        state.update({k: v.detach() for k, v in model.named_parameters()})
        state.update(zip(names, param_values))
        return loss_fn(call_model(model, state, inputs), targets)

    return loss
