"""Batch independence: the output for sample i must not depend on the input of sample j ≠ i.

Karpathy, "A Recipe for Training Neural Networks" (2019), "use backprop to chart dependencies": set the
loss to the sum of sample i's outputs and check that the input gradient is non-zero only for sample i.
A non-zero gradient on another sample reveals a ``view``/``reshape`` that mixes the batch dimension with
another one, a normalisation over the wrong axis, or attention across the batch. The model runs in eval
mode (BatchNorm in training mode mixes samples by design).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from trainspect.checks.preflight.gradcheck import call_model


def batch_dependence(model: nn.Module, inputs: Any, *, samples: int = 8) -> dict[str, Any]:
    """``{"checked": bool, "reason", "leaks": [(i, j, ratio)], "max_ratio"}`` where ratio = ‖∂out_i/∂x_j‖ /
    ‖∂out_i/∂x_i‖ for j ≠ i (must be 0)."""
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        return {"checked": False, "reason": "inputs are not a floating-point tensor (token ids cannot be "
                                            "differentiated); pass float inputs to run this check"}
    n = min(samples, inputs.shape[0])
    if n < 2:
        return {"checked": False, "reason": "needs at least 2 samples"}
    m = copy.deepcopy(model).eval()
    x = inputs[:n].detach().clone().requires_grad_(True)
    out = call_model(m, x)
    if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != n:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return {"checked": False, "reason": f"the output's first dimension is not the batch ({shape})"}
    leaks = []
    worst = 0.0
    for i in sorted({0, n - 1, n // 2}):
        (g,) = torch.autograd.grad(out[i].sum(), x, retain_graph=True, allow_unused=True)
        if g is None:
            continue
        norms = g.reshape(n, -1).norm(dim=1)
        own = float(norms[i])
        for j in range(n):
            if j == i:
                continue
            ratio = float(norms[j]) / own if own > 0 else float(norms[j] > 0)
            worst = max(worst, ratio)
            if float(norms[j]) > 0 and ratio > 1e-6:
                leaks.append((i, j, ratio))
    return {"checked": True, "reason": "", "leaks": leaks, "max_ratio": worst, "samples": n}
