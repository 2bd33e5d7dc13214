"""1-D slices of the loss landscape: L(θ + α d) on a grid of α (Li et al. 2018, "Visualizing the Loss
Landscape of Neural Nets", NeurIPS).

A random direction is made *filter-normalized* (Li et al. §4): every filter d_f (a row of a Linear weight,
an output channel of a Conv weight: the slice along dimension 0) is rescaled to the norm of the
corresponding filter of θ, d_f ← d_f / ‖d_f‖ · ‖θ_f‖, so that the slice is comparable across layers and
networks despite the scale invariance of ReLU networks. One-dimensional parameters (biases, norm
weights) get d = 0, as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from trainspect.functional.model_loss import call_model


def filter_normalized_direction(params: Sequence[torch.Tensor], seed: int = 0) -> list[torch.Tensor]:
    """A Gaussian random direction, filter-normalized to ``params`` (Li et al. 2018); zero on 1-D tensors."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for p in params:
        if p.dim() <= 1:
            out.append(torch.zeros_like(p))
            continue
        d = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device)
        pf = p.detach().to(torch.float64).reshape(p.shape[0], -1)
        df = d.reshape(p.shape[0], -1)
        scale = pf.norm(dim=1, keepdim=True) / df.norm(dim=1, keepdim=True).clamp_min(1e-30)
        out.append((df * scale).reshape(p.shape).to(p.dtype))
    return out


@torch.no_grad()
def loss_along_direction(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    inputs: Any,
    targets: Any,
    param_names: Sequence[str],
    base: Sequence[torch.Tensor],
    direction: Sequence[torch.Tensor],
    alphas: torch.Tensor,
    *,
    seed: int = 0,
) -> torch.Tensor:
    """L(θ + α d) for each α in ``alphas`` (float64 tensor of the same length), model unchanged.

    ``base`` (θ) and ``direction`` (d) are aligned with ``param_names``; other parameters and buffers keep
    their values (buffers are copied, so a BatchNorm's running statistics are not updated). The random
    number generator is reset to ``seed`` before each evaluation, so a model with dropout sees the same
    masks at every α and the slice is a slice of one function.
    """
    if len(base) != len(param_names) or len(direction) != len(param_names):
        raise ValueError(
            f"loss_along_direction: base ({len(base)}), direction ({len(direction)}) and param_names "
            f"({len(param_names)}) must have the same length"
        )
    fixed: dict[str, torch.Tensor] = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    values = []
    for alpha in alphas.tolist():
        state = {k: v.detach().clone() for k, v in buffers.items()}
        state.update(fixed)
        state.update({n: b + alpha * d for n, b, d in zip(param_names, base, direction)})
        devices = [base[0].device] if base and base[0].device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            loss = loss_fn(call_model(model, state, inputs), targets)
        values.append(loss.detach().to(torch.float64).reshape(()))
    return torch.stack(values).cpu()
