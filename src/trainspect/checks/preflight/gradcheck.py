"""Finite-difference gradient check of a whole model, per parameter tensor, in float64.

For a few sampled entries θ_k of each parameter tensor, the central difference
``(L(θ + h e_k) − L(θ − h e_k)) / 2h`` is compared with the back-propagated ∂L/∂θ_k. Per tensor the relative
error is ``‖a − n‖ / (‖a‖ + ‖n‖)`` over its sampled entries (TheDeepChecker's formula). Thresholds
(CS231n "Neural Networks Part 3"; TheDeepChecker ``settings.yaml``): > 1e-2 the gradient is wrong
(error), 1e-4 … 1e-2 suspicious (warning), below that fine.

Made robust for real models:

* float64 copy of the model (the user's model is not touched), ``eval()`` mode so dropout is off and
  BatchNorm uses its running statistics (both would otherwise make L a different function at every call);
  the random-number generator is re-seeded before every evaluation for layers that draw noise in eval mode;
* **kinks** (ReLU, max-pool, abs, clamp): an entry is skipped when the one-sided differences
  ``(L(θ+h) − L(θ))/h`` and ``(L(θ) − L(θ−h))/h`` disagree by more than ``kink_tolerance`` relative to their
  size: a smooth function makes them agree to O(h·L''), a kink between θ−h and θ+h does not.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def _double(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.double() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_double(v) for v in value)
    if isinstance(value, dict):
        return {k: _double(v) for k, v in value.items()}
    return value


def call_model(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, (list, tuple)):
        return model(*inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(inputs)


def finite_difference_check(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    inputs: Any,
    targets: Any,
    *,
    entries_per_tensor: int = 8,
    h: float = 1e-6,
    kink_tolerance: float = 1e-3,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per trainable parameter: ``{"relative_error", "checked", "skipped_kinks", "analytic_norm", "numeric_norm"}``.

    Args:
        model, loss_fn, inputs, targets: the user's; the model is deep-copied to float64 and put in eval mode.
        entries_per_tensor: entries sampled per parameter tensor (all of them if the tensor is smaller).
        h: finite-difference step (float64: 1e-6 balances truncation and round-off error).
        kink_tolerance: relative disagreement of the one-sided differences above which an entry is skipped.
    """
    m = copy.deepcopy(model).double().eval()
    x, y = _double(inputs), _double(targets)
    loss_fn = copy.deepcopy(loss_fn).double() if isinstance(loss_fn, nn.Module) else loss_fn

    def loss() -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return loss_fn(call_model(m, x), y)

    named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    analytic = torch.autograd.grad(loss(), params, allow_unused=True)
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        f0 = float(loss())
        for (name, p), g in zip(named, analytic):
            g = torch.zeros_like(p) if g is None else g
            flat, gflat = p.view(-1), g.reshape(-1)
            k = min(entries_per_tensor, flat.numel())
            idx = torch.randperm(flat.numel(), generator=generator)[:k]
            a_vals, n_vals, kinks = [], [], 0
            for i in idx.tolist():
                v = float(flat[i])
                flat[i] = v + h
                fp = float(loss())
                flat[i] = v - h
                fm = float(loss())
                flat[i] = v
                fwd, bwd = (fp - f0) / h, (f0 - fm) / h
                scale = max(abs(fwd), abs(bwd), 1e-7)
                if abs(fwd - bwd) > kink_tolerance * scale:
                    kinks += 1
                    continue
                a_vals.append(float(gflat[i]))
                n_vals.append((fp - fm) / (2 * h))
            a, n = torch.tensor(a_vals, dtype=torch.float64), torch.tensor(n_vals, dtype=torch.float64)
            denom = float(a.norm() + n.norm())
            rel = float((a - n).norm()) / denom if denom > 1e-10 else 0.0
            out[name] = {"relative_error": rel, "checked": len(a_vals), "skipped_kinks": kinks,
                         "analytic_norm": float(a.norm()), "numeric_norm": float(n.norm())}
    return out
