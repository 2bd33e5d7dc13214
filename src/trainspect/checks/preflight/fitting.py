"""Can the model fit a tiny training set? Overfit 1 example and ~100 examples, with controls.

Karpathy ("A Recipe for Training Neural Networks", 2019: overfit one batch; input-independent baseline;
capacity), CS231n (overfit ~20 examples), TheDeepChecker (16 samples, 1000 iterations, ≥ 95 % accuracy;
retrain on zeroed inputs when the fit fails to test whether the model uses its input at all).

Verdict of a fit: the lowest loss of the last 10 % of the steps is at most ``fit_fraction`` × the starting
loss, and (classification) every example (1) / at least 95 % of them (the set) is classified correctly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainspect.checks.preflight.gradcheck import call_model

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


@dataclass
class FitResult:
    examples: int
    steps: int
    start_loss: float
    final_loss: float
    accuracy: float | None
    fitted: bool
    nonfinite: bool = False


def take(value: Any, n: int) -> Any:
    """The first ``n`` samples of a batch (tensor, tuple/list or dict of tensors)."""
    if isinstance(value, torch.Tensor):
        return value[:n]
    if isinstance(value, (list, tuple)):
        return type(value)(take(v, n) for v in value)
    if isinstance(value, dict):
        return {k: take(v, n) for k, v in value.items()}
    return value


def zeros_like_inputs(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.zeros_like(value) if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(zeros_like_inputs(v) for v in value)
    if isinstance(value, dict):
        return {k: zeros_like_inputs(v) for k, v in value.items()}
    return value


def batch_len(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return int(value.shape[0])
    if isinstance(value, (list, tuple)) and value:
        return batch_len(value[0])
    if isinstance(value, dict) and value:
        return batch_len(next(iter(value.values())))
    raise ValueError("preflight: cannot find the batch dimension of the inputs (pass a tensor, tuple or dict)")


def classification_accuracy(output: torch.Tensor, targets: Any, loss_fn: Any) -> float | None:
    if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)) and isinstance(targets, torch.Tensor) \
            and not targets.is_floating_point() and output.dim() >= 2:
        return float((output.argmax(1) == targets).double().mean())
    if isinstance(loss_fn, (nn.BCEWithLogitsLoss, nn.BCELoss)) and isinstance(targets, torch.Tensor):
        threshold = 0.0 if isinstance(loss_fn, nn.BCEWithLogitsLoss) else 0.5
        return float(((output > threshold).to(targets.dtype) == targets.round()).double().mean())
    return None


def fit(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    inputs: Any,
    targets: Any,
    optimizer_factory: OptimizerFactory,
    *,
    steps: int,
    fit_fraction: float,
    min_accuracy: float,
    seed: int = 0,
    eval_mode: bool = False,
) -> FitResult:
    """Train a deep copy of ``model`` full-batch on ``(inputs, targets)`` for ``steps`` steps."""
    torch.manual_seed(seed)
    m = copy.deepcopy(model)
    m.train(not eval_mode)
    opt = optimizer_factory([p for p in m.parameters() if p.requires_grad])
    losses: list[float] = []
    out = None
    for _ in range(steps):
        opt.zero_grad()
        out = call_model(m, inputs)
        loss = loss_fn(out, targets)
        if not torch.isfinite(loss):
            return FitResult(batch_len(inputs), len(losses), losses[0] if losses else float("nan"),
                             float("nan"), None, False, nonfinite=True)
        losses.append(float(loss.detach()))
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = call_model(m, inputs)
        final = float(loss_fn(out, targets))
    tail = [*losses[-max(1, steps // 10):], final]
    best = min(tail)
    acc = classification_accuracy(out, targets, loss_fn) if isinstance(out, torch.Tensor) else None
    fitted = best <= fit_fraction * losses[0] and (acc is None or acc >= min_accuracy)
    return FitResult(batch_len(inputs), steps, losses[0], best, acc, fitted)


def simple_stack_control(model: nn.Module) -> nn.Module | None:
    """A small, known-good MLP with the same input and output sizes, if ``model`` is a plain stack whose first
    weight layer is ``nn.Linear`` (optionally after ``nn.Flatten``); else None."""
    if not isinstance(model, nn.Sequential):
        return None
    linears = [m for m in model if isinstance(m, nn.Linear)]
    allowed = (nn.Linear, nn.Flatten, nn.Dropout, nn.BatchNorm1d, nn.LayerNorm, nn.ReLU, nn.LeakyReLU, nn.GELU,
               nn.Tanh, nn.Sigmoid, nn.ELU, nn.SiLU, nn.Softmax, nn.LogSoftmax, nn.Identity)
    if len(linears) < 2 or not all(isinstance(m, allowed) for m in model):
        return None
    first, last = linears[0], linears[-1]
    head: list[nn.Module] = [nn.Flatten()] if isinstance(model[0], nn.Flatten) else []
    # keep a final (log-)softmax: the control must produce what the loss receives from the model
    tail = [copy.deepcopy(model[-1])] if isinstance(model[-1], (nn.Softmax, nn.LogSoftmax)) else []
    return nn.Sequential(*head, nn.Linear(first.in_features, 64), nn.ReLU(),
                         nn.Linear(64, last.out_features), *tail)
